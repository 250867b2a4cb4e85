"""Where a token's WGSL dispatches go: the plan's dispatch lists (decode, prefill, the `cpu` profile's
decode) counted per kernel family, for the demo-shaped GPT, the newest nanochat architecture and a
Llama/Qwen3-style Hugging Face model (the fixtures of tests/test_hf_models.py at the same tiny size),
and with --time the decode tok/s on wgpu-py (lavapipe on a CPU-only machine: CPU timings, not GPU
rankings) of the plan built with and without its dispatch fusions (`build_plan(fuse=False)`),
interleaved in one run, best of N.

    python benchmarks/bench_wgsl_dispatch.py [--time] [--tokens 32] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_memory_plan import demo_checkpoint, newest_nanochat  # noqa: E402

from monologue_compile.backends import wgsl_plan  # noqa: E402
from monologue_compile.driver import build  # noqa: E402


def hf_model(family: str):
    from test_hf_models import build_model

    from monologue_compile.frontend.module import from_module

    return from_module(build_model(family, "sdpa").model, None, 80)


def families(plan: dict, lst: list) -> Counter:
    return Counter(plan["pipelines"][d["pipeline"]]["name"] for d in lst)


def count(plan: dict) -> dict:
    cpu = plan["profiles"]["cpu"]["dispatch"]
    return {"decode": len(plan["dispatch"]["decode"]),
            "decode_cpu": len(cpu.get("decode", plan["dispatch"]["decode"])),
            "prefill": len(plan["dispatch"]["prefill"]),
            "argmax": len(plan["dispatch"]["argmax"]),
            "argmax_cpu": len(cpu.get("argmax", plan["dispatch"]["argmax"]))}


def plans(g) -> dict:
    """The plan with its dispatch fusions and without them (the unfused path)."""
    return {"unfused": wgsl_plan.build_plan(g, fuse=False), "fused": wgsl_plan.build_plan(g)}


def session(p, g):
    from monologue_compile.backends.wgpu_executor import WgpuSession, _graph_source

    return WgpuSession(p.plan, {f"kernels/{k}": v for k, v in p.kernels.items()}, _graph_source(g))


def decode_rate(s, prompt: list[int], tokens: int) -> float:
    """Greedy decode tok/s after the prompt (the GPU argmax: 4 bytes read back per token)."""
    s.reset()
    s.forward(prompt)
    tok = prompt[-1]
    t0 = time.perf_counter()
    for _ in range(tokens):
        tok = s.decode_greedy(tok)
    return tokens / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", action="store_true", help="also time decode on wgpu-py, fused vs unfused")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {"demo GPT": lambda: demo_checkpoint(tmp), "newest nanochat": lambda: newest_nanochat(tmp),
                  "llama (HF)": lambda: hf_model("llama-untied"), "qwen3 (HF)": lambda: hf_model("qwen3")}
        for name, make in models.items():
            g = build(make()).graph
            ps = plans(g)
            row = {k: count(p.plan) for k, p in ps.items()}
            print(f"\n{name}: dispatches per step (unfused -> fused)")
            for k in row["fused"]:
                print(f"  {k:<11} {row['unfused'][k]:>4} -> {row['fused'][k]:<4}")
            for k, p in ps.items():
                for lst in ("decode",):
                    fam = families(p.plan, p.plan["dispatch"][lst])
                    print(f"  {k:<8} {lst} by kernel: " + ", ".join(f"{f} {c}" for f, c in fam.most_common()))
                cpu = p.plan["profiles"]["cpu"]["dispatch"].get("decode")
                if cpu:
                    fam = families(p.plan, cpu)
                    print(f"  {k:<8} decode (cpu profile) by kernel: " + ", ".join(f"{f} {c}" for f, c in fam.most_common()))
            if args.time:
                prompt = [3, 5, 7, 11]
                sessions = {k: session(p, g) for k, p in ps.items()}
                best = {k: 0.0 for k in ps}
                for _ in range(args.rounds):
                    for k, s in sessions.items():
                        best[k] = max(best[k], decode_rate(s, prompt, args.tokens))
                row["decode_tok_s_lavapipe"] = best
                print(f"  decode tok/s ({sessions['fused'].profile or 'default'} profile; CPU/lavapipe timings on a "
                      f"CPU-only machine, best of {args.rounds}, interleaved): "
                      f"unfused {best['unfused']:.1f} -> fused {best['fused']:.1f} ({best['fused'] / best['unfused']:.2f}x)")
            out[name] = row
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
