"""The native runtime on the newest nanochat architecture (Mar 2026: padded vocab, residual/x0
lambdas, sliding windows, value embeddings with gates, smear as a token shift, backout): logits
within tolerance of R_q, decode with the cache (windows and the shift's carried row) equal to
prefill, and 64 greedy tokens identical to R_q's."""

import numpy as np
import pytest

from monologue_compile.backends.native import NativeModel
from monologue_compile.backends.rust_crate import build_native, emit_crate
from monologue_compile.driver import compile_to
from monologue_compile.frontend.load import build_module
from monologue_compile.artifact import load_model
from monologue_compile.parity import TOLERANCES, metrics, rq_state_dict
from test_runtime_native_parity import greedy, needs_cargo, shared_crate_dir, torch_logits

pytest.importorskip("tiktoken")
from test_nanochat import LATER, SIZES, _random_later, write_nanochat_dir  # noqa: E402


@needs_cargo
@pytest.mark.parametrize("version", ["mar2026b-smear-backout"])
def test_native_matches_rq_on_later_nanochat(tmp_path, version):
    features, pattern = LATER[version]
    sizes = {**SIZES, "sequence_len": 512}  # nanochat's quarter window at 512: 128 keys before the query
    model = _random_later(features, pattern, sizes)
    d = write_nanochat_dir(tmp_path / version, model.state_dict(), {**sizes, "window_pattern": pattern}, prefix="")
    compile_to(d, tmp_path / "dist")
    g, _, _ = load_model(tmp_path / "dist")
    ops = {n.op for n in g.nodes}
    assert "token_shift" in ops and any(n.attrs.get("window") for n in g.nodes if n.op == "attention")
    rq = build_module(g.meta["arch"], g.meta["config"], rq_state_dict(g)).eval()
    crate = emit_crate(g, shared_crate_dir())
    assert "k::token_shift(" in (crate / "src" / "model_gen.rs").read_text()
    m = NativeModel.from_dist(tmp_path / "dist", lib_path=build_native(crate, fast=True))
    ids = np.random.default_rng(0).integers(0, SIZES["vocab_size"], 200).tolist()  # windows of 129 are passed
    whole = m.forward(ids)
    r = metrics(whole, torch_logits(rq, ids)[:, : whole.shape[1]])
    assert r["rel"] <= TOLERANCES["logits_rel_vs_rq"] and r["cosine"] >= TOLERANCES["logits_cosine_vs_rq"], r
    m.reset()
    parts = [m.forward(ids[:150])] + [m.forward([t]) for t in ids[150:]]
    r = metrics(np.concatenate(parts), whole)
    assert r["rel"] <= TOLERANCES["decode_vs_prefill_rel"], r
    m.reset()
    prompt = ids[:8]
    assert greedy(m, prompt, 64) == rq.generate(prompt, 64, temperature=0.0)
