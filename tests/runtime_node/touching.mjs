// Decode with the weight stream touched ahead and without (mono_set_touching), and with the glue's
// TouchTuner choosing (no warm-up, so it times the first steps): greedy ids from a prompt each way.
// node touching.mjs DIST PROMPT_JSON STEPS -> JSON {on, off, auto, choice, timed} on stdout.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";

const [dist, promptJson, steps] = process.argv.slice(2);
const glue = pathToFileURL(resolve(new URL(".", import.meta.url).pathname, "../../web_shell/wasm_runtime.js"));
const { instantiate, TouchTuner } = await import(glue.href);
const rt = await instantiate(readFileSync(`${dist}/runtime.wasm`));
const m = JSON.parse(readFileSync(`${dist}/model/manifest.json`));
const model = rt.createModel({
  manifest: readFileSync(`${dist}/model/manifest.json`),
  shards: m.weights.shards.map((s) => readFileSync(`${dist}/model/${s}`)),
});
model.setSampler({ temperature: 0 });

function greedy() {
  model.reset();
  model.forward(JSON.parse(promptJson), false);
  return Array.from({ length: +steps }, () => model.nextToken());
}

const out = {};
for (const on of [true, false]) {
  rt.touch.choice = on; // a choice made: the tuner leaves the switch alone
  rt.x.mono_set_touching(on ? 1 : 0);
  out[on ? "on" : "off"] = greedy();
}
rt.touch = new TouchTuner(rt.touch.set, { steps: 2, warmupMs: 0 });
out.auto = greedy();
out.choice = rt.touch.choice;
out.timed = [rt.touch.times.true.length, rt.touch.times.false.length];
console.log(JSON.stringify(out));
