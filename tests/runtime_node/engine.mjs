// Drives web_shell/wasm_runtime.js's createEngine (the web shell's Engine interface) on a compiled
// model dir: node engine.mjs DIST MESSAGES_JSON STEPS -> JSON {prompt, ids, bytes, stops, streamed, whole}
// on stdout.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";

const [dist, messagesJson, steps] = process.argv.slice(2);
const glue = pathToFileURL(resolve(new URL(".", import.meta.url).pathname, "../../web_shell/wasm_runtime.js"));
const { createEngine } = await import(glue.href);
const manifestBytes = readFileSync(`${dist}/model/manifest.json`);
const manifest = JSON.parse(manifestBytes);
const files = new Map([["manifest.json", manifestBytes], ["runtime.wasm", readFileSync(`${dist}/runtime.wasm`)]]);
for (const f of manifest.files) files.set(f.path, readFileSync(`${dist}/model/${f.path}`));
const engine = await createEngine({ manifest, files });
engine.reset({ temperature: 0 });
const prompt = engine.tokenizer.encodeChat(JSON.parse(messagesJson));
await engine.prefill(prompt);
const ids = [];
for (let i = 0; i < Number(steps); i++) ids.push((await engine.step()).id);
const bytes = ids.map((id) => Array.from(engine.tokenizer.tokenBytes(id)));
const stops = ids.map((id) => engine.tokenizer.isStop(id));
// the prompt's text as the worker streams a reply (each token after the one before it), and whole
const streamed = [];
let previous = null;
for (const id of prompt) {
  streamed.push(...engine.tokenizer.tokenBytes(id, previous));
  previous = id;
}
const whole = Array.from(engine.tokenizer.decode(prompt));
engine.dispose();
console.log(JSON.stringify({ backend: engine.backend, prompt, ids, bytes, stops, streamed, whole }));
