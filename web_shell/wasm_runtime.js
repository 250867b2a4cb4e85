// Hand-written glue for runtime.wasm: the Rust runtime (runtime_rs + the compiled model's generated
// code) behind a plain C ABI (runtime_rs/src/model_abi.rs, ffi.rs). No wasm-bindgen: arguments go
// in through buffers from mono_alloc, results come back through out-pointers. An ES module that
// works the same in a browser worker and in Node.
//
//   const rt = await instantiate(wasmBytes);              // BufferSource | Response | Module
//   const m = rt.createModel({ manifest, shards, tokenizer }); // Uint8Arrays: checked (sha256) in Rust
//   m.forward([1, 2, 3]);      // Float32Array of 3 x vocab logits (prefill); forward([id]) decodes
//   m.chatStart(messages, 256); m.chatStep(); // {token, pieces: [["thought"|"answer", text]], done}
//
// createEngine() adapts a model to web_shell/engine.js's Engine interface (backend "wasm").
// Status codes: 0 ok, 1 bad input, 2 internal error, 3 context full; anything else than 0 throws a
// RuntimeError carrying `code`.

export class RuntimeError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "RuntimeError";
    this.code = code;
  }
}

export const CONTEXT_FULL = 3;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

// The WebAssembly features runtime.wasm is built with (+simd128, +bulk-memory), each as a tiny module
// using one of its instructions that must validate: a v128 add, a memory.copy.
const WASM_FEATURE_PROBES = {
  SIMD: [0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11],
  "bulk memory": [0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 3, 2, 1, 0, 5, 3, 1, 0, 1, 10, 14, 1, 12, 0, 65, 0, 65,
    0, 65, 0, 252, 10, 0, 0, 11],
};

// The first feature runtime.wasm needs that this engine lacks, or null.
export function missingWasmFeature() {
  for (const [name, bytes] of Object.entries(WASM_FEATURE_PROBES)) {
    if (!WebAssembly.validate(new Uint8Array(bytes))) return name;
  }
  return null;
}

export async function instantiate(source) {
  let module;
  if (source instanceof WebAssembly.Module) module = source;
  else if (typeof Response !== "undefined" && source instanceof Response) module = await WebAssembly.compileStreaming(source);
  else module = await WebAssembly.compile(source);
  // The runtime imports nothing; an import would mean a build that needs glue this file lacks.
  const imports = {};
  for (const imp of WebAssembly.Module.imports(module)) {
    imports[imp.module] ??= {};
    imports[imp.module][imp.name] = () => {
      throw new Error(`runtime.wasm called the unexpected import ${imp.module}.${imp.name}`);
    };
  }
  const instance = await WebAssembly.instantiate(module, imports);
  return new Runtime(instance.exports);
}

// wasm has no prefetch instruction, so decode reads the weight stream a block ahead (runtime_rs
// kernels::fixed::touch_ahead). That helps where the hardware prefetcher lags behind the stream (an
// Intel Xeon: 0.5B int8 decode 10.2 -> 12.7 tok/s) and holds decode up where it keeps pace (an AMD
// EPYC Zen 3: 18.6 -> 12.2), and wasm cannot tell which CPU it runs on. So once a runtime has
// decoded for `warmupMs` (V8 compiles hot functions again, faster, in the first few hundred ms), its
// next decode steps run with and without touching, alternately, `steps` each, and the way with the
// lower median stays. The tokens are the same either way. `set(on)` switches it (null: a
// runtime.wasm without the switch, which always touches).
export class TouchTuner {
  constructor(set, { steps = 4, warmupMs = 500, now = () => performance.now() } = {}) {
    this.set = set;
    this.steps = steps;
    this.warmupMs = warmupMs;
    this.now = now;
    this.times = { true: [], false: [] };
    this.start = null;
    this.choice = set ? null : true;
  }

  // Run one decode step f(), timed while the choice is open.
  step(f) {
    if (this.choice !== null) return f();
    const t0 = this.now();
    this.start ??= t0;
    if (t0 - this.start < this.warmupMs) return f();
    const on = this.times.true.length <= this.times.false.length;
    this.set(on);
    const result = f();
    this.times[on].push(this.now() - t0);
    if (this.times.false.length === this.steps) {
      this.choice = median(this.times.true) <= median(this.times.false);
      this.set(this.choice);
    }
    return result;
  }
}

