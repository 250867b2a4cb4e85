"""Dispatch fusion for the WGSL plan: fewer dispatches per step, the same values.

The plan builder (wgsl_plan.py) emits one or more dispatches per IR node; this pass takes a step's
dispatch list and returns a shorter one where a kernel family can do the work of several adjacent
dispatches in one. It is an optimization only: a run it declines stays as it was, and the unfused
list (`build_plan(..., fuse=False)`) stays a complete, valid plan.

- Rope parts: adjacent `rope_qknorm` and `kv_write` dispatches that read the same rows (the q, k
  and v of one merged q|k|v projection) with the same tables become one `rope_parts` dispatch, one
  workgroup per head of every part: q roped (and QK-normed) into its buffer, k into its KV cache,
  v copied into its cache. Three dispatches per attention layer become one.

Merging two dispatches into one drops the order between them, so a run is merged only when no part
writes a buffer another part reads or writes (which also keeps every writable binding distinct, as
WebGPU requires). Buffer placement is untouched: each part writes exactly where its own dispatch did.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..wgsl.kernels import MAX_STORAGE_BUFFERS


@dataclass
class _Part:
    node: str
    T: int
    src: str  # the buffer the part reads its rows from
    row_stride: int
    tables: tuple  # (cos, sin) buffers, () for a copy
    heads_dim: tuple  # (heads, head_dim) of a rope; (width,) of a copy
    spec: dict  # rope_parts part, less `heads` of a copy (known once head_dim is)
    out: str  # the buffer it writes
    weights: dict = field(default_factory=dict)  # its norms' weight buffers by spec key (pre_weight, post_weight)


# a rope_qknorm dispatch's binding of each norm weight
_WEIGHT_BINDINGS = {"pre_weight": "pw", "post_weight": "qw"}


def _part(p) -> _Part | None:
    if p.family == "rope_qknorm":
        T, H, D = p.args
        kw = p.kwargs
        if kw.get("inplace", True):
            return None
        spec = dict(heads=H, rope=True, qk_norm=kw.get("qk_norm", True), post_scale=kw.get("post_scale", 0.0),
                    in_offset=kw.get("in_offset", 0), out_offset=kw.get("out_offset", 0),
                    out_at_pos=kw.get("out_at_pos", False), out_row_stride=kw.get("out_row_stride") or H * D)
        for k in ("eps", "pre_norm", "pre_eps"):
            if k in kw:
                spec[k] = kw[k]
        weights = {k: p.buffers[b] for k, b in _WEIGHT_BINDINGS.items() if b in p.buffers}
        return _Part(p.node, T, p.buffers["x"], kw.get("in_row_stride") or H * D, (p.buffers["cos"], p.buffers["sin"]),
                     (H, D), spec, p.buffers["y"], weights)
    if p.family == "kv_write":
        T, W = p.args
        kw = p.kwargs
        spec = dict(rope=False, in_offset=kw.get("src_offset", 0), out_offset=0, out_at_pos=True, out_row_stride=W)
        return _Part(p.node, T, p.buffers["src"], kw.get("src_row_stride") or W, (), (W,), spec, p.buffers["cache"])
    return None


def _rope_run(parts: list[_Part]) -> int | None:
    """head_dim when these parts can run as one rope_parts dispatch (None if not, 0 if no rope yet)."""
    ropes = [q for q in parts if q.tables]
    dims = {q.heads_dim[1] for q in ropes}
    if len(dims) > 1 or len({q.tables for q in ropes}) > 1:
        return None
    D = dims.pop() if dims else 0
    if len({(q.T, q.src, q.row_stride) for q in parts}) > 1 or (D and any(q.heads_dim[0] % D for q in parts if not q.tables)):
        return None
    outs = [q.out for q in parts]
    reads = {parts[0].src, *(t for q in ropes for t in q.tables), *(w for q in parts for w in q.weights.values())}
    if len(set(outs)) != len(outs) or reads & set(outs):
        return None
    if 3 + len(parts) + sum(len(q.weights) for q in parts) > MAX_STORAGE_BUFFERS:
        return None
    return D


def _merge_ropes(run, parts: list[_Part], D: int):
    specs, bufs = [], {}
    for i, q in enumerate(parts):
        spec = dict(q.spec, out=f"y{i}")
        if not q.tables:
            spec["heads"] = q.heads_dim[0] // D
        for k, buf in q.weights.items():
            spec[k] = f"{_WEIGHT_BINDINGS[k]}{i}"
            bufs[spec[k]] = buf
        specs.append(spec)
        bufs[f"y{i}"] = q.out
    rope = next(q for q in parts if q.tables)
    bufs.update(x=parts[0].src, cos=rope.tables[0], sin=rope.tables[1], step=run[0].buffers["step"])
    return replace(run[0], family="rope_parts", args=(parts[0].T, D, specs), kwargs=dict(in_row_stride=parts[0].row_stride),
                   buffers=bufs, index=0, nodes=[q.node for q in parts])


def fuse_dispatches(lst: list) -> list:
    """The step's dispatch list with every mergeable run of rope/kv_write dispatches merged."""
    out, i = [], 0
    while i < len(lst):
        first = _part(lst[i])
        if first is None:
            out.append(lst[i])
            i += 1
            continue
        parts, j = [first], i + 1
        while j < len(lst):
            nxt = _part(lst[j])
            if nxt is None or _rope_run(parts + [nxt]) is None:
                break
            parts.append(nxt)
            j += 1
        D = _rope_run(parts)
        if len(parts) > 1 and D:
            out.append(_merge_ropes(lst[i:j], parts, D))
        else:
            out.extend(lst[i:j])
        i = j
    return out
