"""Compile time and peak memory of `monologue-compile` for the demo model and the 560M d20 config.

Random weights (training/presets.py configs); each compile runs in a fresh child process so its
peak RSS is its own. Prints one line per model and per step:

    python benchmarks/bench_compile.py [--presets demo,d20] [--quant int8] [--verify]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import monologue_compile.driver as d
t0 = time.perf_counter()  # after imports: the compile itself
orig_build = d.build
built = []
def timed_build(*a, **k):
    built.append(orig_build(*a, **k))
    return built[-1]
d.build = timed_build
manifest = d.compile_to({ckpt!r}, {out!r}, quant={quant!r}, verify={verify})
total = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
size = sum(f["bytes"] for f in manifest["files"])
parity = {{}}
if {verify}:
    import pathlib
    r = json.loads((pathlib.Path({out!r}) / "parity.json").read_text())["checks"]
    parity = {{k: {{m: v for m, v in c.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}
              for k, c in r.items()}}
print(json.dumps({{"parity": parity, "total_s": total, "steps": built[0].timings, "peak_rss_gib": peak, "output_mib": size / 2**20,
                  "shards": len(manifest["weights"]["shards"])}}))
"""


def make_checkpoint(preset: str, path: Path) -> int:
    import torch

    sys.path.insert(0, str(ROOT))
    from monologue_compile.models.gpt import GPT
    from training.presets import PRESETS

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import byte_tokenizer_json

    cfg = PRESETS[preset].model
    torch.manual_seed(0)
    model = GPT(cfg).init_weights(zero_init_outputs=False)
    torch.save({"model_config": cfg.to_dict(), "model": model.state_dict(),
                "tokenizer": byte_tokenizer_json(cfg.vocab_size), "meta": {"preset": preset}}, path)
    return model.num_params()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="demo,d20")
    ap.add_argument("--quant", default="int8")
    ap.add_argument("--verify", action="store_true")
    args = ap.parse_args()
    for preset in args.presets.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt, out = Path(tmp) / "checkpoint.pt", Path(tmp) / "dist"
            t0 = time.perf_counter()
            n = make_checkpoint(preset, ckpt)
            made = time.perf_counter() - t0
            code = CHILD.format(root=str(ROOT), ckpt=str(ckpt), out=str(out), quant=args.quant, verify=args.verify)
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if r.returncode:
                print(f"{preset}: compile failed: {r.stderr.strip().splitlines()[-1]}")
                continue
            res = json.loads(r.stdout.strip().splitlines()[-1])
            steps = ", ".join(f"{k} {v:.2f}s" for k, v in res["steps"].items())
            print(f"{preset}: {n / 1e6:.1f}M params, checkpoint {ckpt.stat().st_size / 2**20:.0f} MiB (made in {made:.1f}s)")
            print(f"  compile ({args.quant}{', verify' if args.verify else ''}): {res['total_s']:.2f}s total "
                  f"[{steps}], peak RSS {res['peak_rss_gib']:.2f} GiB, "
                  f"output {res['output_mib']:.1f} MiB in {res['shards']} shard(s)")
            for check, figures in res["parity"].items():
                print(f"  {check}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
