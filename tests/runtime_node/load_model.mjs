// The scripts beside this one load DIST (a compiled model with runtime.wasm) the same way: the glue
// web_shell/wasm_runtime.js as a module, the runtime, and a model from the dist's files.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";

export async function loadModel(dist, { tokenizer = false } = {}) {
  const glue = await import(pathToFileURL(resolve(new URL(".", import.meta.url).pathname, "../../web_shell/wasm_runtime.js")).href);
  const rt = await glue.instantiate(readFileSync(`${dist}/runtime.wasm`));
  const manifest = readFileSync(`${dist}/model/manifest.json`);
  const m = JSON.parse(manifest);
  const model = rt.createModel({
    manifest,
    shards: m.weights.shards.map((s) => readFileSync(`${dist}/model/${s}`)),
    tokenizer: tokenizer ? readFileSync(`${dist}/model/${m.tokenizer}`) : null,
  });
  return { glue, rt, model };
}
