"""Quantize: int8 or int4 symmetric weights with f32 scales (docs/formats.md has the byte layout).

Matmul weights are quantized per output row (`int8`), per group of 64/128 along K (`int8-g64`,
`int8-g128`), or to 4 bits per group of 32/64/128 (`int4-g32`, `int4-g64`, `int4-g128`);
embedding tables per row, in int8. A table used both ways (tied embeddings) is quantized once, the
matmul way, so both uses read the same bytes. Norm weights, position tables and other small vectors
stay f32. K is zero-padded to a multiple of 16 (and of the group), so a kernel reads whole 16-byte
vectors.

An int4 weight keeps its values as int8 in [-7, 7] in the IR (`quant["bits"] == 4`), so the
interpreter and R_q read it like any int8 weight; only the stored bytes (two per byte) and the
kernels differ. Under an int4 scheme the output projection (the matmul the logits come from) and
any table stay int8: on the demo model, 4 bits there took top-1 agreement with fp32 from 97.1% to
94.6% (docs/formats.md, benchmarks/bench_int4_quality.py). The `-all` variants (`int4-g32-all`, ...)
put those at 4 bits too, for a user who trades that quality for size and speed: on a model with a
large vocabulary the output table is a third of what a decode step reads. Each tensor's manifest
entry names the scheme it got.
"""

from __future__ import annotations

import numpy as np

from ..errors import MonologueError
from ..ir import Graph, Weight

# scheme -> (bits, group); group 0 = one group per row
SCHEMES = {"none": None, "int8": (8, 0), "int8-g64": (8, 64), "int8-g128": (8, 128),
           "int4-g32": (4, 32), "int4-g64": (4, 64), "int4-g128": (4, 128)}
SCHEMES.update({f"{name}-all": v for name, v in list(SCHEMES.items()) if v and v[0] == 4})
K_ALIGN = 16


def quantize_array(w: np.ndarray, group: int, bits: int = 8) -> tuple[np.ndarray, np.ndarray, int]:
    """(q int8 (N, Kpad), scale f32 (N, G), group) for an f32 (N, K) matrix; group 0 = per row.
    q lies in [-127, 127] for 8 bits, [-7, 7] for 4."""
    n, k = w.shape
    align = group if group else K_ALIGN
    kpad = -(-k // align) * align
    g = group if group else kpad
    qmax = (1 << (bits - 1)) - 1
    wp = np.zeros((n, kpad), np.float32)
    wp[:, :k] = w
    blocks = wp.reshape(n, kpad // g, g)
    amax = np.abs(blocks).max(axis=2)
    # An all-zero row or group gets scale 1: q is 0 either way, and no 0/0 appears.
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    q = np.clip(np.round(blocks / scale[:, :, None]), -qmax, qmax).astype(np.int8)
    return q.reshape(n, kpad), scale, g


def output_projections(g: Graph) -> set[str]:
    """Weights of the matmuls the graph outputs come from through non-matmul nodes only."""
    by_name = {n.name: n for n in g.nodes}
    found, seen, todo = set(), set(), list(g.outputs)
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        n = by_name[name]
        if n.op in ("matmul", "linear"):
            found.add(n.inputs[1])
        else:
            todo.extend(n.inputs)
    return found


def quantize(g: Graph, scheme: str = "int8") -> Graph:
    if scheme not in SCHEMES:
        raise MonologueError(f"--quant {scheme}: unknown scheme; choose one of {', '.join(SCHEMES)}")
    g.meta["quant"] = scheme
    if SCHEMES[scheme] is None:
        return g
    bits, group = SCHEMES[scheme]
    as_matmul = {n.inputs[1] for n in g.nodes if n.op in ("matmul", "linear")}
    as_table = {n.inputs[0] for n in g.nodes if n.op == "embedding"}
    every = scheme.endswith("-all")
    keep8 = output_projections(g) | as_table if bits == 4 and not every else set()
    for name in sorted(as_matmul | as_table):
        w = g.weights[name]
        if w.dtype != "f32" or len(w.shape) != 2:
            continue
        if (name in as_matmul or every) and name not in keep8:
            label, b, grp = scheme, bits, group
        else:
            label, b, grp = "int8", 8, 0
        q, scale, gsize = quantize_array(np.asarray(w.data, np.float32), grp, b)
        g.weights[name] = Weight(tuple(w.shape), "q8", {"q": q, "scale": scale},
                                 {"scheme": label, "bits": b, "group": gsize, "k_pad": q.shape[1],
                                  "groups": scale.shape[1]}, w.role)
    return g
