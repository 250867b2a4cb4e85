"""benchmarks/bench_wgsl_gpu.py on whatever adapter wgpu-py has (lavapipe in CI): a tiny GPT's fused
and unfused plans run with the pattern-filled weights, each row counts the dispatches its plan runs
a token, and the profile times every decode dispatch once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from wgsl_harness import device_or_skip  # noqa: E402


def test_time_reports_dispatches_tok_s_and_a_profile_of_every_decode_dispatch(tmp_path):
    from bench_wgsl_gpu import bundle, time_bundles
    from conftest import tiny_model, write_checkpoint

    from monologue_compile.backends.wgpu_executor import adapter_profile, profile_lists
    from monologue_compile.driver import build
    from monologue_compile.peers import PROMPT, STEPS

    device_or_skip()
    g = build(write_checkpoint(tmp_path / "gpt.pt", tiny_model(seed=1, sequence_len=PROMPT + STEPS + 8))).graph
    bundles = [bundle(g, "tiny", "int8", fuse) for fuse in (True, False)]
    text, numbers = time_bundles(bundles, rounds=1)
    rows = {r["fused"]: r for r in numbers["rows"]}
    for b in bundles:
        lists = profile_lists(b["plan"], adapter_profile())
        want = len(lists["decode"]) + len(lists["argmax"])
        r = rows[b["fused"]]
        assert r["dispatches_per_token"] == want
        assert r["decode_best"] > 0 and r["prefill_best"] > 0 and r["gpu_us_per_token"] > 0
    assert rows[True]["dispatches_per_token"] < rows[False]["dispatches_per_token"]
    (profile,) = numbers["profiles"].values()
    assert len(profile) == rows[True]["dispatches_per_token"]
    assert "ours WGSL tiny int8 fused" in text and "us/call" in text
