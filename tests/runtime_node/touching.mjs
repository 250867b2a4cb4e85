// Decode with the weight stream touched ahead and without (mono_set_touching), and with the glue's
// TouchTuner choosing (no warm-up, so it times the first steps): greedy ids from a prompt each way.
// node touching.mjs DIST PROMPT_JSON STEPS -> JSON {on, off, auto, choice, timed} on stdout.
import { loadModel } from "./load_model.mjs";

const [dist, promptJson, steps] = process.argv.slice(2);
const { glue: { TouchTuner }, rt, model } = await loadModel(dist);
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
