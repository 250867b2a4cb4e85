"""A GPT written here, not nanochat's: LayerNorm with weight and bias, GELU and SwiGLU MLPs, a
written-out weighted RMSNorm (plain `* w` and `* (1 + w)`), attention computed in (B, H, T, D) with
SDPA. It compiles to every backend (interpreter, wgpu-py in both plan profiles, Rust native and wasm)
and each matches R_q: logits within parity.py's tolerances after a prefill longer than one chunk, and
64 greedy tokens identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monologue_compile.frontend.trace import trace
from test_conformance import native_model, wasm_model
from monologue_compile.interpreter import Session
from monologue_compile.lower import lower
from monologue_compile.parity import TOLERANCES, _torch_logits, metrics, rq_state_dict
from monologue_compile.passes import run_pipeline

V, C, H, S, PROMPT = 96, 48, 4, 160, 72


class WrittenRMSNorm(nn.Module):
    def __init__(self, one_plus: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(C).uniform_(-0.5, 0.5) if one_plus else torch.empty(C).uniform_(0.5, 1.5))
        self.one_plus = one_plus

    def forward(self, x):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return y * (1 + self.weight) if self.one_plus else y * self.weight


class Block(nn.Module):
    def __init__(self, i: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C)
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C, bias=False)
        self.ln_2 = WrittenRMSNorm(one_plus=i % 2 == 1)
        self.swiglu = i % 2 == 0
        self.w1 = nn.Linear(C, 2 * C, bias=False)
        self.w2 = nn.Linear(2 * C, C, bias=False)
        if self.swiglu:
            self.w3 = nn.Linear(C, 2 * C, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        qkv = self.c_attn(self.ln_1(x))
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]  # (split/chunk: issue 15's lowering)
        q, k, v = (a.view(B, T, H, C // H).transpose(1, 2) for a in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        h = self.ln_2(x)
        h = F.silu(self.w1(h)) * self.w3(h) if self.swiglu else F.gelu(self.w1(h))
        return x + self.w2(h)


class CustomGPT(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.wte = nn.Embedding(V, C)
        self.h = nn.ModuleList([Block(i) for i in range(2)])
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith(("ln_1.weight", "ln_f.weight")):
                    p.uniform_(0.5, 1.5)
                elif name.endswith("bias"):
                    p.uniform_(-0.3, 0.3)

    def forward(self, idx):
        x = self.wte(idx)
        for b in self.h:
            x = b(x)
        return self.lm_head(self.ln_f(x))


@pytest.fixture(scope="module")
def compiled():
    model = CustomGPT().eval()
    g = lower(trace(model, S))
    g.meta.update(arch="custom", config={"sequence_len": S, "vocab_size": V})
    g, _ = run_pipeline(g, "int8")
    rq = CustomGPT().eval()
    rq.load_state_dict(rq_state_dict(g), strict=False)  # derived weights (1 + w) are not parameters
    return g, rq


def test_idioms_reach_the_fast_kernels(compiled):
    g, _ = compiled
    ops = [n.op for n in g.nodes]
    assert "mean" not in ops and ops.count("layer_norm") == 3  # ln_1 x 2, ln_f
    assert sum(1 for n in g.nodes if n.op == "rms_norm" and len(n.inputs) == 2) == 2  # w and (1 + w)
    assert all(n.attrs["layout"] == "BTHD" for n in g.nodes if n.op == "attention")  # transposes folded
    assert any(w.role == "derived" for w in g.weights.values())  # 1 + w folded at compile time


def check(forward, reset, rq, vocab=V):
    """Prefill PROMPT tokens (two chunks), then greedy decode: tokens and logits against R_q."""
    reset()
    prompt = np.random.default_rng(0).integers(0, vocab, PROMPT).tolist()
    rows = [np.asarray(forward(prompt))]
    ours = [int(np.argmax(rows[0][-1]))]
    while len(ours) < TOLERANCES["greedy_steps"]:
        rows.append(np.asarray(forward([ours[-1]])))
        ours.append(int(np.argmax(rows[-1][-1])))
    want = _torch_logits(rq, prompt + ours[:-1])
    m = metrics(np.concatenate([r.reshape(-1, vocab) for r in rows]), want)
    assert m["rel"] <= TOLERANCES["logits_rel_vs_rq"] and m["cosine"] >= TOLERANCES["logits_cosine_vs_rq"], m
    greedy = _torch_greedy(rq, prompt, TOLERANCES["greedy_steps"])
    assert ours == greedy


def _torch_greedy(model, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


BACKENDS = ["interpreter", "wgpu", "wgpu-cpu", "native", "wasm"]


def session(g, backend: str, tmp_path):
    """g on one of BACKENDS (wgpu-py in the default or the cpu plan profile): forward and reset."""
    if backend == "interpreter":
        return Session(g)
    if backend.startswith("wgpu"):
        from wgsl_harness import device_or_skip

        from monologue_compile.backends.wgpu_executor import WgpuSession

        device_or_skip()
        return WgpuSession.from_graph(g, profile="cpu" if backend == "wgpu-cpu" else None)
    return (native_model if backend == "native" else wasm_model)(g, tmp_path)


def test_interpreter_matches_rq(compiled, tmp_path):
    g, rq = compiled
    s = session(g, "interpreter", tmp_path)
    check(s.forward, s.reset, rq)


@pytest.mark.parametrize("profile", [None, "cpu"], ids=["default", "cpu_profile"])
def test_wgpu_matches_rq(compiled, profile, tmp_path):
    g, rq = compiled
    s = session(g, "wgpu-cpu" if profile else "wgpu", tmp_path)
    check(s.forward, s.reset, rq)


def test_rust_native_matches_rq(compiled, tmp_path):
    g, rq = compiled
    m = session(g, "native", tmp_path)
    check(m.forward, m.reset, rq)


def test_wasm_matches_rq(compiled, tmp_path):
    g, rq = compiled
    m = session(g, "wasm", tmp_path)
    check(m.forward, m.reset, rq)
