"""A Llama written the way Meta's reference `llama/model.py` (and the many models copied from it)
writes one: rotary embeddings as complex numbers (`torch.polar` tables in a buffer,
`view_as_complex(x) * freqs_cis`, `view_as_real`), grouped-query heads repeated by expand + reshape,
attention written out with a `triu` mask of -inf, an RMSNorm class and a SwiGLU feed-forward. It
compiles unmodified and every backend matches R_q as test_custom_gpt's model does."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monologue_compile.frontend.trace import trace
from monologue_compile.interpreter import Session
from monologue_compile.lower import lower
from monologue_compile.parity import rq_state_dict
from monologue_compile.passes import run_pipeline
from test_custom_gpt import BACKENDS, PROMPT, check, session

V, DIM, N_HEADS, N_KV_HEADS, S = 96, 48, 4, 2, 160
HEAD_DIM = DIM // N_HEADS


def precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    t = torch.arange(end, device=freqs.device)
    freqs = torch.outer(t, freqs).float()
    return torch.polar(torch.ones_like(freqs), freqs)  # complex64


def reshape_for_broadcast(freqs_cis: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    shape = [d if i == 1 or i == x.ndim - 1 else 1 for i, d in enumerate(x.shape)]
    return freqs_cis.view(*shape)


def apply_rotary_emb(xq, xk, freqs_cis):
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    freqs_cis = reshape_for_broadcast(freqs_cis, xq_)
    xq_out = torch.view_as_real(xq_ * freqs_cis).flatten(3)
    xk_out = torch.view_as_real(xk_ * freqs_cis).flatten(3)
    return xq_out.type_as(xq), xk_out.type_as(xk)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    bs, slen, n_kv_heads, head_dim = x.shape
    return x[:, :, :, None, :].expand(bs, slen, n_kv_heads, n_rep, head_dim).reshape(bs, slen, n_kv_heads * n_rep, head_dim)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim).uniform_(0.5, 1.5))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.wq = nn.Linear(DIM, N_HEADS * HEAD_DIM, bias=False)
        self.wk = nn.Linear(DIM, N_KV_HEADS * HEAD_DIM, bias=False)
        self.wv = nn.Linear(DIM, N_KV_HEADS * HEAD_DIM, bias=False)
        self.wo = nn.Linear(N_HEADS * HEAD_DIM, DIM, bias=False)

    def forward(self, x, freqs_cis, mask):
        bsz, seqlen, _ = x.shape
        xq = self.wq(x).view(bsz, seqlen, N_HEADS, HEAD_DIM)
        xk = self.wk(x).view(bsz, seqlen, N_KV_HEADS, HEAD_DIM)
        xv = self.wv(x).view(bsz, seqlen, N_KV_HEADS, HEAD_DIM)
        xq, xk = apply_rotary_emb(xq, xk, freqs_cis)
        keys, values = repeat_kv(xk, N_HEADS // N_KV_HEADS), repeat_kv(xv, N_HEADS // N_KV_HEADS)
        xq, keys, values = xq.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2)
        scores = torch.matmul(xq, keys.transpose(2, 3)) / math.sqrt(HEAD_DIM)
        scores = F.softmax((scores + mask).float(), dim=-1).type_as(xq)
        output = torch.matmul(scores, values).transpose(1, 2).contiguous().view(bsz, seqlen, -1)
        return self.wo(output)


class FeedForward(nn.Module):
    def __init__(self, hidden: int = 2 * DIM):
        super().__init__()
        self.w1, self.w2, self.w3 = nn.Linear(DIM, hidden, bias=False), nn.Linear(hidden, DIM, bias=False), nn.Linear(DIM, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention, self.feed_forward = Attention(), FeedForward()
        self.attention_norm, self.ffn_norm = RMSNorm(DIM), RMSNorm(DIM)

    def forward(self, x, freqs_cis, mask):
        h = x + self.attention(self.attention_norm(x), freqs_cis, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.tok_embeddings = nn.Embedding(V, DIM)
        self.layers = nn.ModuleList([TransformerBlock() for _ in range(2)])
        self.norm = RMSNorm(DIM)
        self.output = nn.Linear(DIM, V, bias=False)
        self.register_buffer("freqs_cis", precompute_freqs_cis(HEAD_DIM, S * 2), persistent=False)

    def forward(self, tokens):
        seqlen = tokens.shape[1]
        h = self.tok_embeddings(tokens)
        freqs_cis = self.freqs_cis[:seqlen]
        mask = torch.full((seqlen, seqlen), float("-inf"), device=tokens.device)
        mask = torch.triu(mask, diagonal=1)
        for layer in self.layers:
            h = layer(h, freqs_cis, mask)
        return self.output(self.norm(h)).float()


@pytest.fixture(scope="module")
def compiled():
    g = lower(trace(Transformer().eval(), S))
    g.meta.update(arch="meta-llama", config={"sequence_len": S, "vocab_size": V})
    g, _ = run_pipeline(g, "int8")
    rq = Transformer().eval()
    rq.load_state_dict(rq_state_dict(g), strict=False)
    return g, rq


def test_complex_rotary_compiles_to_real_ops_and_matches_the_model():
    model = Transformer().eval()
    g = lower(trace(model, S))
    g.meta["config"] = {"sequence_len": S, "vocab_size": V}
    g, _ = run_pipeline(g, "none")
    assert sum(1 for n in g.nodes if n.op == "attention") == 2  # the triu(-inf) mask proven causal
    x = np.random.default_rng(1).integers(0, V, PROMPT)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    s = Session(g)
    parts = np.concatenate([s.forward(x[:40]), s.forward(x[40:41]), s.forward(x[41:])])
    assert np.abs(Session(g).forward(x) - ref).max() / np.abs(ref).max() <= 1e-5
    assert np.abs(parts - ref).max() / np.abs(ref).max() <= 1e-5  # positions carried across calls


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_matches_rq(compiled, backend, tmp_path):
    g, rq = compiled
    s = session(g, backend, tmp_path)
    check(s.forward, s.reset, rq, V)
