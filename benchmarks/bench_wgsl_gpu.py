"""Our WebGPU plan on a real GPU: tok/s, dispatches per token and where a token's time goes
(issue 18, item 4), beside PyTorch eager on the same GPU.

    python benchmarks/bench_wgsl_gpu.py pack [--models llama-30m,qwen2.5-0.5b] [--quants int8,int4-g32] -o DIR
    python benchmarks/bench_wgsl_gpu.py time DIR [--rounds 5] [--json out.json]

`pack` (on any machine) compiles bench_peers' Hugging Face folders (random weights, cached under
~/.cache/monologue-peers) with each --quants scheme and writes, per model and scheme, the plan and
its kernels twice: as compiled (the dispatch fusions on) and with every kernel node's own
dispatches (`build_plan(fuse=False)`). Only plans and kernels travel (a 0.5B model's weights do
not fit where a GPU is lent), so `time` fills every weight buffer with one byte pattern (0x3c:
int8 60, f32 0.0115): no kernel branches on a weight's value, so a token costs what it costs with
the trained weights; parity on a GPU is the tests' business (tests/test_wgsl_*.py there).

`time` runs each plan on wgpu-py's high-performance adapter (Vulkan), interleaved rounds, prompt
128 / generate 64, greedy on the GPU (4 bytes read back a token, as the page does), best/median:
  - prefill and decode tok/s, and dispatches per decode token (decode + argmax lists);
  - wall µs per decode token, and GPU µs per token: the decode list encoded 32 times in one
    submit, so the host's per-token submit and read-back are not in it; their difference is what
    a token waits on the host and the queue;
  - with torch and a CUDA device there: PyTorch eager fp32 (transformers, the same config, KV
    cache, same prompt and steps), and the device's copy bandwidth for the roofline column.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from monologue_compile.peers import PROMPT, STEPS, _one_line, graph_bytes_per_token, prompt_ids  # noqa: E402

FILL = 0x3C
BATCHED = 32  # decode lists per submit for the GPU-only time


# --- pack ------------------------------------------------------------------------------------------

def bundle(g, model: str, quant: str, fuse: bool, hf_config=None) -> dict:
    """What `time` needs of a compiled graph: its plan (fused or not), kernels and bytes a token."""
    from monologue_compile.backends.wgsl_plan import build_plan

    p = build_plan(g, fuse=fuse)
    return {"model": model, "quant": quant, "fused": fuse, "hf_config": hf_config,
            "bytes_per_token": graph_bytes_per_token(g), "plan": p.plan,
            "kernels": {f"kernels/{k}": v for k, v in p.kernels.items()}}


def pack(models: list[str], quants: list[str], out: Path) -> None:
    from bench_peers import MODELS, compile_dist, hf_folder

    from monologue_compile.artifact import load_model

    out.mkdir(parents=True, exist_ok=True)
    for name in models:
        folder, _ = hf_folder(name)
        for quant in quants:
            dist = folder.parent / ("dist" if quant == quants[0] else f"dist-{quant}")
            print(f"{name} {quant}: compiling (cached while the compiler is unchanged)", file=sys.stderr, flush=True)
            why = compile_dist(folder, dist, quant=quant)
            if why:
                raise SystemExit(f"{name} {quant}: could not build: {why}")
            g, _, _ = load_model(dist)
            for fuse in (True, False):
                b = bundle(g, name, quant, fuse, MODELS[name])
                path = out / f"{name}-{quant}-{'fused' if fuse else 'unfused'}.json"
                path.write_text(json.dumps(b))
                print(f"  {path.name}: {len(b['plan']['dispatch']['decode'])} decode dispatches, "
                      f"{path.stat().st_size / 1e6:.1f} MB", file=sys.stderr, flush=True)


# --- time ------------------------------------------------------------------------------------------

class PlanOnGpu:
    def __init__(self, bundle: dict):
        from monologue_compile.backends.wgpu_executor import WgpuSession
        from monologue_compile.wgsl import device as wdev

        self.b = bundle
        # zero-filled at creation, then the pattern over every buffer the plan initializes
        self.s = WgpuSession(bundle["plan"], bundle["kernels"], lambda init: b"")
        for buf in bundle["plan"]["buffers"]:
            if buf["init"] is not None:
                self.s.dev.queue.write_buffer(self.s.bufs[buf["name"]], 0, bytes([FILL]) * buf["bytes"])
        self.adapter = wdev.adapter().info
        lists = self.s.lists
        self.dispatches = len(lists["decode"]) + len(lists["argmax"])
        self.prefill_dispatches = len(lists["prefill"])
        self.prompt = prompt_ids(bundle["plan"]["vocab_size"])
        self.s.forward(self.prompt[:2]), self.s.decode_greedy(1)  # the first use compiles the pipelines

    def measure(self) -> dict:
        from monologue_compile.bench import _session_rates

        r = _session_rates(self.s, self.prompt, STEPS, greedy=self.s.decode_greedy)
        return {"prefill": r["prefill_tok_s"], "decode": r["decode_tok_s"], "gpu_us": self.gpu_us_per_token()}

    def _mid_decode(self) -> list:
        """Sets up a decode step at the timed decode's middle position (token, step uniform) and
        returns its dispatches (decode and argmax lists), to be encoded again and again."""
        s = self.s
        s.pos = PROMPT + STEPS // 2
        s._step([1], ["decode"])
        return s.dispatches["decode"] + s.dispatches["argmax"]

    def _seconds(self, calls: list, reps: int) -> float:
        """One submit of CALLS encoded REPS times (a barrier between dispatches, as in a token),
        waited for by a 4-byte read back."""
        s = self.s
        t0 = time.perf_counter()
        enc = s.dev.create_command_encoder()
        p = enc.begin_compute_pass()
        for _ in range(reps):
            for pipe, bg, wg in calls:
                p.set_pipeline(pipe)
                p.set_bind_group(0, bg)
                p.dispatch_workgroups(*wg)
        p.end()
        s.dev.queue.submit([enc.finish()])
        s._read(s.plan["io"]["argmax"]["buffer"], 4, np.uint32)
        return time.perf_counter() - t0

    def gpu_us_per_token(self) -> float:
        """BATCHED tokens' dispatch lists in one submit: the host's per-token share left out."""
        return self._seconds(self._mid_decode(), BATCHED) / BATCHED * 1e6

    def profile(self, reps: int = 64) -> list[dict]:
        """µs per call of each decode dispatch alone (REPS in one submit, less an empty submit's
        cost; best of 3)."""
        calls = self._mid_decode()

        def us(items) -> float:
            return min(self._seconds(items, reps) for _ in range(3)) / reps * 1e6

        base = us([])
        names = [_kernel_label(self.s.plan["pipelines"][d["pipeline"]]["kernel"], self.b["kernels"])
                 for d in self.s.lists["decode"] + self.s.lists["argmax"]]
        return [{"kernel": name, "workgroups": list(c[2]), "us": max(0.0, us([c]) - base)}
                for name, c in zip(names, calls)]

    def close(self):
        pass


def _kernel_label(path: str, kernels: dict) -> str:
    """`012_matvec_int8 W int8 [1152, 896]`: the kernel file and, for a matrix, its shape."""
    m = re.search(r"W (int\d) \[(\d+), (\d+)\]", kernels[path])
    return Path(path).stem + (f" W {m[1]} [{m[2]}, {m[3]}]" if m else "")


class TorchCuda:
    """transformers' model of the same config on the CUDA device, fp32, random weights."""

    def __init__(self, bundle: dict, dtype: str = "float32"):
        import torch
        import transformers

        cls, kw = bundle["hf_config"]
        torch.manual_seed(0)
        self.torch = torch
        self.m = transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls)(**kw),
                                                               dtype=getattr(torch, dtype)).cuda().eval()
        self.prompt = prompt_ids(kw["vocab_size"])
        self.measure()  # warm-up: CUDA context, kernels chosen on first use

    def measure(self) -> dict:
        torch = self.torch
        with torch.no_grad():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = self.m(torch.tensor([self.prompt], device="cuda"), use_cache=True, logits_to_keep=1)
            tok = out.logits[:, -1:].argmax(-1)
            int(tok)
            t1 = time.perf_counter()
            for _ in range(STEPS):
                out = self.m(tok, past_key_values=out.past_key_values, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)
                int(tok)  # the token reaches the host each step, as a chat's does
            t2 = time.perf_counter()
        return {"prefill": PROMPT / (t1 - t0), "decode": STEPS / (t2 - t1)}

    def close(self):
        del self.m
        self.torch.cuda.empty_cache()


