"""The WGSL backend on the newest nanochat architecture (residual/x0 lambdas, sliding windows, value
embeddings with gates, smear as a token shift, backout): it gets a WebGPU plan, and on wgpu-py both
plan profiles match R_q (logits within tolerance, 64 greedy tokens identical) after a prefill longer
than one chunk."""

import numpy as np
import pytest

from monologue_compile.artifact import load_model, read_manifest
from monologue_compile.driver import compile_to
from monologue_compile.frontend.load import build_module
from monologue_compile.parity import TOLERANCES, _torch_logits, metrics, rq_state_dict
from wgsl_harness import device_or_skip

pytest.importorskip("tiktoken")
from test_nanochat import LATER, SIZES, _random_later, write_nanochat_dir  # noqa: E402

SEQ = 160
PROMPT = 72


@pytest.fixture(scope="module")
def newest(tmp_path_factory):
    features, pattern = LATER["mar2026b-smear-backout"]
    sizes = {**SIZES, "sequence_len": SEQ}
    model = _random_later(features, pattern)
    model.config.sequence_len = SEQ
    d = tmp_path_factory.mktemp("nanochat")
    write_nanochat_dir(d / "ckpt", model.state_dict(), {**sizes, "window_pattern": pattern}, prefix="")
    compile_to(d / "ckpt", d / "dist")
    return d / "dist"


def test_newest_nanochat_gets_a_webgpu_plan(newest):
    webgpu = read_manifest(newest / "model")["webgpu"]
    assert webgpu["plan"] == "plan.json", webgpu.get("reason")


@pytest.mark.parametrize("profile", [None, "cpu"], ids=["default", "cpu_profile"])
def test_newest_nanochat_matches_rq_on_wgpu(newest, profile):
    device_or_skip()
    from monologue_compile.backends.wgpu_executor import WgpuSession

    g, _, _ = load_model(newest)
    assert "token_shift" in {n.op for n in g.nodes}
    rq = build_module(g.meta["arch"], g.meta["config"], rq_state_dict(g)).eval()
    s = WgpuSession.from_dist(newest, profile=profile)
    assert s.chunk < PROMPT
    prompt = np.random.default_rng(1).integers(0, g.meta["config"]["vocab_size"], PROMPT).tolist()
    rows = [s.forward(prompt)]
    ours = [int(np.argmax(rows[0][-1]))]
    while len(ours) < TOLERANCES["greedy_steps"]:
        ours.append(s.decode_greedy(ours[-1]))
        rows.append(s.logits(1))
    assert ours == rq.generate(prompt, TOLERANCES["greedy_steps"], temperature=0.0)
    m = metrics(np.concatenate(rows), _torch_logits(rq, prompt + ours[:-1]))
    assert m["rel"] <= TOLERANCES["logits_rel_vs_rq"] and m["cosine"] >= TOLERANCES["logits_cosine_vs_rq"], m