function median(v) {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

class Runtime {
  constructor(exports) {
    // On wasm32 a Rust panic cannot unwind: it traps (WebAssembly.RuntimeError) and may leave the
    // module's state half-updated, so after a trap every further call is refused.
    this.x = {};
    this.dead = null;
    for (const [name, value] of Object.entries(exports)) {
      this.x[name] = typeof value !== "function" ? value : (...args) => {
        if (this.dead) throw new RuntimeError(2, `runtime.wasm stopped after an internal error: ${this.dead}`);
        try {
          return value(...args);
        } catch (e) {
          if (e instanceof WebAssembly.RuntimeError) {
            this.dead = e.message;
            throw new RuntimeError(2, `runtime.wasm trapped in ${name}: ${e.message}`);
          }
          throw e;
        }
      };
    }
    this.touch = new TouchTuner(this.x.mono_set_touching ? (on) => this.x.mono_set_touching(on ? 1 : 0) : null);
  }

  // Views must be made after every call: memory.grow detaches the old ArrayBuffer.
  u8(ptr, len) {
    return new Uint8Array(this.x.memory.buffer, ptr, len);
  }

  // Copy bytes into wasm memory; returns [ptr, len] to free with free().
  put(bytes) {
    const len = bytes.length;
    const ptr = len ? this.x.mono_alloc(len) : 0;
    if (len) this.u8(ptr, len).set(bytes);
    return [ptr, len];
  }

  free([ptr, len]) {
    if (ptr) this.x.mono_free_bytes(ptr, len);
  }

  // 4-aligned scratch for out-pointers (wasm32: pointers and usize are u32).
  scratch(words) {
    const raw = this.x.mono_alloc(words * 4 + 4);
    return { raw, len: words * 4 + 4, at: (raw + 3) & ~3 };
  }

  word(at, i) {
    return new DataView(this.x.memory.buffer).getUint32(at + 4 * i, true);
  }

  check(status, lastError = "mono_model_last_error") {
    if (status === 0) return;
    const p = this.x[lastError]();
    const mem = new Uint8Array(this.x.memory.buffer);
    let end = p;
    while (mem[end] !== 0) end++;
    throw new RuntimeError(status, fromUtf8.decode(mem.slice(p, end)));
  }

  // Call f(...args, outPtrA, outPtrB) whose outs are (pointer, length); return a copy of the bytes.
  callBytes(f, args, elementBytes = 1) {
    const s = this.scratch(2);
    try {
      this.check(f(...args, s.at, s.at + 4));
      const ptr = this.word(s.at, 0);
      const len = this.word(s.at, 1);
      return new Uint8Array(this.x.memory.buffer, ptr, len * elementBytes).slice();
    } finally {
      this.x.mono_free_bytes(s.raw, s.len);
    }
  }

  createModel({ manifest, shards, tokenizer }) {
    return new WasmModel(this, manifest, shards, tokenizer);
  }
}

// A Uint32Array store wraps 2**32+5 to 5 and turns NaN or "7" into 0 or 7: every id is checked
// first, so a bad one is an error instead of a different, valid token.
function idBytes(ids) {
  if (!Array.isArray(ids) && !ArrayBuffer.isView(ids)) throw new RuntimeError(1, "token ids must be an array");
  const a = new Uint32Array(ids.length);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id > 0xffffffff) {
      throw new RuntimeError(1, `token id ${String(id).slice(0, 40)} at ${i} is not an integer in 0..2^32-1`);
    }
    a[i] = id;
  }
  return new Uint8Array(a.buffer);
}

function finite(name, v) {
  if (typeof v !== "number" || !Number.isFinite(v)) throw new RuntimeError(1, `${name} must be a finite number`);
  return v;
}

function count(name, v) {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RuntimeError(1, `${name} must be an integer in 0..2^32-1`);
  return v;
}

