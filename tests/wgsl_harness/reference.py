"""Numpy references with the exact semantics of each kernel family, and the int8 packer.

Sums and products in float64 from the same f32 inputs and int8 weights the kernels get, so a mismatch
is a kernel bug or f32 rounding (see tolerances.py); elementwise functions are the IR's own.
"""

from __future__ import annotations

import math

import numpy as np

from monologue_compile.elementwise import softcap_steps
from monologue_compile.interpreter import apply_step
from monologue_compile.wgsl.kernels import ACTIVATION_STEPS

EPS = 1.1920929e-07


def quantize(w: np.ndarray, group: int = 0):
    """Symmetric int8: per row (group=0) or per `group`-wide slice of K. Returns q (int8 [N, K]), scale."""
    N, K = w.shape
    if group:
        g = -(-K // group)  # = k_pad / group: the padded tail of the last group is zero
        wp = np.zeros((N, g * group), np.float64)
        wp[:, :K] = w
        amax = np.abs(wp.reshape(N, g, group)).max(axis=2)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.round(wp.reshape(N, g, group) / scale[..., None]), -127, 127).reshape(N, -1)[:, :K]
    else:
        amax = np.abs(w).max(axis=1)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.round(w / scale[:, None]), -127, 127)
    return q.astype(np.int8), scale


def dequantize(q: np.ndarray, scale: np.ndarray, group: int = 0) -> np.ndarray:
    q = q.astype(np.float64)
    if not group:
        return q * scale[:, None].astype(np.float64)
    idx = np.arange(q.shape[1]) // group
    return q * scale.astype(np.float64)[:, idx]


def pack_int8(q: np.ndarray, group: int = 0) -> np.ndarray:
    """[N, K] int8 -> [N, k_pad / 4] u32 (docs/formats.md): K zero-padded to a multiple of 16 and of
    the group, byte i of word j = q[4j + i]."""
    N, K = q.shape
    align = math.lcm(16, group) if group else 16
    Kp = -(-K // align) * align
    qp = np.zeros((N, Kp), np.int8)
    qp[:, :K] = q
    return qp.view(np.uint8).reshape(N, Kp // 4, 4).copy().view("<u4").reshape(N, Kp // 4)


def rmsnorm(x: np.ndarray, eps: float = EPS) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)


def layernorm(x, weight=None, bias=None, eps: float = 1e-5):
    x = x.astype(np.float64)
    mu = x.mean(axis=-1, keepdims=True)
    y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _steps(v, steps):
    # The epilogue functions come from their one definition (monologue_compile/elementwise.py), in
    # f32 as the kernels compute them; the rest of this file states the kernels' data movement.
    v = np.asarray(v, np.float32)
    for st in steps:
        v = apply_step(v, st, [])
    return v


def activation(v: np.ndarray, act: str) -> np.ndarray:
    return _steps(v, ACTIVATION_STEPS[act])


def softcap(v, cap):
    return _steps(v, softcap_steps(cap)) if cap else v


def linear(x, q, scale, group=0, norm=False, bias=None, act="none", cap=0.0, residual=None, nw=None):
    """The int8 linear with its fusions: residual + softcap(act(dequant(W) @ (norm(x) * nw) + bias))."""
    x = rmsnorm(x) if norm else x.astype(np.float64)
    x = x * nw if nw is not None else x
    y = x @ dequantize(q, scale, group).T
    if bias is not None:
        y = y + bias
    y = softcap(activation(y, act), cap)
    return y + residual if residual is not None else y


def rope(x, cos, sin, pos):
    """x [T, H, D] at positions pos..pos+T-1; cos/sin tables [max_seq, D/2]; nanochat half-split."""
    T, H, D = x.shape
    c = cos[pos : pos + T, None, :].astype(np.float64)
    s = sin[pos : pos + T, None, :].astype(np.float64)
    x1, x2 = x[..., : D // 2].astype(np.float64), x[..., D // 2 :].astype(np.float64)
    return np.concatenate([x1 * c + x2 * s, -x1 * s + x2 * c], axis=-1)


def rope_tables(max_seq, D, base=10000.0):
    inv = 1.0 / base ** (np.arange(0, D, 2, dtype=np.float64) / D)
    f = np.outer(np.arange(max_seq), inv)
    return np.cos(f).astype(np.float32), np.sin(f).astype(np.float32)


def attention(q, kc, vc, pos, n_kv_head, window_left=None, scale=None, softcap=None, alibi=None, sinks=None):
    """q [T, H, D] at positions pos..pos+T-1 over caches [S, Hkv, D] holding positions 0..pos+T-1.

    Query at position p sees keys j with j <= p and (window) j >= p - window_left; a softcap c makes
    each score s c * tanh(s / c), then ALiBi adds alibi[h] * (j - p); sinks[h] is one more logit in
    head h's softmax, of no value.
    """
    T, H, D = q.shape
    scale = 1 / math.sqrt(D) if scale is None else scale
    out = np.zeros((T, H, D))
    g = H // n_kv_head
    for t in range(T):
        p = pos + t
        lo = max(0, p - window_left) if window_left is not None else 0
        for h in range(H):
            k = kc[lo : p + 1, h // g].astype(np.float64)
            v = vc[lo : p + 1, h // g].astype(np.float64)
            s = k @ q[t, h].astype(np.float64) * scale
            s = softcap * np.tanh(s / softcap) if softcap else s
            s = s + alibi[h] * (np.arange(lo, p + 1) - p) if alibi else s
            sink = sinks[h] if sinks else -np.inf
            m = max(s.max(), sink)
            e = np.exp(s - m)
            out[t, h] = e @ v / (e.sum() + np.exp(sink - m))
    return out
