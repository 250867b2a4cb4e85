"""Views that move data become `copy` kernels; views that do not stay free.

A backend places a view (reshape, slice, permute, expand, cast) as an offset into its input's
per-token block when `ir.view_block` says its elements are one run of that block in order. Any other
view over a (1, T, ...) activation (a permute that keeps T on axis 1 but reorders heads, a broadcast
that repeats data, a slice along an inner axis such as x[..., :rotary_dim] of (1, T, H, D)) is
rewritten here into one `copy` node: the strides and offset that read its elements from the nearest
value that owns memory. A chain of such views (through free reshapes too) composes into a single
copy. A view of an f32 weight that moves data is evaluated once into a derived weight. A permute that
moves T off axis 1 (the layout pass could not sink it) is left alone for the backend to name.
"""

from __future__ import annotations

import numpy as np

from ..interpreter import copy_index
from ..ir import SEQ, Graph, Node, TensorType, Weight, dense_strides, row_dims, view_block
from .canonicalize import dead_code, rename_uses

VIEW_OPS = ("reshape", "slice", "permute", "expand", "cast")
COPIED = ("slice", "permute", "expand")  # the views that can move data (a reshape or cast never does)


class _Strided:
    """A value as a strided read of `root`'s per-token block: full shape (with 1 and T kept, their
    strides unused), strides and offset in elements of that block."""

    def __init__(self, root: str, shape: tuple, strides: list[int], offset: int):
        self.root, self.shape, self.strides, self.offset = root, tuple(shape), list(strides), offset

    @classmethod
    def dense(cls, name: str, t: TensorType) -> "_Strided":
        lead = len(t.shape) - len(row_dims(t.shape))
        return cls(name, t.shape, [0] * lead + dense_strides(row_dims(t.shape)), 0)

    def apply(self, n: Node) -> "_Strided | None":
        at = n.attrs
        if n.op == "cast":
            return self
        if n.op == "slice":
            a = at["axis"]
            shape = list(self.shape)
            shape[a] = at["end"] - at["start"]
            return _Strided(self.root, shape, self.strides, self.offset + at["start"] * self.strides[a])
        if n.op == "permute":
            p = at["perm"]
            return _Strided(self.root, [self.shape[i] for i in p], [self.strides[i] for i in p], self.offset)
        if n.op == "expand":
            out = tuple(n.type.shape)
            pad = len(out) - len(self.shape)
            shape, strides = (1,) * pad + self.shape, [0] * pad + self.strides
            return _Strided(self.root, out, [0 if d != o else s for d, o, s in zip(shape, out, strides)], self.offset)
        if n.op == "reshape":
            strides = _reshape_strides(row_dims(self.shape), self.strides[len(self.shape) - len(row_dims(self.shape)):],
                                       row_dims(n.type.shape))
            if strides is None:
                return None
            lead = len(n.type.shape) - len(row_dims(n.type.shape))
            return _Strided(self.root, n.type.shape, [0] * lead + strides, self.offset)
        return None

    def row_strides(self) -> list[int]:
        return self.strides[len(self.shape) - len(row_dims(self.shape)):]


def _reshape_strides(dims: tuple, strides: list[int], new: tuple) -> list[int] | None:
    """Strides of a reshape of a strided block, or None when its elements are not one strided grid
    (torch's view rule: a run of old dims that are contiguous among themselves may be re-split)."""
    old = [(d, s) for d, s in zip(dims, strides) if d != 1]
    out: list[int] = []
    i = 0
    for d in new:
        if d == 1:
            out.append(0)
            continue
        # gather old dims (one contiguous run) until their product covers d
        if i >= len(old):
            return None
        size, stride = old[i]
        i += 1
        while size < d:
            if i >= len(old) or old[i - 1][1] != old[i][0] * old[i][1]:
                return None
            size *= old[i][0]
            stride = old[i][1]
            i += 1
        if size % d:
            return None
        if size != d:  # split this run: d is its outer part; the rest stays for the next new dims
            inner = size // d
            old.insert(i, (inner, stride))
            stride *= inner
        out.append(stride)
    return out if i == len(old) else None


def _rows_kept(t: TensorType) -> bool:
    """A value laid out as (1, T, per-token block) (or with no T): what strides of a block describe."""
    return t.seq_axis is None or (t.seq_axis == 1 and t.shape[0] == 1)


def materialize_views(g: Graph) -> Graph:
    by_name = {n.name: n for n in g.nodes}

    def strided(name: str) -> _Strided | None:
        """`name` as a strided read of a value that owns memory (through views and copies)."""
        p = by_name.get(name)
        if p is None or p.op not in VIEW_OPS + ("copy",):
            return _Strided.dense(name, g.type_of(name))
        if p.op == "copy":
            src = by_name.get(p.inputs[0])
            if src is not None and src.op in VIEW_OPS:  # not one of ours: it owns its output
                return _Strided.dense(name, p.type)
            lead = len(p.type.shape) - len(row_dims(p.type.shape))
            return _Strided(p.inputs[0], p.type.shape, [0] * lead + list(p.attrs["strides"]), p.attrs["offset"])
        src = strided(p.inputs[0])
        return src.apply(p) if src is not None else None

    for n in list(g.nodes):
        if n.op not in COPIED:
            continue
        src_t = g.type_of(n.inputs[0])
        if view_block(src_t, n) is not None or not (_rows_kept(src_t) and _rows_kept(n.type)) or n.type.dtype != "f32":
            continue
        s = strided(n.inputs[0])
        s = s.apply(n) if s is not None else None
        if s is None:  # a reshape on the way could not be expressed with strides: read the input itself
            s = _Strided.dense(n.inputs[0], src_t).apply(n)
        w = g.weights.get(s.root)
        if SEQ not in n.type.shape and w is not None and w.dtype == "f32":
            value = np.asarray(w.data, np.float32).reshape(-1)[copy_index(n.type.shape, s.row_strides(), s.offset)]
            name = g.fresh(n.name + ".value")
            g.weights[name] = Weight(tuple(n.type.shape), "f32", value.reshape(n.type.shape), None, "derived")
            rename_uses(g, n.name, name)
            continue
        n.op, n.inputs = "copy", [s.root]
        n.attrs = {"strides": s.row_strides(), "offset": s.offset}
    return dead_code(concat_reads(g))


def concat_reads(g: Graph) -> Graph:
    """A concat copies each input into its output anyway: it reads a copy's source through the
    copy's strides itself (attrs.reads), so a partial-rotary `cat(rope(x[..., :r]), x[..., r:])`
    moves x[..., r:] once, not twice."""
    by_name = {n.name: n for n in g.nodes}
    for n in g.nodes:
        if n.op != "concat":
            continue
        reads = n.attrs.get("reads") or [None] * len(n.inputs)
        for i, name in enumerate(n.inputs):
            p = by_name.get(name)
            if p is not None and p.op == "copy" and reads[i] is None:
                n.inputs[i] = p.inputs[0]
                reads[i] = {"shape": list(p.type.shape), "strides": list(p.attrs["strides"]), "offset": p.attrs["offset"]}
        if any(reads):
            n.attrs["reads"] = reads
    return g
