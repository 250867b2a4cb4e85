// Unit tests for the reply loop in web_shell/generate.js, run with `node --test` by
// tests/test_web_generate.py. The engines here are test doubles: a deterministic "model" whose next
// token is a function of the whole context, so any engine given the same context continues alike.
import assert from "node:assert/strict";
import { test } from "node:test";

import { DeviceLostError } from "../web_shell/engine.js";
import { generateReply } from "../web_shell/generate.js";

const STOP = 99;

function nextToken(context) {
  if (context.length >= 24) return STOP;
  return context.reduce((sum, id, i) => (sum * 31 + id + i) % 50, 7);
}

// loseDeviceAt: the step() call (0-based) that rejects with DeviceLostError.
function scriptedEngine(backend, { loseDeviceAt = -1, log = [] } = {}) {
  let context = [];
  let steps = 0;
  return {
    backend,
    log,
    tokenizer: { isStop: (id) => id === STOP },
    reset(sampling) {
      log.push(["reset", sampling]);
      context = [];
    },
    async prefill(ids) {
      log.push(["prefill", [...ids]]);
      context.push(...ids);
    },
    step() {
      if (steps++ === loseDeviceAt) return Promise.reject(new DeviceLostError());
      const id = nextToken(context);
      context.push(id);
      return Promise.resolve({ id });
    },
    dispose() {
      log.push(["dispose"]);
    },
  };
}

const PROMPT = [1, 2, 3];
const SAMPLING = { temperature: 0, topK: 0, topP: 1, seed: 5 };

function reference(maxNewTokens = 1000) {
  const context = [...PROMPT];
  const out = [];
  while (out.length < maxNewTokens) {
    const id = nextToken(context);
    if (id === STOP) break;
    context.push(id);
    out.push(id);
  }
  return out;
}

async function run(engine, options = {}) {
  const shown = [];
  const switches = [];
  const result = await generateReply({
    engine,
    promptIds: PROMPT,
    sampling: SAMPLING,
    maxNewTokens: 1000,
    fallback: null,
    onToken: (id) => shown.push(id),
    onSwitch: (next, error) => switches.push([next.backend, error.name]),
    ...options,
  });
  return { ...result, shown, switches };
}

test("runs until the stop token, which is not shown", async () => {
  const engine = scriptedEngine("wasm");
  const r = await run(engine);
  assert.equal(r.reason, "end");
  assert.deepEqual(r.tokens, reference());
  assert.deepEqual(r.shown, reference());
  assert.equal(r.tokens.length, 21);
  assert.deepEqual(engine.log.slice(0, 2), [["reset", SAMPLING], ["prefill", PROMPT]]);
});

test("stops at maxNewTokens", async () => {
  const r = await run(scriptedEngine("wasm"), { maxNewTokens: 5 });
  assert.equal(r.reason, "length");
  assert.deepEqual(r.tokens, reference(5));
});

test("an abort ends the reply between tokens", async () => {
  const controller = new AbortController();
  const r = await run(scriptedEngine("wasm"), {
    signal: controller.signal,
    onToken: (id) => id === reference()[2] && controller.abort(),
  });
  assert.equal(r.reason, "stopped");
  assert.deepEqual(r.tokens, reference(3));
});

test("a stop message sent as a task gets through while tokens flow", async () => {
  // step() resolves at once, like a CPU engine; without a task boundary per token the timer below
  // would never run and the reply would go on for a million tokens.
  const endless = { ...scriptedEngine("wasm"), step: () => Promise.resolve({ id: 1 }) };
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 20);
  const r = await run(endless, { signal: controller.signal, maxNewTokens: 1e6 });
  assert.equal(r.reason, "stopped");
  assert.ok(r.tokens.length < 1e6);
});

test("device loss mid-reply moves the context to the fallback and the reply completes", async () => {
  const gpuLog = [];
  const cpuLog = [];
  const gpu = scriptedEngine("webgpu", { loseDeviceAt: 4, log: gpuLog });
  const r = await run(gpu, { fallback: async () => scriptedEngine("wasm", { log: cpuLog }) });
  assert.equal(r.reason, "end");
  assert.equal(r.engine.backend, "wasm");
  assert.deepEqual(r.shown, reference());
  assert.deepEqual(r.switches, [["wasm", "DeviceLostError"]]);
  assert.deepEqual(gpuLog.at(-1), ["dispose"]);
  // The fallback starts from the prompt plus the four tokens already shown.
  assert.deepEqual(cpuLog.slice(0, 2), [["reset", SAMPLING], ["prefill", [...PROMPT, ...reference().slice(0, 4)]]]);
});

test("device loss during prefill also falls back", async () => {
  const gpu = scriptedEngine("webgpu");
  gpu.prefill = () => Promise.reject(new DeviceLostError());
  const r = await run(gpu, { fallback: async () => scriptedEngine("wasm") });
  assert.equal(r.engine.backend, "wasm");
  assert.deepEqual(r.shown, reference());
});

test("without a fallback, or for other errors, the failure propagates", async () => {
  await assert.rejects(run(scriptedEngine("webgpu", { loseDeviceAt: 2 })), DeviceLostError);
  const broken = { ...scriptedEngine("wasm"), step: () => Promise.reject(new RangeError("bad kernel")) };
  await assert.rejects(run(broken, { fallback: async () => scriptedEngine("wasm") }), RangeError);
});
