"""int4 against int8 and fp32 on a trained checkpoint: top-1 agreement, KL and perplexity change on
held-out text, and the eval accuracy, per quantization scheme (the parity report's `vs_fp32` and
`eval_vs_fp32` checks, run on the numpy interpreter).

    python benchmarks/bench_int4_quality.py CHECKPOINT [--schemes int8,int4-g32,int4-g64,int4-g128]
        [--eval-per-family 8]

Besides each scheme as the compiler applies it (int4 keeps the output projection and the tables
int8), `int4-g32 (all)` quantizes the output projection to int4 too: the numbers behind that choice.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monologue_compile.driver import build  # noqa: E402
from monologue_compile.frontend.load import load  # noqa: E402
from monologue_compile.parity import rq_state_dict, run_parity  # noqa: E402
quantize_pass = importlib.import_module("monologue_compile.passes.quantize")  # the module (passes exports a function of that name)


def figures(ckpt: Path, scheme: str, all_int4: bool, eval_per_family: int) -> dict:
    keep = quantize_pass.output_projections
    if all_int4:  # the experiment: no matmul kept int8 (tables still are)
        quantize_pass.output_projections = lambda g: set()
    try:
        c = build(load(ckpt), scheme)
    finally:
        quantize_pass.output_projections = keep
    fp32 = c.loaded.build_module().eval()
    rq = c.loaded.build_module(rq_state_dict(c.graph)).eval()
    r = run_parity(c.graph, fp32_model=fp32, rq_model=rq, tokenizer_json=c.loaded.tokenizer_json, trained=True,
                   layers=False, eval_per_family=eval_per_family)["checks"]
    # stored bytes (the IR keeps int4 values one per byte)
    stored = sum(w.data["q"].size * w.quant["bits"] // 8 + w.data["scale"].nbytes for w in c.graph.weights.values() if w.quant)
    v, e = r["vs_fp32"], r.get("eval_vs_fp32", {})
    return {"top1": v["top1_agreement"], "kl": v["kl_mean"], "ppl_pct": v["ppl_change_pct"],
            "acc": e.get("compiled_accuracy"), "acc_fp32": e.get("fp32_accuracy"),
            "greedy_ok": r["greedy_vs_rq"]["mismatches"] == 0, "mib": stored / 2**20}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--schemes", default="int8,int4-g32,int4-g64,int4-g128")
    ap.add_argument("--eval-per-family", type=int, default=8)
    a = ap.parse_args()
    runs = [(s, False) for s in a.schemes.split(",")] + [("int4-g32", True)]
    print(f"{a.checkpoint}: vs fp32 on held-out text (numpy interpreter)")
    print(f"{'scheme':18}{'weights MiB':>12}{'top-1':>8}{'KL':>10}{'ppl %':>8}{'eval acc':>10}{'fp32 acc':>10}{'greedy=R_q':>12}")
    for scheme, all_int4 in runs:
        f = figures(a.checkpoint, scheme, all_int4, a.eval_per_family)
        name = scheme + (" (all)" if all_int4 else "")
        acc = f"{f['acc']:.3f}" if f["acc"] is not None else "-"
        acc32 = f"{f['acc_fp32']:.3f}" if f["acc_fp32"] is not None else "-"
        print(f"{name:18}{f['mib']:12.2f}{f['top1']:8.4f}{f['kl']:10.5f}{f['ppl_pct']:8.2f}{acc:>10}{acc32:>10}"
              f"{str(f['greedy_ok']):>12}")


if __name__ == "__main__":
    main()
