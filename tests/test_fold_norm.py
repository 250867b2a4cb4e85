"""passes/fold_norm.py: a norm weight whose every user is a linear moves into those linears' columns
(W' = W diag(w)) and nowhere else; the folded graph computes what the unfolded one did and matches
R_q, which parity.rq_state_dict builds from the folded weights. Under int8 nothing is folded: int8
quantizes the original matrices (benchmarks/bench_fold_norm.py measures why)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from monologue_compile.frontend.trace import trace
from monologue_compile.interpreter import Session
from monologue_compile.lower import lower
from monologue_compile.parity import TOLERANCES, _torch_logits, metrics, rq_state_dict
from monologue_compile.passes import run_pipeline
from monologue_compile.passes.canonicalize import canonicalize
from monologue_compile.passes.fold_norm import fold_norm_weights

V, C, S = 64, 32, 32


class Norms(nn.Module):
    """One norm of each case: folded (weighted RMSNorm into two linears, bias-free LayerNorm into
    one) and kept (LayerNorm with a bias, an RMSNorm whose output also feeds the residual, an
    RMSNorm into a linear whose weight is tied to the embedding)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.wte = nn.Embedding(V, C)
        self.n1, self.n2 = nn.RMSNorm(C, eps=1e-6), nn.LayerNorm(C, bias=False)
        self.n3, self.n4, self.n5 = nn.LayerNorm(C), nn.RMSNorm(C, eps=1e-6), nn.RMSNorm(C, eps=1e-6)
        self.a, self.b, self.c, self.d, self.e = (nn.Linear(C, C, bias=False) for _ in range(5))
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("n") and name.endswith("weight"):
                    p.uniform_(0.25, 2.0)
                elif name.endswith("bias"):
                    p.uniform_(-0.3, 0.3)

    def forward(self, idx):
        x = self.wte(idx)
        h = self.n1(x)
        x = x + self.a(h) * torch.sigmoid(self.b(h))
        x = x + self.c(self.n2(x))
        x = x + self.d(self.n3(x))
        h = self.n4(x)
        x = h + self.e(h)
        return self.lm_head(self.n5(x))


@pytest.fixture(scope="module")
def model():
    return Norms().eval()


@pytest.fixture(scope="module")
def canonical(model):
    g = lower(trace(model, S))
    g.meta.update(arch="custom", config={"sequence_len": S, "vocab_size": V})
    return canonicalize(g)


def _norms(g):
    return {n.name: n for n in g.nodes if n.op in ("rms_norm", "layer_norm")}


def test_folds_only_where_every_user_is_an_own_linear(canonical):
    before = canonical.copy()
    g = fold_norm_weights(canonical.copy(), "none")
    assert sorted(g.meta["folded_norm_weights"]) == ["n1.weight", "n2.weight"]
    assert "n1.weight" not in g.weights and "n2.weight" not in g.weights
    weighted = {n.name: len(n.inputs) for n in _norms(g).values()}
    assert sorted(weighted.values()) == [1, 1, 2, 2, 3]  # n1, n2 bare; n4, n5 weighted; n3 weight + bias
    ln = [n for n in _norms(g).values() if n.op == "layer_norm" and len(n.inputs) == 1]
    assert len(ln) == 1 and ln[0].attrs["weight"] is False and ln[0].attrs["bias"] is False
    w1 = before.weights["n1.weight"].data
    for lin in ("a.weight", "b.weight"):
        np.testing.assert_allclose(g.weights[lin].data, before.weights[lin].data * w1[None, :], rtol=1e-6)
    assert g.weights["wte.weight"].data is before.weights["wte.weight"].data  # tied lm_head: untouched
    assert len(g.nodes) == len(before.nodes)


def test_folded_graph_computes_the_same_logits(canonical):
    ids = np.random.default_rng(0).integers(0, V, 20).tolist()
    want = Session(canonical.copy()).forward(ids)
    got = Session(fold_norm_weights(canonical.copy(), "none")).forward(ids)
    m = metrics(got, want)
    assert m["rel"] <= 1e-5 and m["cosine"] >= 1 - 1e-9, m


def _compiled(model, quant):
    g = lower(trace(model, S))
    g.meta.update(arch="custom", config={"sequence_len": S, "vocab_size": V})
    return run_pipeline(g, quant)


def test_f32_pipeline_folds_and_matches_rq_and_the_norm_becomes_a_prologue(model):
    g, records = _compiled(model, "none")
    assert "2 norm weights folded" in next(r.detail for r in records if r.name == "fold_norm")
    # n1, weightless now, is the prologue of a and b (merged); a layer_norm has no prologue form
    assert sum(1 for n in g.nodes if n.op == "matmul" and n.attrs["prologue"]) == 1
    rq = Norms().eval()
    missing, unexpected = rq.load_state_dict(rq_state_dict(g), strict=False)
    assert (missing, unexpected) == (["lm_head.weight"], [])  # tied to wte.weight, which it holds
    assert torch.equal(rq.n1.weight, torch.ones(C))
    ids = np.random.default_rng(1).integers(0, V, 24).tolist()
    m = metrics(Session(g).forward(ids), _torch_logits(rq, ids))
    assert m["rel"] <= TOLERANCES["logits_rel_vs_rq"] and m["cosine"] >= TOLERANCES["logits_cosine_vs_rq"], m
    m = metrics(Session(g).forward(ids), _torch_logits(model, ids))  # at --quant none R_q is the model
    assert m["rel"] <= 1e-5, m


def test_int8_pipeline_keeps_norm_weights(model):
    g, records = _compiled(model, "int8")
    assert "folded_norm_weights" not in g.meta
    assert "0 norm weights folded" in next(r.detail for r in records if r.name == "fold_norm")
    assert {"n1.weight", "n2.weight"} <= set(g.weights)