def cuda_bandwidth() -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    a = torch.ones(1 << 28, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        b.copy_(a)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * a.numel() * 4 / best


def time_plans(folder: Path, rounds: int) -> tuple[str, dict]:
    return time_bundles([json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))], rounds)


def time_bundles(bundles: list[dict], rounds: int) -> tuple[str, dict]:
    bandwidth = cuda_bandwidth()
    engines, failed = [], []
    for b in bundles:
        t0 = time.perf_counter()
        name = f"ours WGSL {b['model']} {b['quant']} {b.get('label') or ('fused' if b['fused'] else 'unfused')}"
        try:
            engines.append((name, b, PlanOnGpu(b)))
        except Exception as e:  # a plan the adapter cannot run is a line, not the end of the run
            failed.append(f"{name}: could not run: {_one_line(e)}")
        print(f"  ready in {time.perf_counter() - t0:.1f} s (buffers, pipelines, first tokens): {name}",
              file=sys.stderr, flush=True)
    if bandwidth:
        for model in dict.fromkeys(b["model"] for b in bundles if b.get("hf_config")):
            b = next(b for b in bundles if b["model"] == model)
            name = f"PyTorch eager fp32 CUDA {model}"
            try:
                engines.append((name, b | {"quant": "fp32"}, TorchCuda(b)))
            except Exception as e:
                failed.append(f"{name}: could not run: {_one_line(e)}")
    runs = {name: [] for name, _, _ in engines}
    for r in range(rounds):
        for name, _, e in engines:
            runs[name].append(e.measure())
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    adapter = next((e.adapter for _, _, e in engines if isinstance(e, PlanOnGpu)), {})
    lines = [f"adapter: {adapter.get('device', '?')} ({adapter.get('backend_type', '?')}, "
             f"{adapter.get('adapter_type', '?')}); prompt {PROMPT}, generate {STEPS}, greedy, batch 1; "
             f"best/median of {rounds} interleaved rounds"
             + (f"; device copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write)" if bandwidth else "")]
    w = max(len(name) for name, _, _ in engines) if engines else 6
    head = (f"{'engine':<{w}} {'disp/tok':>8} {'MB/tok':>7} {'prefill tok/s':>15} {'decode tok/s':>15} "
            f"{'wall us/tok':>11} {'GPU us/tok':>10} {'us/disp':>7} {'roofline':>8}")
    lines.append(head)
    rows = []
    for name, b, e in engines:
        rs = runs[name]
        pre, dec = [x["prefill"] for x in rs], [x["decode"] for x in rs]
        gpu = min((x["gpu_us"] for x in rs if "gpu_us" in x), default=None)
        mb = b["bytes_per_token"] / 1e6 if b["quant"] != "fp32" else None
        disp = getattr(e, "dispatches", None)
        row = {"engine": name, "model": b["model"], "quant": b["quant"], "fused": b.get("fused"),
               "dispatches_per_token": disp, "prefill_dispatches_per_chunk": getattr(e, "prefill_dispatches", None),
               "bytes_per_token": b["bytes_per_token"] if mb else None, "prefill_best": max(pre),
               "prefill_median": statistics.median(pre), "decode_best": max(dec), "decode_median": statistics.median(dec),
               "gpu_us_per_token": gpu}
        rows.append(row)
        roof = f"{100 * max(dec) * b['bytes_per_token'] / bandwidth:7.1f}%" if (mb and bandwidth) else f"{'-':>8}"
        lines.append(f"{name:<{w}} {disp if disp else '-':>8} {f'{mb:.1f}' if mb else '-':>7} "
                     f"{max(pre):>7.0f}/{statistics.median(pre):<7.0f} {max(dec):>7.1f}/{statistics.median(dec):<7.1f} "
                     f"{1e6 / max(dec):>11.0f} {f'{gpu:.0f}' if gpu else '-':>10} "
                     f"{f'{gpu / disp:.1f}' if gpu and disp else '-':>7} {roof}")
    lines += failed
    profiles = {}
    for name, b, e in engines:
        if isinstance(e, PlanOnGpu) and b["fused"] and not b.get("label"):
            profiles[name] = e.profile()
            lines += ["", profile_table(name, profiles[name])]
    for _, _, e in engines:
        e.close()
    return "\n".join(lines), {"profiles": profiles, "adapter": adapter, "bandwidth_bytes_s": bandwidth, "rounds": rounds, "rows": rows,
                              "failed": failed, "prompt": PROMPT, "steps": STEPS}


