"""Decode speed of the Rust runtime (native and runtime.wasm under Node) beside PyTorch CPU eager
fp32, in the same run, plus runtime.wasm's size, the machine's memory bandwidth and decode as a
fraction of the roofline (int8 weight bytes read per token / bandwidth).

    python benchmarks/bench_runtime.py [--models demo,d20] [--steps 64] [--no-wasm] [--out bench_out/runtime]

Models: `demo` is runs/demo/checkpoint.pt when it exists, else the demo preset's config with
random weights; `d20` is the seeds' 560M configuration with random weights. Every model goes
through the real compiler (int8) and the release builds (LTO), then:
  torch:  GPT.forward with its KV cache, one token per step (what GPT.generate does), fp32
  native: mono_model_next_token (greedy sample + forward of the token) through cffi
  wasm:   the same inside Node (web_shell/wasm_runtime.js), timed there
Prints one table; --json writes the numbers too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from monologue_compile.artifact import load_model  # noqa: E402
from monologue_compile.backends.native import NativeModel, WasmModel, time_decode  # noqa: E402
from monologue_compile.backends.rust_crate import build_native, build_wasm, emit_crate  # noqa: E402
from monologue_compile.driver import compile_to  # noqa: E402
from monologue_compile.peers import graph_bytes_per_token  # noqa: E402
from monologue_compile.models.gpt import GPT, KVCache  # noqa: E402
from training.presets import get_preset  # noqa: E402


def tokenizer_json(vocab: int) -> str:
    """A valid tokenizer for a random-weight model: the 256 bytes, distinct byte pairs (then
    triples, past 65,792 tokens: Qwen's 151,936), the specials."""
    import base64

    from monologue_compile.tokenizer import SPECIAL_TOKENS
    from conftest import PATTERN

    n = vocab - len(SPECIAL_TOKENS)
    ranks = [bytes([i]) for i in range(256)] + [(j - 65536).to_bytes(3, "big") if j >= 65536 else j.to_bytes(2, "big")
                                                for j in range(n - 256)]
    return json.dumps({"format": "monologue-tokenizer", "version": 1, "pattern": PATTERN,
                       "ranks": [base64.b64encode(r).decode() for r in ranks],
                       "special_tokens": {s: n + i for i, s in enumerate(SPECIAL_TOKENS)}})


def checkpoint_for(name: str, work: Path) -> tuple[Path, str]:
    if name == "demo" and (ROOT / "runs/demo/checkpoint.pt").exists():
        return ROOT / "runs/demo/checkpoint.pt", "runs/demo/checkpoint.pt (trained)"
    from conftest import write_checkpoint

    path = work / name / "checkpoint.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = GPT(get_preset(name).model).init_weights(zero_init_outputs=False).eval()
        write_checkpoint(path, model, tokenizer=tokenizer_json(model.config.vocab_size))
        del model
    return path, f"{name} preset config, random weights"


def memory_bandwidth() -> dict:
    """Read bandwidth (GB/s): numpy sum over 1 GiB (one thread) and torch sum (all threads)."""
    a = np.ones(1 << 28, np.float32)
    a.sum()
    best_np = min(_timed(lambda: a.sum()) for _ in range(3))
    t = torch.from_numpy(a)
    t.sum()
    best_t = min(_timed(lambda: t.sum()) for _ in range(3))
    b = np.empty_like(a)
    best_copy = min(_timed(lambda: np.copyto(b, a)) for _ in range(3))
    gb = a.nbytes / 1e9
    return {"numpy_sum_1thread": gb / best_np, "torch_sum_threads": gb / best_t, "copy_read+write": 2 * gb / best_copy}


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


class Clock:
    """Wall and CPU time (this process, all threads) of a block: on a shared machine the CPU
    time says what the code costs when other jobs take the cores."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def torch_decode(model: GPT, prompt: list[int], steps: int) -> Clock:
    """Time of `steps` single-token forwards with the KV cache (fp32 eager)."""
    cache = KVCache(model.config, 1, len(prompt) + steps + 1)
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), kv_cache=cache)[0, -1]
        with Clock() as c:
            for _ in range(steps):
                tok = int(torch.argmax(logits))
                logits = model(torch.tensor([[tok]]), kv_cache=cache)[0, -1]
        return c


def bench_model(name: str, work: Path, steps: int, wasm: bool) -> dict:
    ckpt, what = checkpoint_for(name, work)
    dist = work / name / "dist"
    t0 = time.perf_counter()
    if not (dist / "model" / "manifest.json").exists():
        compile_to(ckpt, dist)
    compile_s = time.perf_counter() - t0
    g, manifest, _ = load_model(dist)
    cfg = g.meta["config"]
    crate = emit_crate(g, dist / "runtime_rs")
    t0 = time.perf_counter()
    lib = build_native(crate)
    native_build_s = time.perf_counter() - t0
    row = {"model": name, "source": what, "params": None, "compile_s": compile_s, "native_build_s": native_build_s,
           "weight_bytes_per_token": graph_bytes_per_token(g), "steps": steps}
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, cfg["vocab_size"], 16).tolist()

    from monologue_compile.frontend.load import load

    model = load(ckpt).build_module().eval()
    row["params"] = sum(p.numel() for p in model.parameters())
    # PyTorch at its best thread count: on a shared machine its default (all cores, OpenMP
    # spinning) can be 10x slower than one thread, which would flatter the runtime.
    default_threads = torch.get_num_threads()
    best = None
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        torch_decode(model, prompt, 2)  # warm-up
        c = min((torch_decode(model, prompt, steps) for _ in range(3)), key=lambda c: c.wall)  # best of 3, as the runtimes
        row[f"torch_fp32_tok_s_{threads}_threads"] = steps / c.wall
        if best is None or c.wall < best[1].wall:
            best = (threads, c)
    torch.set_num_threads(default_threads)
    row["torch_threads"], c = best
    row["torch_fp32_tok_s"], row["torch_fp32_tok_per_cpu_s"] = steps / c.wall, steps / c.cpu
    del model

    native = NativeModel.from_dist(dist, lib_path=lib)
    wall, cpu = time_decode(native, prompt, steps)
    row["native_tok_s"], row["native_tok_per_cpu_s"] = steps / wall, steps / cpu
    del native

    if wasm:
        t0 = time.perf_counter()
        build_wasm(crate, dist / "runtime.wasm")
        row["wasm_build_s"] = time.perf_counter() - t0
        row["wasm_bytes"] = (dist / "runtime.wasm").stat().st_size
        w = WasmModel.from_dist(dist)
        try:
            wall, cpu = time_decode(w, prompt, steps)
            row["wasm_tok_s"], row["wasm_tok_per_cpu_s"] = steps / wall, steps / cpu
        finally:
            w.close()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="demo,d20")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--no-wasm", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "runtime")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    bw = memory_bandwidth()
    bandwidth = max(bw.values()) * 1e9
    import os

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"memory bandwidth (GB/s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in bw.items()))
    rows = []
    for name in a.models.split(","):
        steps = a.steps if name != "d20" else min(a.steps, 16)
        r = bench_model(name, a.out, steps, not a.no_wasm)
        r["roofline_tok_s"] = bandwidth / r["weight_bytes_per_token"]
        r["native_vs_torch"] = r["native_tok_s"] / r["torch_fp32_tok_s"]
        r["native_of_roofline"] = r["native_tok_s"] / r["roofline_tok_s"]
        if "wasm_tok_s" in r:
            r["wasm_vs_native"] = r["wasm_tok_s"] / r["native_tok_s"]
        rows.append(r)
        print(f"\n{name}: {r['source']}, {r['params'] / 1e6:.1f}M params, "
              f"{r['weight_bytes_per_token'] / 2**20:.1f} MiB int8 weights read per token")
        print(f"  {'':18}{'tok/s (wall)':>14}{'tok/CPU-s':>12}")
        print(f"  {'torch eager fp32':18}{r['torch_fp32_tok_s']:14.1f}{r['torch_fp32_tok_per_cpu_s']:12.1f}   "
              f"best of 1/{torch.get_num_threads()} threads: " + ", ".join(
                  f"{k.split('_')[-2]} threads {v:.1f}" for k, v in r.items() if k.endswith("_threads") and "tok_s" in k))
        print(f"  {'native int8':18}{r['native_tok_s']:14.1f}{r['native_tok_per_cpu_s']:12.1f}   "
              f"{r['native_vs_torch']:.1f}x torch (wall), {100 * r['native_of_roofline']:.0f}% of the "
              f"{r['roofline_tok_s']:.0f} tok/s roofline")
        if "wasm_tok_s" in r:
            print(f"  {'wasm int8 (Node)':18}{r['wasm_tok_s']:14.1f}{r['wasm_tok_per_cpu_s']:12.1f}   "
                  f"{r['wasm_vs_native']:.2f}x native (wall); runtime.wasm {r['wasm_bytes'] / 1e6:.2f} MB")
    if a.json:
        a.json.write_text(json.dumps({"bandwidth_gb_s": bw, "models": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
