"""The wgpu backend through the CLI: `chat --backend wgpu` says what the numpy backend says,
`verify` puts the wgpu checks in the same report and finds a broken kernel by its IR node, and
`bench` times every backend present beside torch."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from conftest import tiny_model, write_checkpoint
from wgsl_harness import device_or_skip

from monologue_compile.cli import main
from monologue_compile.driver import compile_to


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    compile_to(write_checkpoint(d / "c.pt", tiny_model(seed=3)), d / "dist")
    return d / "dist"


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_chat_wgpu_says_what_numpy_says(dist):
    device_or_skip()
    args = ["chat", dist, "--prompt", "hi", "--prompt", "2+2?", "--max-tokens", "12", "--backend"]
    want, got = _invoke(*args, "numpy"), _invoke(*args, "wgpu")
    assert want.exit_code == 0 and got.exit_code == 0, (got.output, got.exception)
    assert want.output.count("answer:") + want.output.count("thinking:") >= 2
    assert got.output == want.output


def test_verify_reports_wgpu_beside_the_interpreter(dist):
    device_or_skip()
    r = _invoke("verify", dist, "--checkpoint", dist.parent / "c.pt")
    assert r.exit_code == 0, r.output
    checks = json.loads((dist / "parity.json").read_text())["checks"]
    for name in ("logits_vs_rq", "wgpu_kernels_vs_interpreter", "wgpu_logits_vs_rq", "wgpu_greedy_vs_rq", "wgpu_vs_fp32"):
        assert checks[name]["ok"], (name, checks[name])
    assert checks["wgpu_kernels_vs_interpreter"]["compared"] >= 2 * 8  # every kernel node, prefill and decode
    assert checks["wgpu_greedy_vs_rq"]["steps"] == 64
    assert "wgpu_logits_vs_rq" in r.output


def _covers(wgsl: str) -> str:
    return next((line for line in wgsl.split("\n\n")[0].splitlines() if line.startswith("// covers:")), "")


def test_verify_names_a_broken_kernel(dist, tmp_path):
    device_or_skip()
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(dist, bad)
    model = bad / "model"
    manifest = json.loads((model / "manifest.json").read_text())
    broken = 0
    for f in manifest["files"]:
        src = (model / f["path"]).read_text() if f["path"].startswith("kernels/") else ""
        # the q rope of layer 0 (fused with k's and v's cache writes: wgsl_fuse.py)
        if ("rope_qknorm" in f["path"] or "rope_parts" in f["path"]) and "%rms_norm_2 " in _covers(src):
            src = src.replace("let c = cos_t[", "let c = -cos_t[")
            (model / f["path"]).write_text(src)
            f["bytes"], f["sha256"] = len(src.encode()), hashlib.sha256(src.encode()).hexdigest()
            broken += 1
    assert broken == 2  # the prefill and the decode kernel
    (model / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    r = _invoke("verify", bad)
    assert r.exit_code == 1
    c = json.loads((bad / "parity.json").read_text())["checks"]["wgpu_kernels_vs_interpreter"]
    assert not c["ok"] and c["failing"][0] == "rms_norm_2 (prefill)"


def test_bench_times_every_backend_beside_torch(dist):
    device_or_skip()
    from monologue_compile.bench import bench, table

    res = bench(dist, prompt_len=20, steps=4, rust=False)
    rows = res["backends"]
    for name in ("torch (fp32 eager, CPU)", "numpy", "wgpu"):
        assert rows[name]["prefill_tok_s"] > 0 and rows[name]["decode_tok_s"] > 0, rows[name]
    plan = json.loads((dist / "model" / "plan.json").read_text())
    w = rows["wgpu"]
    assert w["decode_dispatches_per_token"] == len(plan["dispatch"]["decode"]) + len(plan["dispatch"]["argmax"])
    # every decode token reads at least every matmul weight once
    assert w["decode_weight_bytes_per_token"] >= sum(b["bytes"] for b in plan["buffers"] if b["name"].startswith("w:transformer.h."))
    assert "correctness device" in table(res)
