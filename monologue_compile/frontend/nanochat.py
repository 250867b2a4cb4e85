"""nanochat's later architectures (Dec 2025 to Mar 2026) as one reference module, for tracing.

A nanochat checkpoint stores only weights and the sizes; which version it is shows in its keys and
shapes (../shared/NANOCHAT.md). `detect` turns those into a `NanochatConfig`, and `NanochatGPT`
is the forward those versions compute, written so torch.export yields ops the compiler knows:
sliding windows through `monologue::causal_attention`, the smear as a one-step token shift
(`cat([zeros, x[:, :-1]], 1)`), everything else per token.

    x = norm(wte(idx)); [smear]; x0 = x
    per layer i: x = resid_lambdas[i] * x + x0_lambdas[i] * x0
                 x = x + attn(norm(x), ve_i); x = x + mlp(norm(x))     (after layer n_layer//2: keep x)
    [x = x - backout_lambda * kept]; logits = softcap(lm_head(norm(x))[..., :vocab_size])
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import MonologueError
from . import ops  # noqa: F401  (registers monologue::causal_attention)
from training.gpt import apply_rotary_emb, norm, rotary_tables


# S layers' left window (keys before the query's own) by version, from sequence_len
SHORT_WINDOW = {
    "half": lambda n: n // 2,  # Jan 2026, when windows came
    "third": lambda n: math.ceil(n / 3 / 128) * 128,  # Mar 9 2026
    "quarter": lambda n: math.ceil(n / 4 / 128) * 128,  # Mar 14 2026 and since
}

# Every key a nanochat state dict of a known version may hold; anything else is a variant this
# compiler does not know (the Jan 2026 "engram" bigram_lambdas, say) and is refused by name.
KNOWN_KEYS = re.compile(r"transformer\.wte\.weight|lm_head\.weight|resid_lambdas|x0_lambdas|smear_gate\.weight"
                        r"|smear_lambda|backout_lambda|value_embeds\.\d+\.weight"
                        r"|transformer\.h\.\d+\.(attn\.(c_q|c_k|c_v|c_proj|ve_gate)|mlp\.(c_fc|c_proj))\.weight")


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


def is_later(sd: dict, cfg: dict) -> bool:
    later = ("resid_lambdas", "x0_lambdas", "smear_gate.weight", "smear_lambda", "backout_lambda")
    padded = sd["transformer.wte.weight"].shape[0] != cfg.get("vocab_size")
    return (any(k in sd for k in later) or any(k.startswith("value_embeds.") for k in sd) or padded
            or bool(cfg.get("window_pattern", "L").upper().strip("L")))


def check_keys(sd: dict) -> None:
    """Refuse, by name, a key no known nanochat version has, and the gateless value-embedding variant."""
    for k in sd:
        if not KNOWN_KEYS.fullmatch(k):
            raise MonologueError(f"state dict key {k!r} belongs to no nanochat version this compiler knows "
                                 f"(a short-lived variant?); refusing to guess its meaning")
    for k in sd:
        if k.startswith("value_embeds."):
            gate = f"transformer.h.{k.split('.')[1]}.attn.ve_gate.weight"
            if gate not in sd:
                raise MonologueError(f"{k} has no {gate}: value embeddings without a gate (a Jan 2026 variant) "
                                     f"are not supported")
    for k in ("smear_gate.weight", *(k for k in sd if k.endswith("ve_gate.weight"))):
        if k in sd and sd[k].ndim != 2:
            raise MonologueError(f"{k} has shape {tuple(sd[k].shape)}; a gate is a 2-D weight")


def detect(sd: dict, cfg: dict) -> tuple[NanochatConfig, dict[str, str]]:
    """The version's constants from the state dict's keys and shapes plus meta's model_config, and
    the constants the checkpoint cannot show: {config key: what was assumed and how to say otherwise}."""
    try:
        c = NanochatConfig(**{k: cfg[k] for k in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head",
                                                  "n_embd")})
    except KeyError as e:
        raise MonologueError(f"nanochat model_config lacks {e.args[0]}") from None
    c.window_pattern = cfg.get("window_pattern", "L")
    if not isinstance(c.window_pattern, str) or not set(c.window_pattern.upper()) <= {"S", "L"}:
        raise MonologueError(f"window_pattern={c.window_pattern!r}: only S and L are known")
    check_keys(sd)
    c.padded_vocab = sd["transformer.wte.weight"].shape[0]
    c.lambdas = "resid_lambdas" in sd
    c.ve_layers = sorted(int(k.split(".")[1]) for k in sd if k.startswith("value_embeds."))
    if c.ve_layers:
        c.ve_gate_channels = sd[f"transformer.h.{c.ve_layers[0]}.attn.ve_gate.weight"].shape[1]
    c.smear_channels = sd["smear_gate.weight"].shape[1] if "smear_gate.weight" in sd else 0
    c.backout = "backout_lambda" in sd
    assumed = {}
    if c.smear_channels:
        c.version, window = "mar2026b", "quarter"
        c.ve_gate_scale, c.qk_scale, c.rope_theta = 3.0, 1.2, 100000.0
    elif c.ve_layers and c.ve_gate_channels == 12:
        c.version, window = "mar2026a", "third"
        c.ve_gate_scale, c.qk_scale, c.rope_theta = 3.0, 1.15, 100000.0
    else:
        c.version = "jan2026b" if c.ve_layers else "jan2026a" if c.lambdas else "dec2025"
        window, c.rope_bf16 = "half", True
        if c.ve_layers:  # the shape nanochat saved from Jan to Mar 9 2026: two constants changed inside it
            assumed["softcap"] = "15 (this shape had softcap 20 from Mar 2 to Mar 9 2026: --softcap 20)"
            assumed["rope_bf16"] = ("true (bf16 rotary tables until Mar 4 2026; a checkpoint from Mar 4-9: "
                                    "--set rope_bf16=false)")
    c.short_window = SHORT_WINDOW[window](c.sequence_len)
    return c, assumed


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

