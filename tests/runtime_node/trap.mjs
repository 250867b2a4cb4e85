// A trap inside runtime.wasm (here: a wild handle, the one thing the C ABI cannot check) becomes a
// RuntimeError with code 2, and every later call is refused instead of running on broken state.
// node trap.mjs DIST -> JSON {first, later, ok} on stdout.
import { loadModel } from "./load_model.mjs";

const [dist] = process.argv.slice(2);
const { glue: { RuntimeError }, rt, model } = await loadModel(dist, { tokenizer: true });
const ok = model.forward([1, 2, 3]).length;
const out = { ok };
try {
  rt.x.mono_model_reset(0x7ffffff0);
} catch (e) {
  out.first = { isRuntimeError: e instanceof RuntimeError, code: e.code, message: e.message };
}
try {
  model.forward([1]);
} catch (e) {
  out.later = { code: e.code, message: e.message };
}
console.log(JSON.stringify(out));
