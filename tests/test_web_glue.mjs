// The page's wasm glue (web_shell/wasm_runtime.js) refuses token ids and sampler values that a
// Uint32Array or an f32 argument would silently turn into valid ones; run by tests/test_web_glue.py.
import assert from "node:assert/strict";
import { test } from "node:test";

import { RuntimeError, TouchTuner, WasmModel, missingWasmFeature } from "../web_shell/wasm_runtime.js";

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

// A TouchTuner on a fake clock where a decode step takes `cost(on)` ms; returns the switch's calls.
function tune(cost, options = {}) {
  let clock = 0;
  let touching = true;
  const sets = [];
  const tuner = new TouchTuner((on) => {
    sets.push(on);
    touching = on;
  }, { now: () => clock, ...options });
  const step = () => tuner.step(() => {
    clock += cost(touching, clock);
    return "id";
  });
  return { tuner, sets, step };
}

test("the touch tuner waits out the warm-up, alternates, and keeps the faster way", () => {
  for (const [onMs, offMs, want] of [[5, 3, false], [3, 5, true], [4, 4, true]]) {
    const { tuner, sets, step } = tune((on) => (on ? onMs : offMs), { steps: 3, warmupMs: 20 });
    while (tuner.choice === null) assert.equal(step(), "id");
    // 20 ms of warm-up at 4-5 ms a step (the switch untouched), then on, off, on, off, on, off
    assert.deepEqual(sets, [true, false, true, false, true, false, want], `${onMs} vs ${offMs}`);
    assert.equal(tuner.choice, want);
    for (let i = 0; i < 5; i++) step();
    assert.equal(sets.length, 7, "no switching once chosen");
  }
});

test("the touch tuner takes medians: one slow step (a GC, a recompile) does not decide", () => {
  let n = 0;
  const { tuner, step } = tune((on) => (n++ === 1 ? 50 : on ? 5 : 3), { steps: 3, warmupMs: 0 });
  while (tuner.choice === null) step();
  assert.equal(tuner.choice, false); // off's first step took 50 ms, its median 3 ms
});

test("a runtime.wasm without the switch keeps touching and is never timed", () => {
  const tuner = new TouchTuner(null, { now: () => assert.fail("timed") });
  assert.equal(tuner.choice, true);
  assert.equal(tuner.step(() => 7), 7);
});
