// A trap inside runtime.wasm (here: a wild handle, the one thing the C ABI cannot check) becomes a
// RuntimeError with code 2, and every later call is refused instead of running on broken state.
// node trap.mjs DIST -> JSON {first, later, ok} on stdout.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";

const [dist] = process.argv.slice(2);
const glue = pathToFileURL(resolve(new URL(".", import.meta.url).pathname, "../../web_shell/wasm_runtime.js"));
const { instantiate, RuntimeError } = await import(glue.href);
const rt = await instantiate(readFileSync(`${dist}/runtime.wasm`));
const m = JSON.parse(readFileSync(`${dist}/model/manifest.json`));
const model = rt.createModel({
  manifest: readFileSync(`${dist}/model/manifest.json`),
  shards: m.weights.shards.map((s) => readFileSync(`${dist}/model/${s}`)),
  tokenizer: readFileSync(`${dist}/model/${m.tokenizer}`),
});
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
