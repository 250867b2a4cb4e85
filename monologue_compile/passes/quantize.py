"""Quantize: int8 symmetric weights with f32 scales (docs/formats.md has the byte layout).

Matmul weights are quantized per output row (`int8`) or per group of 64/128 along K
(`int8-g64`, `int8-g128`); embedding tables per row. A table used both ways (tied embeddings)
is quantized once, the matmul way, so both uses read the same bytes. Norm weights, position
tables and other small vectors stay f32. K is zero-padded to a multiple of 16 (and of the group),
so a kernel reads whole 16-byte vectors.
"""

from __future__ import annotations

import numpy as np

from ..errors import MonologueError
from ..ir import Graph, Weight

SCHEMES = {"none": None, "int8": 0, "int8-g64": 64, "int8-g128": 128}
K_ALIGN = 16


def quantize_array(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(q int8 (N, Kpad), scale f32 (N, G), group) for an f32 (N, K) matrix; group 0 = per row."""
    n, k = w.shape
    align = group if group else K_ALIGN
    kpad = -(-k // align) * align
    g = group if group else kpad
    wp = np.zeros((n, kpad), np.float32)
    wp[:, :k] = w
    blocks = wp.reshape(n, kpad // g, g)
    amax = np.abs(blocks).max(axis=2)
    # An all-zero row or group gets scale 1: q is 0 either way, and no 0/0 appears.
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.round(blocks / scale[:, :, None]), -127, 127).astype(np.int8)
    return q.reshape(n, kpad), scale, g


def quantize(g: Graph, scheme: str = "int8") -> Graph:
    if scheme not in SCHEMES:
        raise MonologueError(f"--quant {scheme}: unknown scheme; choose one of {', '.join(SCHEMES)}")
    g.meta["quant"] = scheme
    if SCHEMES[scheme] is None:
        return g
    group = SCHEMES[scheme]
    as_matmul = {n.inputs[1] for n in g.nodes if n.op in ("matmul", "linear")}
    as_table = {n.inputs[0] for n in g.nodes if n.op == "embedding"}
    for name in sorted(as_matmul | as_table):
        w = g.weights[name]
        if w.dtype != "f32" or len(w.shape) != 2:
            continue
        grp = group if name in as_matmul else 0
        q, scale, gsize = quantize_array(np.asarray(w.data, np.float32), grp)
        label = scheme if name in as_matmul else "int8"
        g.weights[name] = Weight(tuple(w.shape), "q8", {"q": q, "scale": scale},
                                 {"scheme": label, "group": gsize, "k_pad": q.shape[1], "groups": scale.shape[1]},
                                 w.role)
    return g
