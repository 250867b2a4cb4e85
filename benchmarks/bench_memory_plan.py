"""What the memory plan (passes/plan.py) costs each backend: WGSL dispatches per decode token, WGSL
buffer bytes (activations, KV caches, scratch: everything but weights) and Rust scratch bytes (the
planned activation buffers at T = chunk), for the demo-shaped GPT (random weights, the demo preset's
shapes) and the newest nanochat architecture of tests/test_nanochat.py.

    python benchmarks/bench_memory_plan.py [--json out.json]

No timing: the numbers are counts, the same on every machine. Run it on two checkouts to compare.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from monologue_compile.backends.rust_crate import Emitter  # noqa: E402
from monologue_compile.backends.wgsl_plan import build_plan  # noqa: E402
from monologue_compile.driver import build  # noqa: E402


def demo_checkpoint(d: Path) -> Path:
    from conftest import tiny_model, write_checkpoint
    from training.presets import get_preset

    cfg = get_preset("demo").model.to_dict()
    return write_checkpoint(d / "demo.pt", tiny_model(seed=0, **cfg))


def newest_nanochat(d: Path) -> Path:
    from test_nanochat import LATER, SIZES, _random_later, write_nanochat_dir

    features, pattern = LATER["mar2026b-smear-backout"]
    sizes = {**SIZES, "sequence_len": 160}
    model = _random_later(features, pattern)
    model.config.sequence_len = 160
    write_nanochat_dir(d / "nanochat", model.state_dict(), {**sizes, "window_pattern": pattern}, prefix="")
    return d / "nanochat"


def measure(checkpoint: Path) -> dict:
    g = build(checkpoint).graph
    plan = build_plan(g).plan
    code = Emitter(g).emit()
    chunk = int(g.meta["schedule"]["prefill"]["chunk"])
    rust = sum(b["per_token"] * chunk + b["fixed"] for b in g.meta["memory_plan"]["f32_buffers"]) * 4
    by_role: dict[str, int] = {}
    for b in plan["buffers"]:
        by_role[b["role"]] = by_role.get(b["role"], 0) + b["bytes"]
    return {
        "wgsl_decode_dispatches": len(plan["dispatch"]["decode"]),
        "wgsl_decode_dispatches_cpu": len(plan["profiles"]["cpu"]["dispatch"].get("decode", plan["dispatch"]["decode"])),
        "wgsl_prefill_dispatches": len(plan["dispatch"]["prefill"]),
        "wgsl_buffer_bytes": sum(v for r, v in by_role.items() if r != "weight"),
        "wgsl_activation_bytes": by_role.get("activation", 0),
        "rust_kernel_calls": code.count("k::"),
        "rust_scratch_bytes": rust,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, make in (("demo GPT", demo_checkpoint), ("newest nanochat", newest_nanochat)):
            out[name] = measure(make(tmp))
            print(f"{name:<16} " + "  ".join(f"{k} {v}" for k, v in out[name].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
