"""Fuzz the frontend and the lowering with the ways people spell a GPT block: random per-token
programs in a nanoGPT block's MLP (activations, norms, reductions, top-k, axis moves and views), and
random spellings of causal self-attention (fused or separate projections, head splits, QK norms,
rotary embeddings, where the scale goes, score products, masks, softmaxes, head merges, repeated KV
heads). Each model is traced,
lowered and run by the interpreter (no quantization) against PyTorch's forward, whole and chunked.

    python benchmarks/fuzz_spellings.py [--kind mlp,attention] [--count 200] [--seed 0]

Prints one JSON line per kind: counts of `ok`, `refused` (a one-line MonologueError naming a construct
not covered; the commonest messages are listed), `CRASH` (any other exception while compiling),
`RUN_CRASH` (the interpreter failed) and `MISMATCH` (logits off PyTorch's by more than 1e-4 of the
largest, or chunked decode off one shot by more than 1e-5), with the first of each bug's spelling.
Exits 1 on any bug. What it found is in the stop-41 note: bmm over folded heads, movedim/swapaxes/mT,
amin, log1p and others, now covered.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import test_hf_models as M  # noqa: E402

from monologue_compile.errors import MonologueError  # noqa: E402
from monologue_compile.interpreter import Session  # noqa: E402

# --- per-token programs --------------------------------------------------------------------------

UN = {
    "gelu": lambda x: F.gelu(x), "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu, "relu": F.relu,
    "relu6": F.relu6, "leaky": lambda x: F.leaky_relu(x, 0.1), "elu": F.elu, "softplus": F.softplus, "mish": F.mish,
    "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "erf": torch.erf, "abs": torch.abs, "neg": torch.neg, "exp": lambda x: torch.exp(x.clamp(max=4)),
    "log1p": lambda x: torch.log1p(x.abs()), "sqrt": lambda x: torch.sqrt(x.abs() + 1e-3),
    "rsqrt": lambda x: torch.rsqrt(x * x + 1), "sq": lambda x: x.pow(2), "cube": lambda x: x ** 3,
    "clamp": lambda x: torch.clamp(x, -1, 1), "clampmin": lambda x: x.clamp(min=0), "sin": torch.sin, "cos": torch.cos,
    "recip": lambda x: torch.reciprocal(x * x + 1), "normalize": lambda x: F.normalize(x, dim=-1),
    "center": lambda x: x - x.mean(-1, keepdim=True), "softmax": lambda x: F.softmax(x, -1),
    "logsoftmax": lambda x: F.log_softmax(x, -1), "swish": lambda x: x * x.sigmoid(),
    "lse": lambda x: x - torch.logsumexp(x, -1, keepdim=True), "amax": lambda x: x - x.amax(-1, keepdim=True),
    "amin": lambda x: x * x.amin(-1, keepdim=True), "lrelu_where": lambda x: torch.where(x > 0, x, 0.1 * x),
    "ln": lambda x: F.layer_norm(x, (x.shape[-1],)), "rms": lambda x: F.rms_norm(x, (x.shape[-1],)),
    "cumsum": lambda x: x.cumsum(-1) * 0.1, "flip": lambda x: x.flip(-1), "roll": lambda x: torch.roll(x, 1, -1),
    "pairswap": lambda x: x.view(*x.shape[:-1], 2, x.shape[-1] // 2).transpose(-1, -2).reshape(x.shape),
    "rotate": lambda x: torch.cat([x[..., x.shape[-1] // 2:], -x[..., : x.shape[-1] // 2]], -1),
    "evens": lambda x: x[..., ::2].repeat_interleave(2, -1), "std": lambda x: x / (x.std(-1, keepdim=True) + 1e-3),
    "var": lambda x: x * x.var(-1, keepdim=True, unbiased=False), "sum": lambda x: x - 0.05 * x.sum(-1, keepdim=True),
    "topk": lambda x: torch.zeros_like(x).scatter(-1, x.topk(8, -1).indices, x.topk(8, -1).values),
    "sign": lambda x: torch.sign(x) * x * x, "square": torch.square, "expm1": lambda x: torch.expm1(x.clamp(max=2)),
    "atan": torch.atan, "softsign": F.softsign, "tanhshrink": F.tanhshrink, "logsigmoid": F.logsigmoid,
    "selu": F.selu, "celu": F.celu, "gelu_mul": lambda x: F.gelu(x) * x, "hardtanh": F.hardtanh,
    "frac_pow": lambda x: x.abs().pow(1.5),
    "max_pair": lambda x: x.view(*x.shape[:-1], -1, 2).amax(-1).repeat_interleave(2, -1),
    "mean_pool": lambda x: x.view(*x.shape[:-1], -1, 4).mean(-1, keepdim=True).expand(
        *x.shape[:-1], x.shape[-1] // 4, 4).reshape(x.shape),
    "norm2": lambda x: x / x.norm(dim=-1, keepdim=True).clamp(min=1e-3), "trunc_div": lambda x: x / 3.0,
    "glu": lambda x: torch.cat([F.glu(x, -1), F.glu(x, -1)], -1), "softmin": lambda x: F.softmin(x, -1),
    "addcmul": lambda x: torch.addcmul(x, x, x, value=0.5), "lerp": lambda x: torch.lerp(x, x.sigmoid(), 0.3),
    "baddbmm_like": lambda x: x + x.unsqueeze(-1).mul(x.unsqueeze(-2)).sum(-1) * 0.01,
    "einsum_sq": lambda x: torch.einsum("btc,btc->bt", x, x).unsqueeze(-1) * 0.01 + x,
    "matmul_self": lambda x: (x.unsqueeze(-2) @ x.unsqueeze(-1)).squeeze(-1) * 0.01 + x,
}
BIN = {
    "add": torch.add, "mul": torch.mul, "sub": torch.sub, "div": lambda a, b: a / (b.abs() + 1),
    "max": torch.maximum, "min": torch.minimum, "glu": lambda a, b: a * torch.sigmoid(b),
    "where": lambda a, b: torch.where(a > b, a, b), "lerp": lambda a, b: torch.lerp(a, b, 0.3),
    "hypot": lambda a, b: torch.sqrt(a * a + b * b + 1e-3), "atan2": torch.atan2,
}


def program(rng, depth):
    """A random expression in x, at most `depth` deep: ("fn", operand) of UN, ("fn", a, b) of BIN."""
    if depth == 0 or rng.random() < 0.2:
        return "x"
    if rng.random() < 0.7:
        return (rng.choice(list(UN)), program(rng, depth - 1))
    return (rng.choice(list(BIN)), program(rng, depth - 1), program(rng, depth - 1))


def run(p, x):
    """Expression p evaluated on x."""
    if p == "x":
        return x
    if len(p) == 2:
        return UN[p[0]](run(p[1], x))
    return BIN[p[0]](run(p[1], x), run(p[2], x))


class MlpBlock(M.NanoBlock):
    """nanoGPT's block with a random per-token program between the MLP's two projections."""

    prog = "x"

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp_proj(run(self.prog, self.c_fc(self.ln_2(x))))


# --- attention spellings -------------------------------------------------------------------------

CHOICES = {
    "proj": ["fused_split", "fused_chunk", "fused_view_unbind", "separate"],
    "heads": ["view_transpose", "view_permute", "unflatten_movedim", "reshape_swapaxes", "view_transpose_contig"],
    "scale": ["scores", "q", "qk_sqrt", "sdpa_default", "sdpa_scale"],
    "scores": ["matmul_T", "torch_matmul", "einsum", "mT", "bmm"],
    "mask": ["tril_buffer", "triu_add", "where_bool", "sdpa_causal", "sdpa_bool_mask", "sdpa_float_mask", "finfo_min",
             "ones_tril_eq0", "arange_cmp"],
    "softmax": ["F", "torch", "method", "manual", "float_cast", "log_exp"],
    "merge": ["transpose_contig_view", "permute_reshape", "einsum_out", "transpose_flatten", "movedim_reshape"],
    "gqa": ["none", "repeat_interleave", "expand_reshape", "repeat_kv_cat"],
    "rope": ["none", "rotate_half", "interleaved", "complex"],
    "qk_norm": ["none", "rms", "layer"],
}


def rope(x, kind):
    """Rotary embedding of (B, H, T, D) x from its positions, in one of the ways people write it."""
    T, D = x.shape[2], x.shape[3]
    freqs = torch.outer(torch.arange(T, dtype=torch.float32), 1.0 / 10000 ** (torch.arange(0, D, 2).float() / D))
    if kind == "rotate_half":
        cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
        return x * cos + torch.cat([-x[..., D // 2:], x[..., : D // 2]], -1) * sin
    if kind == "interleaved":
        a, b = x[..., ::2], x[..., 1::2]
        return torch.stack([a * freqs.cos() - b * freqs.sin(), a * freqs.sin() + b * freqs.cos()], -1).flatten(-2)
    z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * torch.polar(torch.ones_like(freqs), freqs)
    return torch.view_as_real(z).flatten(-2)


class AttentionBlock(M.NanoBlock):
    """nanoGPT's block with its attention spelled by `pick`, one choice per row of CHOICES."""

    pick = {}

    def __init__(self, C, n_head, block_size):
        super().__init__(C, n_head, block_size)
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)
        self.kv_heads = n_head // 2
        hd = C // n_head
        self.k_small, self.v_small = nn.Linear(C, self.kv_heads * hd), nn.Linear(C, self.kv_heads * hd)

    def attn(self, x):
        p = self.pick
        B, T, C = x.size()
        H, D = self.n_head, C // self.n_head
        gqa = p["gqa"] != "none"
        if gqa:
            q, k, v = self.q_proj(x), self.k_small(x), self.v_small(x)
        elif p["proj"] == "fused_split":
            q, k, v = self.c_attn(x).split(C, dim=2)
        elif p["proj"] == "fused_chunk":
            q, k, v = self.c_attn(x).chunk(3, dim=-1)
        elif p["proj"] == "fused_view_unbind":
            q, k, v = self.c_attn(x).view(B, T, 3, C).unbind(2)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)

        def heads(t):
            h = t.shape[-1] // D
            s = p["heads"]
            if s == "view_transpose":
                return t.view(B, T, h, D).transpose(1, 2)
            if s == "view_permute":
                return t.view(B, T, h, D).permute(0, 2, 1, 3)
            if s == "unflatten_movedim":
                return t.unflatten(-1, (h, D)).movedim(2, 1)
            if s == "reshape_swapaxes":
                return t.reshape(B, T, h, D).swapaxes(1, 2)
            return t.view(B, T, h, D).transpose(1, 2).contiguous()

        q, k, v = heads(q), heads(k), heads(v)
        if p["qk_norm"] != "none":
            norm = F.rms_norm if p["qk_norm"] == "rms" else F.layer_norm
            q, k = norm(q, (D,)), norm(k, (D,))
        if p["rope"] != "none":
            q, k = rope(q, p["rope"]), rope(k, p["rope"])
        if gqa:
            rep = H // self.kv_heads
            if p["gqa"] == "repeat_interleave":
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            elif p["gqa"] == "expand_reshape":
                k = k[:, :, None].expand(B, self.kv_heads, rep, T, D).reshape(B, H, T, D)
                v = v[:, :, None].expand(B, self.kv_heads, rep, T, D).reshape(B, H, T, D)
            else:
                k = torch.cat([k[:, i:i + 1] for i in range(self.kv_heads) for _ in range(rep)], 1)
                v = torch.cat([v[:, i:i + 1] for i in range(self.kv_heads) for _ in range(rep)], 1)
        sc = 1.0 / math.sqrt(D)
        mask_kind = p["mask"]
        use_sdpa = mask_kind.startswith("sdpa") or p["scale"].startswith("sdpa")
        if use_sdpa:
            kw = {}
            if p["scale"] == "sdpa_scale":
                kw["scale"] = sc
            elif p["scale"] == "q":
                q = q * sc
                kw["scale"] = 1.0
            if mask_kind == "sdpa_bool_mask":
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(T, T, dtype=torch.bool).tril(), **kw)
            elif mask_kind == "sdpa_float_mask":
                m = torch.full((T, T), float("-inf")).triu(1)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=m, **kw)
            else:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **kw)
        else:
            if p["scale"] == "q":
                q = q * sc
            elif p["scale"] == "qk_sqrt":
                q, k = q * sc ** 0.5, k * sc ** 0.5
            s = p["scores"]
            if s == "matmul_T":
                att = q @ k.transpose(-2, -1)
            elif s == "torch_matmul":
                att = torch.matmul(q, k.transpose(2, 3))
            elif s == "einsum":
                att = torch.einsum("bhqd,bhkd->bhqk", q, k)
            elif s == "mT":
                att = q @ k.mT
            else:
                att = torch.bmm(q.reshape(B * H, T, D), k.reshape(B * H, T, D).transpose(1, 2)).view(B, H, T, T)
            if p["scale"] == "scores":
                att = att * sc
            if mask_kind == "tril_buffer":
                att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            elif mask_kind == "triu_add":
                att = att + torch.triu(torch.full((T, T), float("-inf")), diagonal=1)
            elif mask_kind == "where_bool":
                att = torch.where(torch.ones(T, T, dtype=torch.bool).tril(), att, torch.tensor(float("-inf")))
            elif mask_kind == "finfo_min":
                att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), torch.finfo(att.dtype).min)
            elif mask_kind == "ones_tril_eq0":
                att = att.masked_fill(torch.tril(torch.ones(T, T)) == 0, -1e9)
            else:
                i = torch.arange(T)
                att = att.masked_fill(i[None, :] > i[:, None], float("-inf"))
            f = p["softmax"]
            if f == "F":
                att = F.softmax(att, dim=-1)
            elif f == "torch":
                att = torch.softmax(att, -1)
            elif f == "method":
                att = att.softmax(-1)
            elif f == "manual":
                e = torch.exp(att - att.amax(-1, keepdim=True))
                att = e / e.sum(-1, keepdim=True)
            elif f == "float_cast":
                att = F.softmax(att.float(), dim=-1).type_as(q)
            else:
                att = torch.exp(F.log_softmax(att, -1))
            y = att @ v
        m = p["merge"]
        if m == "transpose_contig_view":
            y = y.transpose(1, 2).contiguous().view(B, T, C)
        elif m == "permute_reshape":
            y = y.permute(0, 2, 1, 3).reshape(B, T, C)
        elif m == "einsum_out":
            y = torch.einsum("bhtd->bthd", y).reshape(B, T, C)
        elif m == "transpose_flatten":
            y = y.transpose(1, 2).flatten(2)
        else:
            y = y.movedim(1, 2).reshape(B, T, -1)
        return self.c_proj(y)

