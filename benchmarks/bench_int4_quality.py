"""int4 against int8 and fp32 on a trained checkpoint: top-1 agreement, KL and perplexity change on
held-out text, and the eval accuracy, per quantization scheme (the parity report's `vs_fp32` and
`eval_vs_fp32` checks, run on the numpy interpreter).

    python benchmarks/bench_int4_quality.py CHECKPOINT
        [--schemes int8,int4-g32,int4-g64,int4-g128,int4-g32-all,int4-g128-all] [--eval-per-family 8]

int4 keeps the output projection and the tables int8; the `-all` schemes put them at 4 bits too:
the numbers behind the default, and what the smaller, faster variants cost.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monologue_compile.driver import build  # noqa: E402
from monologue_compile.frontend.load import load  # noqa: E402
from monologue_compile.parity import rq_state_dict, run_parity  # noqa: E402


def figures(ckpt: Path, scheme: str, eval_per_family: int) -> dict:
    c = build(load(ckpt), scheme)
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
    ap.add_argument("--schemes", default="int8,int4-g32,int4-g64,int4-g128,int4-g32-all,int4-g128-all")
    ap.add_argument("--eval-per-family", type=int, default=8)
    a = ap.parse_args()
    print(f"{a.checkpoint}: vs fp32 on held-out text (numpy interpreter)")
    print(f"{'scheme':18}{'weights MiB':>12}{'top-1':>8}{'KL':>10}{'ppl %':>8}{'eval acc':>10}{'fp32 acc':>10}{'greedy=R_q':>12}")
    for scheme in a.schemes.split(","):
        f = figures(a.checkpoint, scheme, a.eval_per_family)
        name = scheme
        acc = f"{f['acc']:.3f}" if f["acc"] is not None else "-"
        acc32 = f"{f['acc_fp32']:.3f}" if f["acc_fp32"] is not None else "-"
        print(f"{name:18}{f['mib']:12.2f}{f['top1']:8.4f}{f['kl']:10.5f}{f['ppl_pct']:8.2f}{acc:>10}{acc32:>10}"
              f"{str(f['greedy_ok']):>12}")


if __name__ == "__main__":
    main()
