"""The GPT that Monologue trains and compiles: nanochat's October 2025 architecture.

    x = norm(wte(idx))
    per block: x = x + attn(norm(x)); x = x + mlp(norm(x))
    logits = softcap * tanh(lm_head(norm(x)) / softcap)

`norm` is a weightless RMSNorm; attention uses rotary embeddings (half-split, nanochat's sign
convention: a rotation by -theta), then QK-norm, causal SDPA and grouped-query heads. Parameter
names follow nanochat (`transformer.wte`, `transformer.h.{i}.attn.c_q`, ..., `lm_head`), so a
state dict from here is a nanochat state dict.

The plain `forward(idx)` is what the compiler traces; the optional `kv_cache` argument exists only
for the reference `generate`, and the compiler never needs it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {
    "relu2": lambda x: F.relu(x).square(),
    "gelu": F.gelu,
    "silu": F.silu,
}


@dataclass
class GPTConfig:
    sequence_len: int = 1024
    vocab_size: int = 65536
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6  # any divisor of n_head; 1 is multi-query attention
    n_embd: int = 768
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * n_embd
    activation: str = "relu2"  # relu2 | gelu | silu
    softcap: float = 15.0  # tanh logit softcap; 0 turns it off
    rope_theta: float = 10000.0
    rope_bf16: bool = False  # cos/sin rounded to bf16, as nanochat's own forward before Mar 4 2026
    qk_norm: bool = True
    tie_embeddings: bool = False

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head_dim={self.n_embd // self.n_head} must be even for rotary embeddings")
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if self.softcap < 0:
            raise ValueError(f"softcap={self.softcap} must be 0 (off) or positive")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_ratio * self.n_embd)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """Build a config from a dict, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def norm(x: torch.Tensor) -> torch.Tensor:
    # eps=None means torch.finfo(x.dtype).eps, nanochat's choice.
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, T, H, D) by the half-split layout: y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos."""
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]
    y1 = x1 * cos + x2 * sin
    y2 = x1 * (-sin) + x2 * cos
    return torch.cat([y1, y2], 3)


def rotary_tables(seq_len: int, head_dim: int, base: float, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (1, seq_len, 1, head_dim/2), float32; `bf16`: their values rounded to
    bf16 (nanochat kept the buffers in bf16 until Mar 2026; an fp32 activation times a bf16 table
    computes in fp32, so rounded fp32 tables give the same numbers)."""
    channel_range = torch.arange(0, head_dim, 2, dtype=torch.float32)
    inv_freq = 1.0 / (base ** (channel_range / head_dim))
    t = torch.arange(seq_len, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    cos, sin = freqs.cos(), freqs.sin()
    if bf16:
        cos, sin = cos.bfloat16().float(), sin.bfloat16().float()
    return cos[None, :, None, :], sin[None, :, None, :]


class KVCache:
    """Keys and values of every layer for a batch, filled left to right (reference decoding only)."""

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        shape = (config.n_layer, batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, Hkv, T, D) keys/values at the current position; return everything so far."""
        t = k.size(2)
        if self.pos + t > self.max_len:
            raise ValueError(f"KV cache overflow: {self.pos + t} > {self.max_len}")
        self.k[layer, :, :, self.pos : self.pos + t] = k
        self.v[layer, :, :, self.pos : self.pos + t] = v
        end = self.pos + t
        if layer == self.k.size(0) - 1:
            self.pos = end
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        self.qk_norm = config.qk_norm
        C, D = config.n_embd, config.head_dim
        self.c_q = nn.Linear(C, self.n_head * D, bias=False)
        self.c_k = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.c_v = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)

    def forward(self, x, cos, sin, kv_cache: KVCache | None = None):
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        if self.qk_norm:
            q, k = norm(q), norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        enable_gqa = self.n_head != self.n_kv_head
        if kv_cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=enable_gqa)
        else:
            start = kv_cache.pos
            k, v = kv_cache.update(self.layer_idx, k, v)
            if T == 1:
                y = F.scaled_dot_product_attention(q, k, v, enable_gqa=enable_gqa)
            else:
                # Query i sits at absolute position start + i and sees keys 0..start + i.
                keys = torch.arange(k.size(2), device=x.device)
                queries = torch.arange(start, start + T, device=x.device)
                mask = keys[None, :] <= queries[:, None]
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=enable_gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)
        self.act = ACTIVATIONS[config.activation]

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, kv_cache=None):
        x = x + self.attn(norm(x), cos, sin, kv_cache)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        # Rotary tables are buffers, not parameters: they are rebuilt, never saved (as in nanochat).
        cos, sin = rotary_tables(config.sequence_len, config.head_dim, config.rope_theta, config.rope_bf16)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def init_weights(self, zero_init_outputs: bool = True):
        """nanochat's initialization; `zero_init_outputs` zeroes lm_head and the residual projections."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                fan_out, fan_in = m.weight.shape
                std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
                nn.init.normal_(m.weight, mean=0.0, std=std)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=1.0)
        if zero_init_outputs:
            if not self.config.tie_embeddings:
                nn.init.zeros_(self.lm_head.weight)
            for block in self.transformer.h:
                nn.init.zeros_(block.attn.c_proj.weight)
                nn.init.zeros_(block.mlp.c_proj.weight)
        return self

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None):
        """Logits (B, T, V) in float32, or the mean cross-entropy when targets are given."""
        B, T = idx.size()
        start = 0 if kv_cache is None else kv_cache.pos
        cos, sin = self.cos[:, start : start + T], self.sin[:, start : start + T]
        x = norm(self.transformer.wte(idx))
        for block in self.transformer.h:
            x = block(x, cos, sin, kv_cache)
        x = norm(x)
        logits = self.lm_head(x).float()
        if self.config.softcap:
            logits = self.config.softcap * torch.tanh(logits / self.config.softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    @torch.no_grad()
    def generate(
        self,
        prompt: list[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        stop_tokens: tuple[int, ...] = (),
        use_cache: bool = True,
    ) -> list[int]:
        """Sample up to max_new_tokens after `prompt`; stops after emitting a stop token (kept).

        temperature 0 is greedy. With use_cache=False every step recomputes the whole sequence,
        which must give the same tokens as the cached path.
        """
        device = self.cos.device
        limit = self.config.sequence_len
        if len(prompt) >= limit:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit sequence_len={limit}")
        max_new_tokens = min(max_new_tokens, limit - len(prompt))
        generator = torch.Generator(device=device).manual_seed(seed)
        tokens = list(prompt)
        cache = KVCache(self.config, 1, len(prompt) + max_new_tokens, device=device) if use_cache else None
        next_input = torch.tensor([prompt], dtype=torch.long, device=device)
        out: list[int] = []
        for _ in range(max_new_tokens):
            if use_cache:
                logits = self(next_input, kv_cache=cache)[0, -1]
            else:
                logits = self(torch.tensor([tokens], dtype=torch.long, device=device))[0, -1]
            token = sample_next(logits, temperature, top_k, top_p, generator)
            out.append(token)
            tokens.append(token)
            if token in stop_tokens:
                break
            next_input = torch.tensor([[token]], dtype=torch.long, device=device)
        return out


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator) -> int:
    """One token id from a (V,) logit vector: greedy at temperature 0, else top-k/top-p sampling."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already cover top_p; the first always stays.
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