def profile_table(engine: str, calls: list[dict], top: int = 10) -> str:
    """The decode dispatches by kernel: calls per token, µs per call, share of the token."""
    by: dict[str, list] = {}
    for c in calls:
        by.setdefault(c["kernel"], []).append(c)
    total = sum(c["us"] for c in calls)
    lines = [f"{engine}: each decode dispatch alone, {total:.0f} us a token in all "
             f"(a token's dispatches run one after another, so this is about its GPU time)",
             f"{'kernel':<60} {'calls':>5} {'us/call':>8} {'share':>6}  workgroups"]
    for k, cs in sorted(by.items(), key=lambda kv: -sum(c["us"] for c in kv[1]))[:top]:
        us = sum(c["us"] for c in cs)
        share = 100 * us / total if total else 0.0  # a loaded CPU adapter can time every dispatch at 0 us
        lines.append(f"{k[:60]:<60} {len(cs):>5} {us / len(cs):>8.1f} {share:>5.0f}%  "
                     f"{'x'.join(map(str, cs[0]['workgroups']))}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="compile and write the plans (any machine)")
    p.add_argument("--models", default="llama-30m,qwen2.5-0.5b")
    p.add_argument("--quants", default="int8,int4-g32")
    p.add_argument("-o", "--out", type=Path, required=True)
    t = sub.add_parser("time", help="run the packed plans on this machine's GPU")
    t.add_argument("folder", type=Path)
    t.add_argument("--rounds", type=int, default=5)
    t.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.models.split(","), a.quants.split(","), a.out)
        return
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    text, numbers = time_plans(a.folder, a.rounds)
    print(text, flush=True)
    if a.json:
        a.json.write_text(json.dumps(numbers, indent=1) + "\n")


if __name__ == "__main__":
    main()
