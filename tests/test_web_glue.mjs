// The page's wasm glue (web_shell/wasm_runtime.js) refuses token ids and sampler values that a
// Uint32Array or an f32 argument would silently turn into valid ones; run by tests/test_web_glue.py.
import assert from "node:assert/strict";
import { test } from "node:test";

import { RuntimeError, WasmModel, missingWasmFeature } from "../web_shell/wasm_runtime.js";

// A model whose runtime records every call into wasm: a refused input must never get that far.
function model() {
  const calls = [];
  const m = Object.create(WasmModel.prototype);
  m.h = 1;
  const record = (name) => () => {
    calls.push(name);
    return 0;
  };
  const exports = new Proxy({}, { get: (_t, name) => record(name) });
  m.rt = new Proxy({}, { get: (_t, name) => (name === "x" ? exports : record(name)) });
  return { m, calls };
}

const BAD_IDS = [NaN, 2 ** 32 + 5, "7", -1, 1.5, Infinity, null, undefined, 2n];

test("forward refuses ids that are not u32 integers, before calling wasm", () => {
  for (const bad of BAD_IDS) {
    const { m, calls } = model();
    assert.throws(() => m.forward([1, bad, 3]), (e) => e instanceof RuntimeError && e.code === 1 && /at 1/.test(e.message), String(bad));
    assert.deepEqual(calls, [], String(bad));
  }
});

test("chatStart refuses bad prompt ids and a bad maxTokens", () => {
  for (const bad of BAD_IDS.filter((v) => v !== null)) { // [null] reads as messages, which Rust parses
    const { m, calls } = model();
    assert.throws(() => m.chatStart([bad]), RuntimeError, String(bad));
    assert.deepEqual(calls, []);
  }
  for (const bad of [NaN, -1, 2 ** 32 + 5, "7"]) {
    const { m, calls } = model();
    assert.throws(() => m.chatStart([1, 2], bad), RuntimeError, String(bad));
    assert.deepEqual(calls, []);
  }
});

test("setSampler refuses NaN, infinities, strings and out-of-range integers", () => {
  const bad = [{ temperature: NaN }, { temperature: Infinity }, { topP: NaN }, { repetitionPenalty: "2" },
    { topK: -1 }, { topK: 2 ** 32 + 5 }, { topK: 1.5 }, { seed: NaN }, { seed: "7" }];
  for (const config of bad) {
    const { m, calls } = model();
    assert.throws(() => m.setSampler(config), RuntimeError, JSON.stringify(config));
    assert.deepEqual(calls, []);
  }
});

test("valid ids and sampler values do reach wasm", () => {
  const { m, calls } = model();
  m.setSampler({ temperature: 0.7, topK: 40, topP: 0.9, seed: 2 ** 32 - 1 });
  assert.ok(calls.length > 0);
  const ids = model();
  ids.m.forward([0, 5, 2 ** 32 - 1]);
  assert.ok(ids.calls.includes("put") && ids.calls.includes("callBytes"));
});

// An engine that cannot validate an instruction family: the probes must name what runtime.wasm needs.
function withoutOpcode(prefix, run) {
  const validate = WebAssembly.validate;
  const has = (bytes) => bytes.some((_b, i) => prefix.every((p, k) => bytes[i + k] === p));
  WebAssembly.validate = (bytes) => !has(bytes) && validate(bytes);
  try {
    return run();
  } finally {
    WebAssembly.validate = validate;
  }
}

test("the wasm feature probes name SIMD and bulk memory when the engine lacks them", () => {
  assert.equal(missingWasmFeature(), null);  // Node runs runtime.wasm, so it has both
  assert.equal(withoutOpcode([253, 15], missingWasmFeature), "SIMD");  // i8x16.splat
  assert.equal(withoutOpcode([252, 10], missingWasmFeature), "bulk memory");  // memory.copy
});
