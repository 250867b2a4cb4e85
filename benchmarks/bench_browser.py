"""Decode (and prefill) tokens/s of the page's two backends in headless Chromium: WebGPU
(web_shell/webgpu_executor.js running plan.json; SwiftShader on a machine without a GPU) and wasm
(runtime.wasm), on a ~28M-parameter model with random weights compiled for the purpose.

    python benchmarks/bench_browser.py [--steps 64] [--prompt 32] [--keep DIR] [--json out.json]

The model is compiled (with a release runtime.wasm) into a temporary dist/, or into DIR with --keep
(reused when it is there), and a small bench page beside the web shell runs each engine through
engine.js's interface, in the page's main thread: reset (greedy), prefill the prompt, one warm-up
step, then `steps` timed steps (each: the GPU argmax of a decode step, or the wasm decode); then,
for WebGPU, the GPU time of one greedy decode step per kernel family, and the plan profile the
executor chose for the adapter (`cpu` on SwiftShader).
For scale (issue 7): on this headless Chromium a popular in-browser library decodes a 28M Llama at
under 1 tok/s on WebGPU and 90-165 tok/s on wasm int8; the goals are >= 20 tok/s and >= 180-330 tok/s.
SwiftShader is a CPU emulating a GPU: its figures are correctness-device figures, not a GPU's.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

# ~28M parameters, all of them read per decoded token: the tied 32768 x 512 embedding / lm_head
# (16.8M) and 4 blocks of 12 x 512^2 (12.6M).
CONFIG = dict(sequence_len=512, vocab_size=32768, n_layer=4, n_head=8, n_kv_head=8, n_embd=512, tie_embeddings=True)

BENCH_HTML = """<!doctype html>
<meta charset="utf-8"><title>Monologue browser benchmark</title>
<script type="module" src="bench.js"></script>
"""

BENCH_JS = """import { createEngine, probeBackends } from "./engine.js";
import { loadModel } from "./loader.js";

window.bench = async (kind, promptLength, steps) => {
  const model = await loadModel(new URL("./", location.href).href, () => {});
  const probe = (await probeBackends(model.manifest, model.files)).find((b) => b.kind === kind);
  if (!probe.ok) return { error: probe.reason };
  let t = performance.now();
  const engine = await createEngine(kind, model, () => {});
  const startMs = performance.now() - t;
  const prompt = Array.from({ length: promptLength }, (_, i) => 32 + ((i * 7) % 90));
  engine.reset({ temperature: 0, topK: 0, topP: 1, seed: 0 });
  t = performance.now();
  await engine.prefill(prompt);
  const prefillMs = performance.now() - t;
  await engine.step();
  const ids = [];
  t = performance.now();
  for (let i = 0; i < steps; i++) ids.push((await engine.step()).id);
  const decodeMs = performance.now() - t;
  const kernels = kind === "webgpu" ? await kernelTimes(engine.executor) : null;
  const profile = kind === "webgpu" ? engine.executor.profile : null;
  engine.dispose();
  return { start_s: startMs / 1000, prefill_tok_s: (promptLength * 1000) / prefillMs, decode_tok_s: (steps * 1000) / decodeMs, ids, kernels, profile };
};

