"""What dense evaluation of a mixture of experts costs (frontend/experts.py): native int8 decode
tok/s of Qwen3-MoE-shaped models with k = 2 routed experts of E, beside a dense Qwen3 whose MLP is
those two experts' width (the work a sparse runtime would do), all with random weights, in one run.

    python benchmarks/bench_moe_dense.py [--experts 2,8,32] [--hidden 256] [--layers 4] [--steps 48]

Prints tok/s (best of --rounds) and each model's ratio to the dense baseline; dense evaluation
should cost about E / k on the expert matmuls, which dominate decode at these sizes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_hf_backends import session  # noqa: E402
from test_hf_models import randomized  # noqa: E402

from monologue_compile.driver import build  # noqa: E402
from monologue_compile.frontend.hf import CausalLMLogits  # noqa: E402
from monologue_compile.frontend.module import from_module  # noqa: E402

S = 128


def model(experts: int, hidden: int, layers: int):
    """Qwen3-MoE with `experts` of width `hidden` and 2 routed, or (experts 0) dense Qwen3 of width 2 * hidden."""
    import transformers

    common = dict(vocab_size=512, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=S)
    if experts:
        cfg = transformers.Qwen3MoeConfig(**common, num_experts=experts, num_experts_per_tok=2,
                                          moe_intermediate_size=hidden, intermediate_size=2 * hidden)
    else:
        cfg = transformers.Qwen3Config(**common, intermediate_size=2 * hidden)
    torch.manual_seed(0)
    return CausalLMLogits(randomized(transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32), 1), S)


def decode_rate(forward, steps: int, rounds: int) -> float:
    ids = np.random.default_rng(0).integers(3, 512, 16 + steps)
    best = 0.0
    for _ in range(rounds):
        step = forward(True, None)
        step(ids[:16])
        t0 = time.perf_counter()
        for i in range(16, 16 + steps):
            step(ids[i:i + 1])
        best = max(best, steps / (time.perf_counter() - t0))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", default="2,8,32", help="comma-separated expert counts (2 routed of each)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=48, help="decode steps timed per round")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    rows = []
    for e in [0] + [int(x) for x in a.experts.split(",")]:
        m = model(e, a.hidden, a.layers)
        g = build(from_module(m.model, None, S), "int8").graph
        rate = decode_rate(session(g, "native", Path(tempfile.mkdtemp())), a.steps, a.rounds)
        rows.append((f"dense MLP of 2 experts' width" if e == 0 else f"MoE, 2 of {e} experts", rate))
        print(f"{rows[-1][0]:<32} {rate:8.1f} tok/s  {rows[0][1] / rate:5.2f}x the dense baseline's time",
              flush=True)


if __name__ == "__main__":
    main()
