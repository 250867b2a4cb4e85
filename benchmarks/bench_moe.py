"""What a mixture of experts costs on the native runtime: int8 decode and prefill tok/s of
Qwen3-MoE-shaped models with k = 2 routed experts of E, each compiled twice: as the compiler does
(passes/gate.py: an expert's matmuls skip the tokens its router did not pick) and with that rule
off (every expert on every token, the dense sum frontend/experts.py traces). Beside them a dense
Qwen3 whose MLP is two experts wide: the work a token needs. Random weights, one run.

    python benchmarks/bench_moe.py [--experts 2,8,32] [--hidden 256] [--layers 4] [--steps 48]

Prints tok/s (best of --rounds) and each model's time as a multiple of the dense baseline's. Dense
evaluation costs about E / k on the expert matmuls; skipping should bring decode near the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_hf_backends import session  # noqa: E402
from test_hf_models import randomized  # noqa: E402

from monologue_compile.driver import build  # noqa: E402
from monologue_compile.frontend.hf import CausalLMLogits  # noqa: E402
from monologue_compile.frontend.module import from_module  # noqa: E402

S = 256
PROMPT = 128


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


def rates(forward, steps: int, rounds: int) -> tuple[float, float]:
    """(prefill, decode) tok/s, best of `rounds`: a PROMPT-token prompt, then `steps` single tokens."""
    ids = np.random.default_rng(0).integers(3, 512, PROMPT + steps)
    prefill = decode = 0.0
    for _ in range(rounds):
        step = forward(True, None)
        t0 = time.perf_counter()
        step(ids[:PROMPT])
        t1 = time.perf_counter()
        for i in range(PROMPT, PROMPT + steps):
            step(ids[i:i + 1])
        prefill, decode = max(prefill, PROMPT / (t1 - t0)), max(decode, steps / (time.perf_counter() - t1))
    return prefill, decode


@contextlib.contextmanager
def gating(on: bool):
    """The compiler as it is, or with passes/gate.py's rule off (for the dense figures)."""
    if on:
        yield
        return
    with mock.patch.object(importlib.import_module("monologue_compile.passes.fuse"), "gate_products", lambda g: g):
        yield


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", default="2,8,32", help="comma-separated expert counts (2 routed of each)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=48, help="decode steps timed per round")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    base = None
    print(f"{'model':<34} {'prefill tok/s':>13} {'x time':>7} {'decode tok/s':>13} {'x time':>7}")
    for e in [0] + [int(x) for x in a.experts.split(",")]:
        m = model(e, a.hidden, a.layers)
        for skip in ([True] if e == 0 else [False, True]):
            with gating(skip):
                g = build(from_module(m.model, None, S), "int8").graph
            rate = rates(session(g, "native", Path(tempfile.mkdtemp())), a.steps, a.rounds)
            base = base or rate
            label = "dense MLP of 2 experts' width" if e == 0 else f"2 of {e} experts, {'gated' if skip else 'dense'}"
            print(f"{label:<34} {rate[0]:13.1f} {base[0] / rate[0]:6.2f}x {rate[1]:13.1f} {base[1] / rate[1]:6.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