def model_of(kind: str, rng: random.Random, i: int):
    """(the case's model, its spelling as JSON)."""
    if kind == "mlp":
        MlpBlock.prog = program(rng, rng.randint(1, 4))
        block, spelling = MlpBlock, MlpBlock.prog
    else:
        AttentionBlock.pick = {k: rng.choice(v) for k, v in CHOICES.items()}
        block, spelling = AttentionBlock, AttentionBlock.pick
    torch.manual_seed(i)
    return M.CausalLMLogits(M.randomized(M.NanoGPT(block=block), i), M.S), json.dumps(spelling)


def check(model) -> tuple[str, str]:
    """(outcome, message) of one model: compiled and run against PyTorch."""
    x = M.ids(20)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    if not np.isfinite(ref).all():
        return "skipped_nonfinite", ""
    try:
        g = M.compiled(model)
    except MonologueError as e:
        return "refused", str(e).split(" at fx node")[0][:120]
    except Exception as e:  # noqa: BLE001 - any other exception is the finding
        return "CRASH", f"{type(e).__name__}: {e}"[:300]
    try:
        whole = Session(g).forward(x)
        s = Session(g)
        parts = np.concatenate([s.forward(x[:7])] + [s.forward(x[j:j + 1]) for j in range(7, 20)])
    except Exception as e:  # noqa: BLE001
        return "RUN_CRASH", f"{type(e).__name__}: {e}"[:300]
    scale = np.abs(ref).max()
    err, chunked = np.abs(whole - ref).max() / scale, np.abs(parts - whole).max() / scale
    if err > 1e-4 or chunked > 1e-5:
        return "MISMATCH", f"logits {err:.1e}, chunked {chunked:.1e}"
    return "ok", ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="mlp,attention", help="comma-separated, of: mlp, attention")
    ap.add_argument("--count", type=int, default=200, help="models per kind")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    bugs = 0
    for kind in a.kind.split(","):
        if kind not in ("mlp", "attention"):
            raise SystemExit(f"error: --kind: no kind {kind!r} (mlp, attention)")
        rng = random.Random(a.seed)
        counts, refusals, first = collections.Counter(), collections.Counter(), {}
        for i in range(a.count):
            model, spelling = model_of(kind, rng, i)
            outcome, message = check(model)
            counts[outcome] += 1
            if outcome == "refused":
                refusals[message] += 1
            elif outcome not in ("ok", "skipped_nonfinite"):
                first.setdefault(outcome, {"spelling": spelling, "message": message})
        bugs += sum(counts[k] for k in ("CRASH", "RUN_CRASH", "MISMATCH"))
        print(json.dumps({"kind": kind, "seed": a.seed, "counts": dict(counts), "bugs": first,
                          "refused": dict(refusals.most_common(10))}))
    sys.exit(1 if bugs else 0)


if __name__ == "__main__":
    main()