export class WasmModel {
  constructor(rt, manifest, shards, tokenizer) {
    this.rt = rt;
    const x = rt.x;
    const s = rt.scratch(1);
    try {
      rt.check(x.mono_model_new(s.at));
      this.h = rt.word(s.at, 0);
      const m = rt.put(manifest);
      try {
        rt.check(x.mono_model_load_manifest(this.h, m[0], m[1], s.at));
      } finally {
        rt.free(m);
      }
      const n = rt.word(s.at, 0);
      if (n !== shards.length) throw new RuntimeError(1, `the manifest lists ${n} shards, ${shards.length} given`);
      shards.forEach((bytes, i) => {
        const b = rt.put(bytes); // one shard at a time beside the weights: peak memory stays low
        try {
          rt.check(x.mono_model_add_shard(this.h, i, b[0], b[1]));
        } finally {
          rt.free(b);
        }
      });
      if (tokenizer) {
        const t = rt.put(tokenizer);
        try {
          rt.check(x.mono_model_load_tokenizer(this.h, t[0], t[1]));
        } finally {
          rt.free(t);
        }
      }
      rt.check(x.mono_model_finish(this.h));
    } catch (e) {
      this.free();
      throw e;
    } finally {
      x.mono_free_bytes(s.raw, s.len);
    }
    Object.assign(this, this.info());
  }

  info() {
    return JSON.parse(fromUtf8.decode(this.rt.callBytes(this.rt.x.mono_model_info, [this.h])));
  }

  reset() {
    this.rt.check(this.rt.x.mono_model_reset(this.h));
  }

  // Logits of every new position (all) or of the last one, as a Float32Array copy.
  forward(ids, all = true) {
    const b = this.rt.put(idBytes(ids));
    try {
      const call = () => this.rt.callBytes(this.rt.x.mono_model_forward, [this.h, b[0], ids.length, all ? 1 : 0], 4);
      return new Float32Array((ids.length === 1 ? this.rt.touch.step(call) : call()).buffer);
    } finally {
      this.rt.free(b);
    }
  }

  setSampler({ temperature = 0, topK = 0, topP = 1, repetitionPenalty = 1, seed = 0 } = {}) {
    this.rt.check(this.rt.x.mono_model_set_sampler(this.h, finite("temperature", temperature), count("topK", topK),
      finite("topP", topP ?? 1), finite("repetitionPenalty", repetitionPenalty), count("seed", seed)));
  }

  // Sample the next token from the last logits and append it to the context.
  nextToken() {
    const s = this.rt.scratch(1);
    try {
      this.rt.touch.step(() => this.rt.check(this.rt.x.mono_model_next_token(this.h, s.at)));
      return this.rt.word(s.at, 0);
    } finally {
      this.rt.x.mono_free_bytes(s.raw, s.len);
    }
  }

  // Start the assistant's turn: prompt ids, or messages [{role, content}] rendered in Rust.
  chatStart(prompt, maxTokens = 512) {
    count("maxTokens", maxTokens);
    const isMessages = prompt.length && typeof prompt[0] === "object";
    const bytes = isMessages ? utf8.encode(JSON.stringify(prompt)) : idBytes(prompt);
    const b = this.rt.put(bytes);
    try {
      if (isMessages) this.rt.check(this.rt.x.mono_chat_start_messages(this.h, b[0], b[1], maxTokens));
      else this.rt.check(this.rt.x.mono_chat_start(this.h, b[0], prompt.length, maxTokens));
    } finally {
      this.rt.free(b);
    }
  }

  chatStep() {
    return JSON.parse(fromUtf8.decode(this.rt.touch.step(() => this.rt.callBytes(this.rt.x.mono_chat_step, [this.h]))));
  }

  free() {
    if (this.h) this.rt.x.mono_model_free(this.h);
    this.h = 0;
  }
}

// The tokenizer side of runtime.wasm (runtime_rs/src/ffi.rs), for the Engine interface. manifest.chat
// (docs/formats.md) gives the chat template the Rust renderer applies and the tokens that end a reply;
// a manifest from before it, this project's layout and end tokens.
export class WasmTokenizer {
  constructor(rt, tokenizerBytes, manifest) {
    this.rt = rt;
    const s = rt.scratch(1);
    const t = rt.put(tokenizerBytes);
    try {
      rt.check(rt.x.mono_tokenizer_from_json(t[0], t[1], s.at), "mono_last_error");
      this.h = rt.word(s.at, 0);
    } finally {
      rt.free(t);
      rt.x.mono_free_bytes(s.raw, s.len);
    }
    const specials = manifest.special_tokens ?? {};
    this.template = manifest.chat?.template ?? null;
    this.stops = new Set(manifest.chat?.stop ?? ["<|assistant_end|>", "<|bos|>"].map((n) => specials[n]).filter((v) => v !== undefined));
  }