// Where a greedy decode step's GPU time goes: each dispatch of the decode and argmax lists run 5
// times in one submit (spreading the submit's round trip over them), summed per kernel family.
async function kernelTimes(executor) {
  const { device, plan } = executor;
  const ms = {};
  await device.queue.onSubmittedWorkDone(); // the engine's next step, already in flight
  for (const list of ["decode", "argmax"]) {
    for (const [i, d] of executor.dispatch[list].entries()) {
      const family = plan.pipelines[executor.lists[list][i].pipeline].name;
      const encoder = device.createCommandEncoder();
      const pass = encoder.beginComputePass();
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, d.bindGroup);
      for (let r = 0; r < 5; r++) pass.dispatchWorkgroups(...d.workgroups);
      pass.end();
      const t = performance.now();
      device.queue.submit([encoder.finish()]);
      await device.queue.onSubmittedWorkDone();
      ms[family] = (ms[family] ?? 0) + (performance.now() - t) / 5;
    }
  }
  return ms;
}
window.benchReady = true;
"""


def params(config: dict) -> int:
    from monologue_compile.models.gpt import GPT, GPTConfig

    return sum(p.numel() for n, p in GPT(GPTConfig(**config)).named_parameters())


def build_site(dist: Path) -> Path:
    """The bench model compiled to dist/ as `monologue compile` writes it (web shell, plan, release
    runtime.wasm, all in the manifest), plus the bench page."""
    import torch

    from conftest import write_checkpoint
    from monologue_compile.driver import compile_to
    from monologue_compile.models.gpt import GPT, GPTConfig

    if not (dist / "runtime.wasm").exists():
        torch.manual_seed(0)
        model = GPT(GPTConfig(**CONFIG)).init_weights(zero_init_outputs=False).eval()
        with tempfile.TemporaryDirectory() as tmp:
            ck = write_checkpoint(Path(tmp) / "checkpoint.pt", model)
            t0 = time.perf_counter()
            compile_to(ck, dist, wasm=True)
            click.echo(f"compiled (with runtime.wasm) in {time.perf_counter() - t0:.0f} s", err=True)
    (dist / "bench.html").write_text(BENCH_HTML)
    (dist / "bench.js").write_text(BENCH_JS)
    return dist


def run(dist: Path, prompt: int, steps: int) -> dict:
    from playwright.sync_api import sync_playwright

    from web_helpers import CHROMIUM, CHROMIUM_ARGS, serving

    results = {}
    with serving(dist) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.goto(url + "bench.html")
        page.wait_for_function("window.benchReady === true")
        adapter = page.evaluate("""async () => {
          const a = await navigator.gpu?.requestAdapter();
          return a ? `${a.info.vendor} ${a.info.architecture} ${a.info.description}`.trim() : null;
        }""")
        results["webgpu_adapter"] = adapter
        for kind in ("webgpu", "wasm"):
            results[kind] = page.evaluate("([k, p, s]) => window.bench(k, p, s)", [kind, prompt, steps])
        browser.close()
    return results


@click.command()
@click.option("--steps", default=64, show_default=True, help="timed decode steps per backend")
@click.option("--prompt", default=32, show_default=True, help="prompt tokens prefilled first")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), help="compile into (or reuse) this dist")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="also write the figures here")
def main(steps, prompt, keep, json_out):
    with tempfile.TemporaryDirectory() as tmp:
        dist = build_site(keep or Path(tmp) / "dist")
        res = run(dist, prompt, steps)
    n = params(CONFIG)
    click.echo(f"model: {n / 1e6:.1f}M parameters, random weights, int8 ({CONFIG}); {os.cpu_count()} CPU cores, shared")
    click.echo(f"WebGPU adapter: {res['webgpu_adapter'] or 'none'}")
    click.echo(f"{'backend':<8} {'start s':>8} {'prefill tok/s':>14} {'decode tok/s':>13}  goal")
    goals = {"webgpu": ">= 20 tok/s (20x a popular library's < 1)", "wasm": ">= 180-330 tok/s (2x its 90-165)"}
    for kind in ("webgpu", "wasm"):
        r = res[kind]
        if "error" in r:
            click.echo(f"{kind:<8} unavailable: {r['error']}")
            continue
        click.echo(f"{kind:<8} {r['start_s']:>8.1f} {r['prefill_tok_s']:>14.1f} {r['decode_tok_s']:>13.1f}  {goals[kind]}")
    if res["webgpu"].get("kernels"):
        ms = res["webgpu"]["kernels"]
        click.echo(f"WebGPU decode step (plan profile {res['webgpu']['profile'] or 'default'}), GPU ms per kernel family: "
                   + ", ".join(f"{k} {v:.0f}" for k, v in sorted(ms.items(), key=lambda kv: -kv[1])))
    if all("ids" in res[k] for k in ("webgpu", "wasm")):
        same = res["webgpu"]["ids"] == res["wasm"]["ids"]
        click.echo(f"greedy tokens of the two backends: {'identical' if same else 'DIFFERENT'}")
    if json_out:
        json_out.write_text(json.dumps({"params": n, "config": CONFIG, "steps": steps, "prompt": prompt, **res}, indent=1))


if __name__ == "__main__":
    main()
