"""nanochat's later architectures (Dec 2025 to Mar 2026) as one reference module, for tracing.

`NanochatConfig` holds the constants a version differs in (the frontend's `detect` reads them from a
checkpoint's keys and shapes, ../shared/NANOCHAT.md); `NanochatGPT` is the forward those versions
compute, written so torch.export yields ops the compiler knows: sliding windows through
`monologue::causal_attention`, the smear as a one-step token shift (`cat([zeros, x[:, :-1]], 1)`),
everything else per token.

    x = norm(wte(idx)); [smear]; x0 = x
    per layer i: x = resid_lambdas[i] * x + x0_lambdas[i] * x0
                 x = x + attn(norm(x), ve_i); x = x + mlp(norm(x))     (after layer n_layer//2: keep x)
    [x = x - backout_lambda * kept]; logits = softcap(lm_head(norm(x))[..., :vocab_size])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops  # noqa: F401  (registers monologue::causal_attention)
from .gpt import apply_rotary_emb, norm, rotary_tables


@dataclass
class NanochatConfig:
    sequence_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int
    padded_vocab: int = 0  # rows of wte / lm_head (Dec 2025 pads to a multiple of 64)
    window_pattern: str = "L"  # tiled over layers, the last layer always L
    short_window: int = 0  # keys an S layer sees before the query's own (0: sequence_len // 2)
    lambdas: bool = False  # resid_lambdas / x0_lambdas
    ve_layers: list = field(default_factory=list)  # layers with value embeddings
    ve_gate_channels: int = 32
    ve_gate_scale: float = 2.0
    qk_scale: float = 1.0
    rope_theta: float = 10000.0
    rope_bf16: bool = False  # cos/sin rounded to bf16 (nanochat before Mar 4 2026)
    smear_channels: int = 0
    backout: bool = False
    softcap: float = 15.0
    version: str = ""  # the nanochat version the keys show (NANOCHAT.md), for the reports

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def windows(self) -> list[int]:
        """Keys each layer's query sees, its own included (0: all)."""
        pat = self.window_pattern.upper()
        left = self.short_window or self.sequence_len // 2
        w = [left + 1 if pat[i % len(pat)] == "S" and left + 1 < self.sequence_len else 0
             for i in range(self.n_layer)]
        w[-1] = 0
        return w

    def to_dict(self) -> dict:
        return asdict(self)



class Attention(nn.Module):
    def __init__(self, c: NanochatConfig, layer: int, window: int):
        super().__init__()
        C, D = c.n_embd, c.head_dim
        self.c, self.window = c, window
        self.c_q = nn.Linear(C, c.n_head * D, bias=False)
        self.c_k = nn.Linear(C, c.n_kv_head * D, bias=False)
        self.c_v = nn.Linear(C, c.n_kv_head * D, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        self.ve_gate = nn.Linear(c.ve_gate_channels, c.n_kv_head, bias=False) if layer in c.ve_layers else None

    def forward(self, x, ve, cos, sin):
        B, T, _ = x.size()
        c = self.c
        q = self.c_q(x).view(B, T, c.n_head, c.head_dim)
        k = self.c_k(x).view(B, T, c.n_kv_head, c.head_dim)
        v = self.c_v(x).view(B, T, c.n_kv_head, c.head_dim)
        if ve is not None:
            gate = c.ve_gate_scale * torch.sigmoid(self.ve_gate(x[..., : c.ve_gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, c.n_kv_head, c.head_dim)
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)
        if c.qk_scale != 1.0:
            q, k = q * c.qk_scale, k * c.qk_scale
        y = torch.ops.monologue.causal_attention(q, k, v, self.window)
        return self.c_proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, c: NanochatConfig):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, c: NanochatConfig, layer: int, window: int):
        super().__init__()
        self.attn = Attention(c, layer, window)
        self.mlp = MLP(c)

    def forward(self, x, ve, cos, sin):
        x = x + self.attn(norm(x), ve, cos, sin)
        return x + self.mlp(norm(x))


class NanochatGPT(nn.Module):
    def __init__(self, c: NanochatConfig):
        super().__init__()
        self.config = c
        V = c.padded_vocab or c.vocab_size
        kv_dim = c.n_kv_head * c.head_dim
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(V, c.n_embd),
            "h": nn.ModuleList([Block(c, i, w) for i, w in enumerate(c.windows())]),
        })
        self.lm_head = nn.Linear(c.n_embd, V, bias=False)
        if c.lambdas:
            self.resid_lambdas = nn.Parameter(torch.ones(c.n_layer))
            self.x0_lambdas = nn.Parameter(torch.zeros(c.n_layer))
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, kv_dim) for i in c.ve_layers})
        if c.smear_channels:
            self.smear_gate = nn.Linear(c.smear_channels, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        if c.backout:
            self.backout_lambda = nn.Parameter(torch.zeros(1))
        cos, sin = rotary_tables(c.sequence_len, c.head_dim, c.rope_theta, c.rope_bf16)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, idx):
        c = self.config
        B, T = idx.size()
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = norm(self.transformer.wte(idx))
        if c.smear_channels:
            prev = torch.cat([x.new_zeros(B, 1, c.n_embd), x[:, :-1]], dim=1)  # one-step token shift
            x = x + self.smear_lambda * torch.sigmoid(self.smear_gate(x[..., : c.smear_channels])) * prev
        x0 = x
        kept = None
        for i, block in enumerate(self.transformer.h):
            if c.lambdas:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin)
            if c.backout and i == c.n_layer // 2:
                kept = x
        if kept is not None:
            x = x - self.backout_lambda * kept
        logits = self.lm_head(norm(x))[..., : c.vocab_size].float()
        return c.softcap * torch.tanh(logits / c.softcap)

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new_tokens: int, temperature: float = 0.0, **_) -> list[int]:
        """Greedy reference decoding by full recompute (windows and smear need no cache code here)."""
        tokens = list(prompt)
        out = []
        for _ in range(min(max_new_tokens, self.config.sequence_len - len(prompt))):
            t = int(self(torch.tensor([tokens]))[0, -1].argmax())
            out.append(t)
            tokens.append(t)
        return out

