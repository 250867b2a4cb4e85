// The interface every inference backend implements, and the choice between backends.
//
// A backend module (the WebGPU plan executor, the wasm runtime) exports
//   probe(manifest, files) -> {ok: boolean, reason?: string} (or a Promise of it): its own checks
//   create({manifest, files, onProgress}) -> Promise<Engine>
// where files is a Map(path as in manifest.files, relative to model/ -> verified Uint8Array) and
// onProgress({loaded, total}) reports shader/module compilation. An Engine is
//   backend: "webgpu" | "wasm"
//   tokenizer: {
//     encodeChat(messages: [{role: "user" | "assistant", content, thought?}], thinking = true) -> number[]
//                                     the prompt in the model's chat template (manifest.chat,
//                                     applied by runtime_rs/src/chat.rs), ending where the
//                                     assistant's reply begins; thinking false switches it off
//     canSwitchThinking: boolean      whether the template can (Qwen3's enable_thinking)
//     opensThought(thinking) -> boolean  the generation prompt ends inside a thought
//     tokenBytes(id, prev) -> Uint8Array  the bytes the token adds after token prev (null: the
//                                     reply's first; a token may end inside a UTF-8 character;
//                                     the <think> and </think> special tokens give their text)
//     isStop(id) -> boolean           the token ends the reply (manifest.chat.stop)
//   }
//   reset(sampling)              empties the context; sampling = {temperature, topK, topP, seed}
//                                (temperature 0: greedy; topK 0: no top-k cut; topP 1: no top-p
//                                cut; seed: a u32 for the sampler's RNG)
//   prefill(ids) -> Promise      appends ids to the context
//   step() -> Promise<{id}>      samples the next token from the context and appends it
//   dispose()
// An engine whose GPU device is lost rejects with DeviceLostError; generate.js then moves the
// context to the wasm engine and the reply continues there.

export const BACKEND_KINDS = ["webgpu", "wasm"]; // in order of preference
export const BACKEND_LABELS = { webgpu: "GPU (WebGPU)", wasm: "CPU (wasm)" };

// kind -> () => Promise<backend module>, loaded only when the kind is probed or started.
const BACKEND_MODULES = {
  webgpu: () => import("./webgpu_executor.js"),
  wasm: () => import("./wasm_runtime.js").then(wasmBackend),
};

// runtime.wasm sits at the site's root, beside index.html; the page only runs it once verified, so
// the manifest must list it (as "../runtime.wasm", its path from model/). Both backends need it:
// the WebGPU one for its tokenizer.
export const RUNTIME_WASM = "../runtime.wasm";

function wasmBackend(runtime) {
  return {
    probe(_manifest, files) {
      if (!files.has(RUNTIME_WASM)) return { ok: false, reason: "this site has no runtime.wasm listed in its manifest" };
      const missing = runtime.missingWasmFeature();
      if (missing) return { ok: false, reason: `this browser's WebAssembly lacks ${missing}` };
      return { ok: true, reason: "runtime.wasm verified" };
    },
    create: ({ manifest, files, onProgress }) =>
      runtime.createEngine({ manifest, files, wasm: files.get(RUNTIME_WASM), onProgress }),
  };
}

export class DeviceLostError extends Error {
  constructor(message = "the GPU device was lost") {
    super(message);
    this.name = "DeviceLostError";
  }
}

// What the plan needs from a WebGPU device, as the compiler writes it (artifact.py):
// manifest.webgpu = {features: [...], required_limits: {limitName: value}}, the limits named as in
// GPUSupportedLimits so they can go to requestDevice as they are.
export function webgpuRequirements(manifest) {
  const webgpu = manifest?.webgpu ?? {};
  return { limits: webgpu.required_limits ?? {}, features: webgpu.features ?? [] };
}

// Whether this browser's WebGPU adapter can run the plan: {ok, reason}.
export async function checkWebGPU(manifest) {
  if (!globalThis.navigator?.gpu) return { ok: false, reason: "this browser has no WebGPU" };
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch {
    // a refused request means the same as no adapter
  }
  if (!adapter) return { ok: false, reason: "no WebGPU adapter (GPU blocked or absent)" };
  const { limits, features } = webgpuRequirements(manifest);
  const missing = features.filter((f) => !adapter.features.has(f));
  for (const [name, need] of Object.entries(limits)) {
    const have = adapter.limits[name];
    // min* limits are alignments: smaller is better.
    const enough = name.startsWith("min") ? have <= need : have >= need;
    if (have === undefined || !enough) missing.push(`${name} ${name.startsWith("min") ? "≤" : "≥"} ${need} (adapter: ${have ?? "none"})`);
  }
  if (missing.length) return { ok: false, reason: `the WebGPU adapter lacks ${missing.join(", ")}` };
  return { ok: true, reason: "the WebGPU adapter has what the model needs" };
}

function checkWasm() {
  return typeof globalThis.WebAssembly?.instantiate === "function"
    ? { ok: true, reason: "WebAssembly is available" }
    : { ok: false, reason: "this browser has no WebAssembly" };
}

// For each kind, in order of preference: {kind, label, ok, reason}. A backend is usable when the
// browser can run it, this build contains it, and its module's own probe agrees.
export async function probeBackends(manifest, files) {
  const results = [];
  for (const kind of BACKEND_KINDS) {
    const browser = kind === "webgpu" ? await checkWebGPU(manifest) : checkWasm();
    let verdict = browser;
    if (browser.ok && !BACKEND_MODULES[kind]) {
      verdict = { ok: false, reason: `not in this build (${browser.reason})` };
    } else if (browser.ok) {
      verdict = await (await BACKEND_MODULES[kind]()).probe(manifest, files);
    }
    results.push({ kind, label: BACKEND_LABELS[kind], ok: verdict.ok, reason: verdict.reason ?? "" });
  }
  return results;
}

export async function createEngine(kind, { manifest, files }, onProgress) {
  if (!BACKEND_MODULES[kind]) throw new Error(`the ${BACKEND_LABELS[kind] ?? kind} backend is not in this build`);
  const backend = await BACKEND_MODULES[kind]();
  return backend.create({ manifest, files, onProgress });
}