  // thinking: false switches the model's thinking off where its template can (canSwitchThinking).
  get canSwitchThinking() {
    return typeof this.template?.generation_no_thinking === "string";
  }

  // Whether the generation prompt opens the thought itself (DeepSeek-R1's ends with <think>), so the
  // reply starts inside it.
  opensThought(thinking = true) {
    const g = (thinking === false && this.canSwitchThinking ? this.template.generation_no_thinking : this.template?.generation) ?? "";
    return g.lastIndexOf("<think>") > g.lastIndexOf("</think>");
  }

  encodeChat(messages, thinking = true) {
    const request = { messages, template: this.template, enable_thinking: thinking !== false };
    const b = this.rt.put(utf8.encode(JSON.stringify(request)));
    const s = this.rt.scratch(2);
    try {
      this.rt.check(this.rt.x.mono_render_for_completion(this.h, b[0], b[1], s.at, s.at + 4), "mono_last_error");
      const ptr = this.rt.word(s.at, 0);
      const n = this.rt.word(s.at, 1);
      const ids = Array.from(new Uint32Array(this.rt.x.memory.buffer, ptr, n));
      this.rt.x.mono_free_u32s(ptr, n);
      return ids;
    } finally {
      this.rt.free(b);
      this.rt.x.mono_free_bytes(s.raw, s.len);
    }
  }

  // What `id` adds to the text after `prev` (null: the reply's first token). Decoded alone, a token
  // can lose what the decoder does to a text's first token (Llama-2's Strip of one leading space,
  // Metaspace's dropped `▁`): after another it is decoded as the pair, less the other's bytes.
  tokenBytes(id, prev = null) {
    if (prev === null) return this.decode([id]);
    return this.decode([prev, id]).slice(this.decode([prev]).length);
  }

  decode(ids) {
    const b = this.rt.put(idBytes(ids));
    const s = this.rt.scratch(2);
    try {
      this.rt.check(this.rt.x.mono_tokenizer_decode(this.h, b[0], ids.length, s.at, s.at + 4), "mono_last_error");
      const ptr = this.rt.word(s.at, 0);
      const n = this.rt.word(s.at, 1);
      const out = this.rt.u8(ptr, n).slice();
      this.rt.x.mono_free_bytes(ptr, n);
      return out;
    } finally {
      this.rt.free(b);
      this.rt.x.mono_free_bytes(s.raw, s.len);
    }
  }

  isStop(id) {
    return this.stops.has(id);
  }

  free() {
    if (this.h) this.rt.x.mono_tokenizer_free(this.h);
    this.h = 0;
  }
}

// web_shell/engine.js's Engine over runtime.wasm. files: Map(manifest path -> verified Uint8Array),
// including "runtime.wasm" (or pass wasm: bytes/Module/Response).
export async function createEngine({ manifest, files, wasm, onProgress = () => {} }) {
  const source = wasm ?? files.get("runtime.wasm") ?? files.get("../runtime.wasm");
  if (!source) throw new Error("runtime.wasm was not loaded");
  onProgress({ stage: "compile", loaded: 0, total: 1 });
  const rt = await instantiate(source);
  onProgress({ stage: "compile", loaded: 1, total: 1 });
  const manifestBytes = files.get("manifest.json") ?? utf8.encode(JSON.stringify(manifest));
  const shards = manifest.weights.shards.map((name) => files.get(name));
  const tokenizerBytes = files.get(manifest.tokenizer);
  const model = rt.createModel({ manifest: manifestBytes, shards, tokenizer: tokenizerBytes });
  const tokenizer = new WasmTokenizer(rt, tokenizerBytes, manifest);
  return {
    backend: "wasm",
    tokenizer,
    model,
    reset(sampling = {}) {
      model.reset();
      model.setSampler(sampling);
    },
    async prefill(ids) {
      for (let i = 0; i < ids.length; i += model.chunk) model.forward(ids.slice(i, i + model.chunk), false);
    },
    async step() {
      return { id: model.nextToken() };
    },
    dispose() {
      tokenizer.free();
      model.free();
    },
  };
}
