"""Memory plan (buffer reuse by liveness) and the dispatch schedules for decode and chunked prefill.

Views (reshape, permute, slice, expand) own no memory: they alias their source's buffer. Every
kernel output gets a buffer from a pool, first fit, freed after its last (transitive) use; a
buffer's size is counted per token, since every activation is (1, T, ...) and T is 1 in decode
and the chunk length in prefill. Attention nodes also own a KV cache of sequence_len positions.
"""

from __future__ import annotations

import math

from ..ir import OPS, SEQ, Graph

PREFILL_CHUNK = 64


def _per_token(shape) -> tuple[int, int]:
    """(elements per token, fixed elements): a (1, T, 4, 8) tensor is (32, 0); no T is (0, n)."""
    dims = [d for d in shape if d != SEQ]
    n = math.prod(dims) if dims else 1
    return (n, 0) if SEQ in shape else (0, n)


def memory_plan(g: Graph) -> Graph:
    root: dict[str, str] = {}
    for n in g.nodes:
        root[n.name] = root.get(n.inputs[0], n.inputs[0]) if not OPS[n.op].kernel else n.name
    last_use: dict[str, int] = {}
    for i, n in enumerate(g.nodes):
        for inp in n.inputs:
            if inp in root:
                last_use[root[inp]] = i
    for o in g.outputs:
        last_use[root[o]] = len(g.nodes)
    buffers: list[dict] = []
    free: list[int] = []
    assign: dict[str, int] = {}
    for i, n in enumerate(g.nodes):
        if OPS[n.op].kernel:
            per_tok, fixed = _per_token(n.type.shape)
            pick = next((b for b in free if buffers[b]["per_token"] >= per_tok and buffers[b]["fixed"] >= fixed), None)
            if pick is None and free:
                pick = free[0]
            if pick is None:
                pick = len(buffers)
                buffers.append({"id": pick, "per_token": 0, "fixed": 0})
            else:
                free.remove(pick)
            buffers[pick]["per_token"] = max(buffers[pick]["per_token"], per_tok)
            buffers[pick]["fixed"] = max(buffers[pick]["fixed"], fixed)
            assign[n.name] = pick
        # free what died at this node (after its outputs were placed: no in-place aliasing)
        for inp in dict.fromkeys(n.inputs):  # ordered: the plan must not depend on hash seeds
            r = root.get(inp)
            if r in assign and last_use.get(r) == i and assign[r] not in free:
                free.append(assign[r])
        if OPS[n.op].kernel and last_use.get(n.name, -1) < i:
            free.append(assign[n.name])
    cfg = g.meta.get("config", {})
    kv = [{"node": n.name, "positions": cfg.get("sequence_len"), "n_kv_head": n.attrs["n_kv_head"],
           "head_dim": n.attrs["head_dim"]} for n in g.nodes if n.op == "attention"]
    g.meta["memory_plan"] = {
        "f32_buffers": buffers,
        "assign": {k: assign[root[k]] if root.get(k) in assign else None for k in root},
        "kv_cache": kv,
        "naive_per_token": sum(_per_token(n.type.shape)[0] for n in g.nodes if OPS[n.op].kernel),
    }
    return g


def schedule(g: Graph) -> Graph:
    """Both schedules dispatch the same kernels in graph order; they differ only in T.

    Decode runs them with T = 1 at the cache position; prefill runs them per chunk of up to
    PREFILL_CHUNK tokens (attention reads the cache written by earlier chunks).
    """
    kernels = [n.name for n in g.nodes if OPS[n.op].kernel]
    chunk = min(PREFILL_CHUNK, int(g.meta.get("config", {}).get("sequence_len", PREFILL_CHUNK)))
    g.meta["schedule"] = {"kernels": kernels, "decode": {"T": 1}, "prefill": {"chunk": chunk}}
    return g
