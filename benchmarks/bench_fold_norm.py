"""Folding norm weights into the following matmuls (passes/fold_norm.py): parity with and without
the fold, measured in the same run on the same weights, at --quant none and int8.

For a random-weight Llama (transformers' class; its RMSNorm weights spread over [lo, hi], as trained
ones do, so the fold changes the matrices int8 quantizes) the script compiles each scheme twice, the
pipeline's fold pass forced on and off, and prints for each: kernels, norm weights folded,
interpreter vs R_q (the model with the compiled graph's own weights) and interpreter vs fp32
(top-1 agreement, KL, logits max error relative to the largest |logit|). The pipeline folds only
at --quant none; these int8 figures are why.

    python benchmarks/bench_fold_norm.py [--hidden 256] [--layers 4] [--spread 0.25,2.5]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monologue_compile import passes  # noqa: E402
from monologue_compile.driver import build  # noqa: E402
from monologue_compile.frontend.module import from_module  # noqa: E402
from monologue_compile.interpreter import Session  # noqa: E402
from monologue_compile.parity import _torch_logits, metrics, rq_state_dict  # noqa: E402


def llama(hidden: int, layers: int, vocab: int, seq: int, lo: float, hi: float) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
                      num_attention_heads=hidden // 32, num_key_value_heads=max(1, hidden // 64),
                      max_position_embeddings=seq, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.empty_like(p).uniform_(lo, hi))
    return model.eval()


def compiled(model, seq: int, quant: str, fold: bool):
    real = passes.fold_norm_weights
    # the pipeline looks the pass up by this name when it runs: forced on (as at --quant none) or off
    passes.fold_norm_weights = (lambda g, q: real(g, "none")) if fold else (lambda g, q: g)
    try:
        return build(from_module(model, sequence_len=seq), quant)
    finally:
        passes.fold_norm_weights = real


def row(name: str, c, fp32, seqs) -> str:
    g = c.graph
    rq = c.loaded.build_module(rq_state_dict(g)).eval()
    vs_rq, agree, total, kl, rel_fp = [], 0, 0, 0.0, 0.0
    for s in seqs:
        ours = Session(g).forward(s).astype(np.float64)
        vs_rq.append(metrics(ours, _torch_logits(rq, s))["rel"])
        ref = _torch_logits(fp32, s).astype(np.float64)
        rel_fp = max(rel_fp, metrics(ours, ref)["rel"])
        agree += int((ours.argmax(-1) == ref.argmax(-1)).sum())
        total += len(s)
        lp = ref - ref.max(-1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
        lq = ours - ours.max(-1, keepdims=True)
        lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
        kl += float((np.exp(lp) * (lp - lq)).sum())
    return (f"{name:<13} kernels {g.kernel_count():>4}  folded {len(g.meta.get('folded_norm_weights', {})):>3}  "
            f"vs R_q rel {max(vs_rq):.2e}  vs fp32: top1 {agree / total:.4f}  KL {kl / total:.2e}  "
            f"rel {rel_fp:.2e}"), (agree / total, kl / total, rel_fp, max(vs_rq))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--spread", default="0.25,2.5", help="lo,hi of the uniform norm weights")
    a = ap.parse_args()
    lo, hi = map(float, a.spread.split(","))
    seq = 128
    torch.set_num_threads(1)
    model = llama(a.hidden, a.layers, a.vocab, seq, lo, hi)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, a.vocab, 64).tolist() for _ in range(4)]
    fp32 = from_module(model, sequence_len=seq).build_module()
    print(f"Llama hidden {a.hidden}, {a.layers} layers, norm weights uniform in [{lo}, {hi}]")
    for quant in ("none", "int8"):
        figures = {}
        for fold in (False, True):
            line, figures[fold] = row(f"{quant} {'fold' if fold else 'no fold'}", compiled(model, seq, quant, fold),
                                      fp32, seqs)
            print(line, flush=True)
        (t0, k0, r0, _), (t1, k1, r1, _) = figures[False], figures[True]
        print(f"{quant} fold / no fold: top1 {t1 / t0:.4f}x  KL {k1 / k0 if k0 else math.nan:.3f}x  "
              f"rel vs fp32 {r1 / r0 if r0 else math.nan:.3f}x")


if __name__ == "__main__":
    main()
