"""Lower an exported fx graph of ATen ops to the IR, through one explicit table (`CONVERTERS`).

The table is the compiler's op coverage: an ATen op without an entry fails the compile with one
line naming the op, the fx node and the model source line. Converters also enforce the sequence
rules of DESIGN.md: an op that works along the sequence axis is either one the compiler understands
(causal attention, a position-table slice, a one-step token shift) or an error, never a guess.
"""

from __future__ import annotations

import math
import operator
from typing import Callable

import numpy as np
import torch
import torch.fx

from .errors import MonologueError
from .frontend.trace import source_line
from .models import ops  # noqa: F401  (registers monologue::causal_attention before the table below)
from .ir import SEQ, Graph, Node, TensorType, Weight, consecutive_runs, dense_strides, verify
from .position_fold import (Evaluator, bias_kind, causal_window, constant_nodes, is_prefix_table, linear_bias,
                            viewed_tensor)

aten = torch.ops.aten
F32_EPS = float(np.finfo(np.float32).eps)
IDS = "ids"


class _Pending:
    """A value that is only meaningful as part of a pattern: `x[:, :-1]` or a zero row, which
    together with a concat along the sequence become a one-step token shift."""

    def __init__(self, kind: str, name: str | None = None, shape=None, **attrs):
        self.kind, self.name, self.shape = kind, name, shape
        self.attrs = attrs


# what a pattern's pending value may only be used as, for the error when it is used otherwise
_PENDING_USES = {
    "scores": "attention scores other than in softmax(q @ k.T * scale + causal mask) @ v",
    "prefix": "a shifted part of the sequence other than in a one-step token shift (sequence-mixing the "
              "compiler does not understand)",
    "zeros": "zeros (zeros_like, new_zeros) other than as a token shift's first row or a scatter's base",
    "conv": "a conv1d's output other than its first T positions (a causal convolution)",
    "left_padded": "a sequence padded in front other than as the input of a conv1d that takes the length back "
                   "to T (a causal convolution)",
    "complex": "a complex value other than in view_as_real(view_as_complex(x) * table) (a rotary embedding)",
    "one_hot": "the tokens' one-hot vectors other than times a weight (an embedding: one_hot(ids) @ W)",
}


class _Const:
    """An fx node computed from positions and constants only (position_fold.py): turned into a
    weight, a position table or a proven attention mask where an id-dependent op uses it."""

    def __init__(self, fx: torch.fx.Node):
        self.fx = fx


class _Ctx:
    def __init__(self, ep: torch.export.ExportedProgram):
        self.ep = ep
        self.g = Graph({IDS: TensorType((1, SEQ), "i32")}, {}, [], [])
        self.env: dict[torch.fx.Node, object] = {}  # fx node -> IR name (tensor) or "T"/int (symbolic size)
        self.seq_symbol = None
        self.fx: torch.fx.Node | None = None
        self.tmax = 0  # the longest traced length: position tables get this many rows
        self.evaluator: Evaluator | None = None
        self.materialized: dict[torch.fx.Node, str] = {}
        self.storage: dict[int, str] = {}  # data_ptr of a parameter/buffer -> its weight name
        self.order = {n: i for i, n in enumerate(ep.graph.nodes)}  # fx node -> its place in the graph

    # --- helpers for converters ------------------------------------------------------------
    def where(self) -> str:
        src = source_line(self.fx) if self.fx is not None else ""
        return f"fx node %{self.fx.name}" + (f" ({src})" if src else "")

    def fail(self, msg: str):
        raise MonologueError(f"{msg} at {self.where()}")

    def dim(self, d):
        """An fx size (int, SymInt or sym node) as an IR dimension: int, "T", or an error."""
        if isinstance(d, torch.fx.Node):
            d = self.env[d]
            return self.dim(d.fx.meta["val"]) if isinstance(d, _Const) else d
        if isinstance(d, torch.SymInt):
            expr = d.node.expr
            if self.seq_symbol is not None and expr == self.seq_symbol:
                return SEQ
            if expr.is_number:
                return int(expr)
            self.fail(f"a shape depends on the sequence length as {expr} (sequence-mixing the compiler does "
                      "not understand)")
        return int(d)

    def out_type(self) -> TensorType:
        val = self.fx.meta.get("val")
        if not isinstance(val, torch.Tensor):
            self.fail(f"{self.fx.target} does not produce a tensor")
        dtype = "f32" if val.dtype.is_floating_point else "i32"
        return TensorType(tuple(self.dim(d) for d in val.shape), dtype)

    def t(self, a) -> str:
        """The IR name of a tensor argument."""
        if isinstance(a, torch.fx.Node) and isinstance(self.env.get(a), _Const):
            return self.materialize(a)
        p = self.env.get(a) if isinstance(a, torch.fx.Node) else None
        if isinstance(p, _Pending) and p.kind == "empty":
            self.env[a] = _assembled(self, a, p)
            return self.env[a]
        if isinstance(p, _Pending) and p.kind == "piece":  # a slice of a new_empty tensor read, not copied into
            (start, end), whole = p.attrs["span"], self.t(p.attrs["base"])
            shape = tuple(end - start if d == p.attrs["axis"] else n for d, n in enumerate(p.shape))
            return self.emit("slice", [whole], {"axis": p.attrs["axis"], "start": start, "end": end},
                             TensorType(shape, "f32"))
        if isinstance(p, _Pending):
            self.fail(f"{self.fx.target} uses {_PENDING_USES.get(p.kind, _PENDING_USES['scores'])}")
        if not isinstance(a, torch.fx.Node) or not isinstance(self.env.get(a), str) or self.env[a] == SEQ:
            self.fail(f"{self.fx.target}: expected a tensor argument, got {a!r}")
        return self.env[a]

    def emit(self, op: str, inputs: list[str], attrs: dict | None = None, type: TensorType | None = None,
             part: str = "") -> str:
        """A node named after the fx node; `part` names a step of a several-op lowering, so that the fx
        node's own name stays on its value (parity compares values by name)."""
        name = self.g.fresh(self.fx.name + (f"__{part}" if part else ""))
        src = f"fx:{self.fx.name}" + (f" @ {source_line(self.fx)}" if source_line(self.fx) else "")
        stack = self.fx.meta.get("nn_module_stack") or {}
        if stack:  # the innermost module, e.g. "transformer.h.3.attn": which layer a kernel belongs to
            src += f" in {list(stack.values())[-1][0]}"
        self.g.nodes.append(Node(name, op, inputs, attrs or {}, type or self.out_type(), src))
        return name

    def materialize(self, a: torch.fx.Node, part: str = "") -> str:
        """A constant fx node as a weight (no sequence axis) or a position table read by `positions`;
        `part` "real" or "imag": that part of a complex one (a rotary embedding's `torch.polar`)."""
        if (a, part) in self.materialized:
            return self.materialized[a, part]
        src = a.args[0] if a.target == aten.neg.default and not part else None
        if isinstance(src, torch.fx.Node) and isinstance(self.env.get(src), _Const):
            # -table stays a neg of the table: the rotary matcher knows sin and -sin as one table
            x = self.materialize(src)
            name = self.g.fresh(a.name)
            self.g.nodes.append(Node(name, "unary", [x], {"fn": "neg"}, self.type(x), f"fx:{a.name}"))
            self.materialized[a, part] = name
            return name
        val = a.meta.get("val")
        if not isinstance(val, torch.Tensor):
            self.fail(f"{self.fx.target}: expected a tensor argument, got the constant %{a.name}")
        shape = [self.dim(d) for d in val.shape]
        seq_axes = [i for i, d in enumerate(shape) if d == SEQ]
        ev = self.evaluator
        value = ev.value(a, self.tmax)
        if part and value.is_complex():
            value = getattr(value, part)
        if not value.is_floating_point():
            self.fail(f"the {value.dtype} value of %{a.name}, computed from positions only, is used by an op on "
                      "activations (only float tables and attention masks are understood)")
        if len(seq_axes) > 1:
            self.fail(f"%{a.name} depends on two positions (a (T, T) value) and is used other than as a causal "
                      "attention mask")
        key = value.untyped_storage().data_ptr()
        if not seq_axes and not part and key in self.storage and tuple(value.shape) == tuple(self.g.weights[self.storage[key]].shape):
            name = self.storage[key]  # a no-op view or cast of a parameter: the parameter itself
        else:
            name = self.g.fresh(a.name + (f"_{part}" if part else ""))
            role = "derived"
            if seq_axes:
                if not is_prefix_table(ev, a, seq_axes[0], self.tmax):
                    self.fail(f"%{a.name} depends on the sequence length, not only on the position (row t changes "
                              "with T)")
                role = "table"
            data = value.detach().to(torch.float32).contiguous().numpy()
            self.g.weights[name] = Weight(tuple(data.shape), "f32", data, None, role)
            if seq_axes:
                table = name
                name = self.g.fresh(a.name + (f"_{part}" if part else "") + "_pos")
                self.g.nodes.append(Node(name, "positions", [table], {"axis": seq_axes[0]},
                                         TensorType(tuple(shape), "f32"), f"fx:{a.name}"
                                         + (f" @ {source_line(a)}" if source_line(a) else "")))
        self.materialized[a, part] = name
        return name

    def complex_parts(self, a) -> tuple[str, str]:
        """The real and imaginary parts of a complex fx value, as two real IR values."""
        p = self.env.get(a) if isinstance(a, torch.fx.Node) else None
        if isinstance(p, _Pending) and p.kind == "complex":
            return p.attrs["re"], p.attrs["im"]
        if isinstance(p, _Const):
            return self.materialize(a, "real"), self.materialize(a, "imag")
        self.fail(f"{self.fx.target}: a complex operand that is not view_as_complex(x) or a table of positions")

    def weight(self, name: str, transpose: bool = False) -> str | None:
        """`name` as the weight a matmul reads: a weight itself, or a view of one (an expert's W[e] of
        a stacked (E, N, K) parameter), [transposed,] evaluated into a weight of its own. Where its
        elements lie in the parameter goes to meta "weight_views" (parity.rq_state_dict writes them
        back). None for a value computed otherwise."""
        if name in self.g.weights and not transpose:
            return name
        found = self.view_chain(name, ("reshape", "slice", "permute"))
        if found is None:
            return None
        name, chain = found
        w = self.g.weights[name]
        if w.role == "table" or name in self.g.meta.get("weight_views", {}):
            return None
        from .interpreter import KERNELS, Session

        s = Session(Graph({}, {}, [], [], {}), max_len=1)
        value, index = np.asarray(w.data, np.float32), np.arange(int(np.prod(w.shape)), dtype=np.int64).reshape(w.shape)
        for n in reversed(chain):
            value, index = (KERNELS[n.op](s, n, n.attrs, [v]) for v in (value, index))
        if transpose:
            value, index = value.T, index.T
        layout = _affine(index)
        if layout is None:
            return None
        offset, strides = layout
        if offset == 0 and index.shape == tuple(w.shape) and _dense(index.shape, strides):
            return name  # W.t().t(), a squeeze and unsqueeze: the parameter itself
        # named param[e] for a block of it (an expert), with .T where the matmul reads it transposed
        block = _dense(index.shape[::-1] if transpose else index.shape, strides[::-1] if transpose else strides)
        label = f"{name}[{offset // index.size}]" if block and offset % index.size == 0 else f"{name}.{chain[0].name}"
        view = self.g.fresh(label + (".T" if transpose else ""))
        self.g.weights[view] = Weight(tuple(value.shape), "f32", np.ascontiguousarray(value), None, w.role)
        self.g.meta.setdefault("weight_views", {})[view] = {"of": name, "shape": list(w.shape), "offset": offset,
                                                           "strides": strides}
        return view

    def weight_values(self, name: str) -> np.ndarray | None:
        """The values of a weight seen through reshapes and broadcasts (a per-head parameter however the
        model shaped it), flat; None for anything else."""
        found = self.view_chain(name, ("reshape", "expand", "cast"))
        return None if found is None else np.asarray(self.g.weights[found[0]].data, np.float32).reshape(-1)

    def view_chain(self, name: str, ops: tuple) -> tuple[str, list[Node]] | None:
        """(the weight, the nodes from `name` back to it) when `name` is that weight through `ops` only."""
        chain = []
        while name not in self.g.weights:
            n = next((m for m in self.g.nodes if m.name == name), None)
            if n is None or n.op not in ops:
                return None
            chain.append(n)
            name = n.inputs[0]
        return name, chain

    def mask_window(self, a, *, additive: bool, invert: bool = False, **how) -> int:
        """The proven window of an attention mask argument (see position_fold.causal_window)."""
        if not (isinstance(a, torch.fx.Node) and isinstance(self.env.get(a), _Const)):
            self.fail("attention with a mask computed from the tokens (only causal and sliding-window masks are "
                      "understood)")
        return causal_window(self.evaluator, a, self.tmax, additive=additive, invert=invert, **how)

    def score_bias(self, a, heads: int) -> tuple[list[float], int | None] | None:
        """(ALiBi slopes, the window of the keys it blocks or None: blocks none) of a term added to
        attention scores (position_fold.linear_bias, causal_window), or None when the term holds no
        bias (then it must be a mask)."""
        if not (isinstance(a, torch.fx.Node) and isinstance(self.env.get(a), _Const)):
            return None
        kind = bias_kind(self.evaluator, a, self.tmax)
        if kind is None:
            return None
        window = causal_window(self.evaluator, a, self.tmax, additive=True, bias=True) if kind == "masked bias" else None
        return linear_bias(self.evaluator, a, self.tmax, heads), window

    def type(self, name: str) -> TensorType:
        return self.g.type_of(name)

    def is_table(self, name: str) -> bool:
        w = self.g.weights.get(name)
        return w is not None and w.role == "table"


def _affine(index: np.ndarray) -> tuple[int, list[int]] | None:
    """(offset, strides) with index[i] = offset + sum(i_d * strides_d), or None (not a strided view)."""
    if not index.size:
        return None
    offset = int(index.flat[0])
    strides = [int(index[tuple(int(i == d) for i in range(index.ndim))]) - offset if index.shape[d] > 1 else 0
               for d in range(index.ndim)]
    grid = np.indices(index.shape).reshape(index.ndim, -1).T @ np.asarray(strides, np.int64) + offset
    return (offset, strides) if np.array_equal(grid, index.reshape(-1)) else None


def _dense(shape, strides) -> bool:
    """Whether strides walk `shape` in row-major order with no gaps (axes of one ignored)."""
    return all(s == d for s, d, n in zip(strides, dense_strides(shape), shape) if n > 1)


def _axis(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


# --- converters: (ctx, *fx args, **fx kwargs) -> IR name | symbolic value | None ---------------

def _embedding(c, weight, indices, *rest, **kw):
    w = c.weight(c.t(weight))
    if w is None:
        c.fail("embedding of a computed table is not supported")
    return c.emit("embedding", [w, c.t(indices)])


def _linear(c, x, weight, bias=None):
    if _pending(c, x, "one_hot"):
        y = _one_hot_product(c, x, weight, transpose=True)
        return c.emit("binary", [y, c.t(bias)], {"fn": "add"}) if bias is not None else y
    w = c.weight(c.t(weight))
    if w is None:
        c.fail("linear with a computed (not a parameter) weight is not supported")
    y = c.emit("linear", [c.t(x), w], part="" if bias is None else "mm")
    if bias is not None:
        y = c.emit("binary", [y, c.t(bias)], {"fn": "add"})
    return y


def _rms_norm(c, x, normalized_shape, weight=None, eps=None):
    if len(normalized_shape) != 1:
        c.fail("rms_norm over more than the last axis is not supported")
    inputs = [c.t(x)] + ([c.t(weight)] if weight is not None else [])
    return c.emit("rms_norm", inputs, {"eps": F32_EPS if eps is None else float(eps)})


def _layer_norm(c, x, normalized_shape, weight=None, bias=None, eps=1e-5, *rest):
    if len(normalized_shape) != 1:
        c.fail("layer_norm over more than the last axis is not supported")
    inputs = [c.t(x)] + [c.t(a) for a in (weight, bias) if a is not None]
    return c.emit("layer_norm", inputs, {"eps": float(eps), "weight": weight is not None, "bias": bias is not None})


def _reshape(c, x, shape):
    if _scores(c, x) or _probs(c, x):
        # Bloom's (B * H, T, S) scores viewed as (B, H, T, S) and back: with B = 1, the same heads
        if [d for d in x.meta["val"].shape if d != 1] != [d for d in c.fx.meta["val"].shape if d != 1]:
            c.fail("a reshape of attention scores other than adding or dropping a batch axis of 1")
        return c.env[x]
    src = c.type(c.t(x))
    out = c.out_type()
    if src.seq_axis is not None:
        # Per-token only if the sequence dim survives whole with the same (batch) dims in front.
        if out.seq_axis is None or np.prod(src.shape[: src.seq_axis]) != np.prod(out.shape[: out.seq_axis]):
            c.fail("a reshape that merges or splits the sequence dimension mixes positions")
    return c.emit("reshape", [c.t(x)], {"shape": list(out.shape)})


def _flatten(c, x, *_):
    """flatten / unflatten: a reshape to the fx node's own shape."""
    return _reshape(c, x, None)


def _permute(c, x, perm):
    rank = len(c.type(c.t(x)).shape)
    return c.emit("permute", [c.t(x)], {"perm": [_axis(p, rank) for p in perm]})


def _reverse_axes(c, x):
    """x.T (numpy_T) and x.t(): every axis reversed."""
    rank = len(c.type(c.t(x)).shape)
    return c.emit("permute", [c.t(x)], {"perm": list(range(rank))[::-1]})


def _transpose(c, x, d0, d1):
    rank = len(c.type(c.t(x)).shape)
    perm = list(range(rank))
    a, b = _axis(d0, rank), _axis(d1, rank)
    perm[a], perm[b] = perm[b], perm[a]
    return c.emit("permute", [c.t(x)], {"perm": perm})


def _unsqueeze(c, x, dim):
    if _pending(c, x, "sink_scale"):
        return c.env[x]  # its (B, H, T, 1) shape for the product with the output
    return c.emit("reshape", [c.t(x)], {"shape": list(c.out_type().shape)})


def _slice(c, x, dim=0, start=None, end=None, step=1):
    if _pending(c, x, "conv"):
        return _causal_conv(c, c.env[x], dim, start, end, step)
    if _probs(c, x) and c.env[x].attrs.get("sink_column"):
        if _axis(dim, 4) != 3 or (start or 0) != 0 or end is None or int(c.dim(end)) != -1 or step != 1:
            c.fail("attention probabilities with a sink column used other than as probs[..., :-1]")
        return _Pending("probs", c.env[x].name, **{**c.env[x].attrs, "sink_column": False})
    if _pending(c, x, "empty") and step == 1:
        shape = c.env[x].shape
        dim = _axis(dim, len(shape))
        if shape[dim] == SEQ:
            c.fail("a slice along the sequence axis of a tensor assembled by copies into it")
        return _Pending("piece", shape=shape, base=x, axis=dim, span=_slice_bounds(c, start or 0, end, shape[dim]))
    name = c.t(x)
    t = c.type(name)
    dim = _axis(dim, len(t.shape))
    start = 0 if start is None else start
    if step != 1:
        return _strided_slice(c, name, dim, start, end, step)
    if t.shape[dim] == SEQ and start == 0 and end == -1:
        return _Pending("prefix", name)  # x[:, :-1]: all but the last position
    out = c.out_type()
    if c.is_table(name) and out.shape[dim] == SEQ:
        if start != 0:
            c.fail("a position table sliced from a non-zero start")
        # x[:, :T] of a buffer: position-indexed, rows [pos, pos + T) at run time.
        return c.emit("positions", [name], {"axis": dim})
    if t.shape[dim] == SEQ:
        if start == 0 and out.shape[dim] == SEQ:
            return name  # the whole sequence: an alias
        c.fail("a slice along the sequence axis (sequence-mixing the compiler does not understand)")
    size = t.shape[dim]
    start, end = _slice_bounds(c, start, end, size)
    return c.emit("slice", [name], {"axis": dim, "start": start, "end": end})


def _conv1d(c, x, weight, bias=None, stride=(1,), padding=(0,), dilation=(1,), groups=1):
    """conv1d along the sequence: only as the first half of a causal depthwise convolution (see
    _causal_conv); its T + K - 1 outputs are no shape the IR holds."""
    padded = _pending(c, x, "left_padded")  # F.pad(x, (K - 1, 0)) first, then no padding of its own
    name = c.env[x].name if padded else c.t(x)
    t = c.type(name)
    w = c.weight(c.t(weight))
    if w is None:
        c.fail("conv1d with a computed (not a parameter) weight")
    shape = c.g.weights[w].shape
    k = shape[-1]
    one = lambda v: list(v) if isinstance(v, (list, tuple)) else [v]  # noqa: E731
    pad = c.env[x].attrs["count"] if padded else one(padding)[0]
    if len(t.shape) != 3 or t.seq_axis != 2 or groups != t.shape[1] or tuple(shape) != (t.shape[1], 1, k) \
            or one(stride) != [1] or one(dilation) != [1] or pad != k - 1 or (padded and one(padding) != [0]):
        c.fail("a conv1d other than a causal depthwise one over (B, C, T) (groups C, stride 1, K - 1 zeros in front "
               "of the sequence: padding K - 1 then the first T outputs, or F.pad (K - 1, 0) and no padding)")
    b = c.weight(c.t(bias)) if bias is not None else None
    if bias is not None and b is None:
        c.fail("conv1d with a computed (not a parameter) bias")
    conv = _Pending("conv", name, weight=w, bias=b, k=k)
    return _conv_taps(c, conv) if padded else conv


def _causal_conv(c, p: _Pending, dim, start, end, step) -> str:
    """conv1d(x, padding=K-1)[..., :T] (LFM2's short convolution, Mamba's)."""
    if _axis(dim, 3) != 2 or step != 1 or (start or 0) != 0 or end is None or \
            (c.dim(end) != SEQ and int(c.dim(end)) != -(p.attrs["k"] - 1)):
        c.fail("a slice of conv1d's output other than its first T positions (a causal convolution)")
    return _conv_taps(c, p)


def _conv_taps(c, p: _Pending) -> str:
    """A causal depthwise conv1d: y[t] = sum_i w[K-1-i] x[t-i] (+ b), each channel on its own: i
    one-step token shifts of x, each times its tap. It runs channels-last, (B, T, C), between two
    transposes the layout pass cancels with the model's own."""
    t = c.type(p.name)
    k = p.attrs["k"]
    rows = TensorType((1, SEQ, t.shape[1]), "f32")
    x = c.emit("permute", [p.name], {"perm": [0, 2, 1]}, rows, "channels_last")
    taps = np.asarray(c.g.weights[p.attrs["weight"]].data, np.float32)[:, 0, :]
    y = None
    for i in range(k):
        if i:
            x = c.emit("token_shift", [x], {"axis": 1}, rows, f"shift{i}")
        tap = c.g.fresh(f"{p.attrs['weight']}.tap{k - 1 - i}")
        c.g.weights[tap] = Weight((t.shape[1],), "f32", np.ascontiguousarray(taps[:, k - 1 - i]), None, "derived")
        term = c.emit("binary", [x, tap], {"fn": "mul"}, rows, f"tap{i}")
        y = term if y is None else c.emit("binary", [y, term], {"fn": "add"}, rows, f"sum{i}")
    if p.attrs["bias"] is not None:
        y = c.emit("binary", [y, p.attrs["bias"]], {"fn": "add"}, rows, "bias")
    return c.emit("permute", [y], {"perm": [0, 2, 1]}, TensorType(t.shape, "f32"))


def _slice_bounds(c, start, end, size: int) -> tuple[int, int]:
    """Python's [start:end] bounds on an axis of `size`, negative ones counted from the end."""
    start, end = int(start), size if end is None else int(c.dim(end))
    return tuple(min(size, max(0, i + size if i < 0 else i)) for i in (start, end))


def _strided_slice(c, name: str, dim: int, start: int, end, step: int) -> str:
    """x[..., start:end:step] as views: the axis split into (n / step, step), one column of the
    step taken, the rest of the outer axis sliced, merged back (GPT-J's rotate_every_two)."""
    t = c.type(name)
    size = t.shape[dim]
    if size == SEQ or c.is_table(name):
        c.fail("a strided slice along the sequence axis (sequence-mixing the compiler does not understand)")
    if step < 1 or size % step:
        c.fail(f"a slice with step {step} of an axis of {size} (only steps that divide the axis are understood)")
    start, end = _slice_bounds(c, start, end, size)
    m = len(range(start, end, step))
    shape = list(t.shape)
    split = shape[:dim] + [size // step, step] + shape[dim + 1:]
    y = c.emit("reshape", [name], {"shape": list(split)}, TensorType(tuple(split), t.dtype), "split")
    split[dim + 1] = 1
    y = c.emit("slice", [y], {"axis": dim + 1, "start": start % step, "end": start % step + 1},
               TensorType(tuple(split), t.dtype), "column")
    if m != size // step:
        split[dim] = m
        y = c.emit("slice", [y], {"axis": dim, "start": start // step, "end": start // step + m},
                   TensorType(tuple(split), t.dtype), "rows")
    return c.emit("reshape", [y], {"shape": list(c.out_type().shape)})


def _index(c, x, indices):
    """x[..., [i, j, ..], ..] with constant indices on one axis other than the sequence's (Falcon's
    `fused_qkv[..., [-2], :]`): a slice for each run of consecutive indices, concatenated."""
    axes = [a for a, i in enumerate(indices) if i is not None]
    if axes == [0] and not isinstance(c.env.get(indices[0]), _Const) and not isinstance(c.env.get(x), _Const) \
            and c.weight(c.t(x)) is not None:
        return _embedding(c, x, indices[0])  # wte.weight[idx]: rows of a parameter picked by the tokens
    name = c.t(x)
    t = c.type(name)
    if len(axes) != 1 or not isinstance(c.env.get(indices[axes[0]]), _Const):
        c.fail("indexing other than by constant indices on one axis")
    axis, size = axes[0], t.shape[axes[0]]
    value = c.evaluator.value(indices[axis], c.tmax)
    if size == SEQ or value.dim() != 1 or value.is_floating_point() or value.dtype == torch.bool:
        c.fail("indexing other than by a list of integers on one axis other than the sequence's")
    picks = [int(i) + size if int(i) < 0 else int(i) for i in value]
    if not all(0 <= i < size for i in picks):
        c.fail(f"index out of range for an axis of {size}")
    runs = consecutive_runs(picks)
    parts = []
    for k, (a, b) in enumerate(runs):
        shape = tuple(b - a if d == axis else n for d, n in enumerate(t.shape))
        parts.append(c.emit("slice", [name], {"axis": axis, "start": a, "end": b}, TensorType(shape, t.dtype),
                            f"run{k}" if len(runs) > 1 else ""))
    return parts[0] if len(parts) == 1 else c.emit("concat", parts, {"axis": axis})


def _index_select(c, x, dim, index):
    """x.index_select(dim, index): indexing on one axis (a parameter's rows by the tokens: an embedding)."""
    return _index(c, x, [None] * _axis(dim, len(x.meta["val"].shape)) + [index])


def _stack(c, tensors, dim=0):
    """torch.stack: each tensor given a new axis at dim, then concatenated along it."""
    out = c.out_type()
    dim = _axis(dim, len(out.shape))
    if out.shape[dim] == SEQ:
        c.fail("a stack along the sequence axis (sequence-mixing the compiler does not understand)")
    return _stacked(c, [c.t(a) for a in tensors], dim)


def _stacked(c, names: list[str], dim: int) -> str:
    """The values each given a new axis at dim, concatenated along it."""
    parts = []
    for i, name in enumerate(names):
        t = c.type(name)
        shape = t.shape[:dim] + (1,) + t.shape[dim:]
        parts.append(c.emit("reshape", [name], {"shape": list(shape)}, TensorType(shape, t.dtype), f"item{i}"))
    return c.emit("concat", parts, {"axis": dim})


def _cat(c, tensors, dim=0):
    vals = [c.env.get(a) for a in tensors]
    if len(tensors) == 2 and _scores(c, tensors[0]) and not _scores(c, tensors[1]):
        return _sink_column(c, c.env[tensors[0]], tensors[1], dim)
    if len(vals) == 2 and isinstance(vals[0], _Pending) and isinstance(vals[1], _Pending):
        zeros, prefix = vals
        if zeros.kind == "zeros" and prefix.kind == "prefix":
            t = c.type(prefix.name)
            if _axis(dim, len(t.shape)) == t.seq_axis and zeros.shape[t.seq_axis] == 1:
                # cat([0, x[:, :-1]]): y[t] = x[t - 1], y[0] = 0 — one position of carried state
                return c.emit("token_shift", [prefix.name], {"axis": t.seq_axis})
    names = [c.t(a) for a in tensors]
    out = c.out_type()
    dim = _axis(dim, len(out.shape))
    if out.shape[dim] != SEQ and any(c.type(n).shape[dim] == SEQ for n in names):
        c.fail("a concatenation along the sequence axis (sequence-mixing the compiler does not understand)")
    if out.shape[dim] == SEQ:
        c.fail("a concatenation along the sequence axis (sequence-mixing the compiler does not understand)")
    return c.emit("concat", names, {"axis": dim})


def _repeat(c, x, sizes):
    """x.repeat(sizes): x tiled sizes[i] times along axis i (new leading axes first), one concat of
    copies per repeated axis; never along the sequence axis."""
    name = c.t(x)
    t = c.type(name)
    shape = (1,) * (len(sizes) - len(t.shape)) + tuple(t.shape)
    if shape != t.shape:
        name = c.emit("reshape", [name], {"shape": list(shape)}, TensorType(shape, t.dtype), "padded")
    axes = [a for a, r in enumerate(sizes) if r != 1]
    if any(shape[a] == SEQ for a in axes):
        c.fail("a repeat along the sequence axis (sequence-mixing the compiler does not understand)")
    for axis in axes:
        shape = shape[:axis] + (shape[axis] * sizes[axis],) + shape[axis + 1:]
        last = axis == axes[-1]  # the fx node's own name on its value
        name = c.emit("concat", [name] * sizes[axis], {"axis": axis}, TensorType(shape, t.dtype), "" if last else f"tiled{axis}")
    return name if axes else c.emit("reshape", [name], {"shape": list(shape)})


def _repeat_interleave(c, x, repeats, dim=None, *, output_size=None):
    """x.repeat_interleave(n, dim): each slice along dim n times in a row (grouped KV heads shared
    by n query heads), as llama's repeat_kv writes it: an axis of n after dim, merged into it."""
    name = c.t(x)
    t = c.type(name)
    if dim is None or not isinstance(repeats, int):
        c.fail("repeat_interleave other than an int count along one axis")
    d = _axis(dim, len(t.shape))
    if t.shape[d] == SEQ:
        c.fail("a repeat_interleave along the sequence axis (sequence-mixing the compiler does not understand)")
    one, wide = (tuple(t.shape[:d + 1]) + (n,) + tuple(t.shape[d + 1:]) for n in (1, repeats))
    name = c.emit("reshape", [name], {"shape": list(one)}, TensorType(one, t.dtype), "unit")
    name = c.emit("expand", [name], {"shape": list(wide)}, TensorType(wide, t.dtype), "repeated")
    return c.emit("reshape", [name], {"shape": list(c.out_type().shape)})


def _view_as(c, x, other):
    return _reshape(c, x, None)  # the shape is the fx node's own: other's


# --- complex numbers: Meta's rotary embedding, view_as_real(view_as_complex(x) * freqs_cis) -----------
# A complex value is pending as its real and imaginary parts, each a real IR value; the product by a
# complex table of positions is four real products, and view_as_real interleaves the parts again.

def _is_complex(a) -> bool:
    val = a.meta.get("val") if isinstance(a, torch.fx.Node) else None
    return isinstance(val, torch.Tensor) and val.dtype.is_complex


def _view_as_complex(c, x):
    """x (..., n, 2) as n complex numbers: its [..., 0] and [..., 1] parts."""
    name = c.t(x)
    t = c.type(name)
    if t.shape[-1] != 2 or t.seq_axis == len(t.shape) - 1:
        c.fail("view_as_complex of a tensor whose last axis is not 2 pairs")
    parts = {p: _one_of(c, name, len(t.shape) - 1, i, p) for i, p in enumerate(("re", "im"))}
    return _Pending("complex", shape=t.shape[:-1], **parts)


def _complex_mul(c, a, b):
    """(ar + i ai)(br + i bi) = (ar br - ai bi) + i (ar bi + ai br), each part a real value."""
    (ar, ai), (br, bi) = c.complex_parts(a), c.complex_parts(b)
    shape = tuple(c.dim(d) for d in c.fx.meta["val"].shape)
    out = TensorType(shape, "f32")

    def mul(x, y, part):
        if c.type(x).shape != shape:  # the backends take the output's shape from input 0
            x, y = y, x
        return c.emit("binary", [x, y], {"fn": "mul"}, out, part)

    re = c.emit("binary", [mul(ar, br, "rr"), mul(ai, bi, "ii")], {"fn": "sub"}, out, "re")
    im = c.emit("binary", [mul(ar, bi, "ri"), mul(ai, br, "ir")], {"fn": "add"}, out, "im")
    return _Pending("complex", shape=shape, re=re, im=im)


def _view_as_real(c, z):
    """The parts of z side by side along a new last axis of 2: (..., n, 2)."""
    re, im = c.complex_parts(z)
    return _stacked(c, [re, im], len(c.type(re).shape))


def _expand(c, x, size, *rest, **kw):
    return c.emit("expand", [c.t(x)], {"shape": list(c.out_type().shape)})


COMMUTATIVE = ("add", "mul", "maximum", "minimum", "eq", "ne")


def _binary(fn):
    def conv(c, a, b, *, alpha=1):
        if alpha != 1:
            c.fail(f"{fn} with alpha={alpha} is not supported")
        if fn == "sub" and _pending(c, a, "lse"):
            return _sink_gate(c, a, b)
        if fn == "mul" and (_is_complex(a) or _is_complex(b)):
            return _complex_mul(c, a, b)
        if fn == "mul" and (_pending(c, a, "sink_scale") or _pending(c, b, "sink_scale")):
            return _sink_scaled(c, *((b, a) if _pending(c, a, "sink_scale") else (a, b)))
        if _scores(c, a) or _scores(c, b):
            return _scores_op(c, fn, a, b)
        # a one-element constant (a 0-d buffer: xIELU's beta and eps) is a scalar operand
        a, b = (_const_scalar(c, v) if isinstance(v, torch.fx.Node) else v for v in (a, b))
        if isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node):
            an, bn, out = c.t(a), c.t(b), c.out_type()
            if c.type(an).shape != out.shape:  # the backends take the output's shape from input 0
                if fn in COMMUTATIVE and c.type(bn).shape == out.shape:
                    an, bn = bn, an
                else:  # (T, 1) - (T, E): the first operand broadcast first (a copy)
                    an = c.emit("expand", [an], {"shape": list(out.shape)}, TensorType(out.shape, c.type(an).dtype),
                                "broadcast")
            return c.emit("binary", [an, bn], {"fn": fn})
        if isinstance(a, torch.fx.Node):
            return c.emit("binary", [c.t(a)], {"fn": fn, "scalar": float(b)})
        # scalar OP tensor: rewrite the commutative ones, reverse the rest
        if fn in ("add", "mul"):
            return c.emit("binary", [c.t(b)], {"fn": fn, "scalar": float(a)})
        return c.emit("binary", [c.t(b)], {"fn": fn, "scalar": float(a), "reverse": True})

    return conv


def _in_place(conv, fn: str):
    """x += y (x.relu_(), scores.masked_fill_, any op's in-place twin) as x + y. The tracer gives the
    result to every later reader of the tensor x, but a view taken of x before (or a node reading x
    after) would see it in eager PyTorch and x here: refused by name. So is a write into a view of
    another tensor (`v = x[..., 4:]; v += 1`) that is read afterwards: x would change too."""

    def lower_in_place(c, a, *args, **kw):
        if isinstance(a, torch.fx.Node):
            for u in a.users:
                aliases = isinstance(u.target, torch._ops.OpOverload) and any(
                    r.alias_info is not None for r in u.target._schema.returns)
                if u is not c.fx and (aliases or c.order[u] > c.order[c.fx]):
                    c.fail(f"in-place {fn} of a value read again afterwards (%{u.name}, a view or a later read)")
            base = a
            while (up := viewed_tensor(base)) is not None:
                base = up
            if base is not a and (late := [u for u in _readers(base) if c.order.get(u, -1) > c.order[c.fx]]):
                c.fail(f"in-place {fn} of a view of %{base.name}, which %{late[0].name} reads afterwards (it would "
                       "see the write)")
        return conv(c, a, *args, **kw)

    return lower_in_place


def _readers(base: torch.fx.Node) -> list[torch.fx.Node]:
    """The nodes that read `base` or any view of it, other than to take another view."""
    out, stack = [], [base]
    while stack:
        for u in stack.pop().users:
            (stack if viewed_tensor(u) is not None else out).append(u)
    return out


def _rsub(c, a, b, *, alpha=1):
    if alpha != 1 or isinstance(b, torch.fx.Node):
        c.fail("rsub form not supported")
    return c.emit("binary", [c.t(a)], {"fn": "sub", "scalar": float(b), "reverse": True})


def _unary(fn):
    def conv(c, x):
        if fn == "sigmoid" and _pending(c, x, "sink_gate"):  # sigmoid(lse - sink): the sink's scale
            return _Pending("sink_scale", c.env[x].name, **c.env[x].attrs)
        return c.emit("unary", [c.t(x)], {"fn": fn})
    return conv


def _pending(c, x, kind: str) -> bool:
    return isinstance(x, torch.fx.Node) and isinstance(c.env.get(x), _Pending) and c.env[x].kind == kind


# --- attention sinks as Granite-SWA writes them: out = softmax(s) @ v * sigmoid(logsumexp(s) - sink),
# which is softmax with the sink as one more logit, of no value ---------------------------------------

def _logsumexp(c, x, dims, keepdim=False):
    """Of attention scores, an attention sink's scale (below); of anything else, along the last axis,
    max + log(sum(exp(x - max))) (log_softmax is x - logsumexp(x))."""
    if _scores(c, x):
        if keepdim or [_axis(d, 4) for d in dims] != [3]:
            c.fail("logsumexp of attention scores other than as an attention sink's scale (over the keys, not kept)")
        return _Pending("lse", c.env[x].name, **c.env[x].attrs)
    name = c.t(x)
    t = c.type(name)
    if [_axis(d, len(t.shape)) for d in dims] != [len(t.shape) - 1] or t.seq_axis == len(t.shape) - 1:
        c.fail("logsumexp other than along the last (per-token) axis")
    kept = TensorType(t.shape[:-1] + (1,), "f32")
    top = c.emit("topk", [name], {"k": 1, "indices": False}, kept, "max")
    y = c.emit("binary", [name, top], {"fn": "sub"}, t, "shifted")
    y = c.emit("unary", [y], {"fn": "exp"}, t, "exp")
    y = c.emit("mean", [y], {"axis": len(t.shape) - 1}, kept, "mean")
    y = c.emit("unary", [y], {"fn": "log"}, kept, "log")
    y = c.emit("binary", [y, top], {"fn": "add"}, kept, "log_sum")
    y = c.emit("binary", [y], {"fn": "add", "scalar": math.log(t.shape[-1])}, kept, "" if keepdim else "kept")
    return y if keepdim else c.emit("reshape", [y], {"shape": list(c.out_type().shape)})


def _sink_gate(c, lse, sink) -> _Pending:
    """logsumexp(scores) - sinks[h]."""
    p = c.env[lse]
    values = c.weight_values(c.t(sink)) if isinstance(sink, torch.fx.Node) else None
    if values is None or values.size != _heads(c, p) or p.attrs["sinks"] is not None:
        c.fail("logsumexp of attention scores minus something other than a sink (one parameter value a head)")
    return _Pending("sink_gate", p.name, **{**p.attrs, "sinks": [float(v) for v in values]})


def _sink_scaled(c, y, scale) -> str:
    """attention output * sigmoid(logsumexp(scores) - sinks): the attention op of those scores, with sinks."""
    p = c.env[scale]
    node = next((n for n in c.g.nodes if n.name == c.env.get(y)), None) if isinstance(y, torch.fx.Node) else None
    same = (node is not None and node.op == "attention" and node.inputs[:2] == [p.attrs["q"], p.attrs["k"]]
            and node.attrs["scale"] == p.attrs["scale"] and node.attrs["window"] == (p.attrs["window"] or 0)
            and all(node.attrs.get(k) == p.attrs[k] for k in ("softcap", "alibi")))
    if not same or len(y.users) != 1 or node.attrs.get("sinks"):
        c.fail("an attention sink's scale applied to anything but the output of attention over the same scores")
    node.attrs["sinks"] = p.attrs["sinks"]
    return node.name


def _const_scalar(c, a):
    """A _Const fx node of one element as its number (a buffer: never a parameter, whose value R_q
    takes from the IR's weights), else the node itself."""
    if isinstance(c.env.get(a), _Const):
        v = _constant_scalar(c, a)
        if v is not None:
            return v
    return a


def _compare(fn):
    """x > y and the other comparisons: 1.0 or 0.0 in f32 (a mask that where and arithmetic take)."""
    return lambda c, a, b: _as_mask(c, _binary(fn)(c, a, b))


def _as_mask(c, y: str) -> str:
    """Node y typed f32: the IR's form of the model's bool (torch's dtype of the fx node)."""
    c.g.node(y).type = TensorType(c.type(y).shape, "f32")
    return y


def _finite(c, v) -> float:
    """A fill as the backends hold it: -inf and inf as float32's lowest and largest (WGSL may assume
    no infinities, and the emitted kernels write finite literals). Each still sorts where the infinity
    would and is -inf to a softmax (exp underflows to 0); times 0 it is 0, not NaN."""
    v = float(v)
    if math.isnan(v):
        c.fail("a NaN fill")
    return float(np.clip(v, np.finfo(np.float32).min, np.finfo(np.float32).max))


def _where_values(c, cond, x, other):
    """torch.where(cond, x, other) on activations: pick(x, cond) + pick_not(other, cond), each exactly
    0 where not chosen (elementwise.py)."""
    if not _is_mask(c, cond):
        c.fail("where with a condition that is not a comparison of activations")
    cn = c.t(cond)
    terms = [(v, fn) for v, fn in ((x, "pick"), (other, "pick_not"))
             if isinstance(v, torch.fx.Node) or float(v) != 0.0]  # a 0.0 branch is what pick leaves anyway
    parts = []
    for v, fn in terms:
        part = fn if len(terms) == 2 else ""  # the last node carries the fx node's own name
        v = _const_scalar(c, v) if isinstance(v, torch.fx.Node) else v
        if isinstance(v, torch.fx.Node):
            parts.append(c.emit("binary", [c.t(v), cn], {"fn": fn}, c.out_type(), part))
        else:  # scalar OP cond, the scalar first
            parts.append(c.emit("binary", [cn], {"fn": fn, "scalar": _finite(c, v), "reverse": True}, c.out_type(),
                                part))
    if not parts:
        return c.emit("binary", [cn], {"fn": "mul", "scalar": 0.0}, c.out_type())
    return parts[0] if len(parts) == 1 else c.emit("binary", parts, {"fn": "add"})


def _clamp(c, x, lo=None, hi=None):
    """clamp(x, lo, hi) as maximum then minimum (torch's order: hi wins where lo > hi)."""
    bounds = [(b, fn) for b, fn in ((lo, "maximum"), (hi, "minimum")) if b is not None]
    if not bounds:
        c.fail("clamp without a bound")
    y = c.t(x)
    for i, (bound, fn) in enumerate(bounds):
        part = fn if i < len(bounds) - 1 else ""  # the last node carries the fx node's own name
        bound = _const_scalar(c, bound) if isinstance(bound, torch.fx.Node) else bound
        if isinstance(bound, torch.fx.Node):
            y = c.emit("binary", [y, c.t(bound)], {"fn": fn}, part=part)
        else:
            y = c.emit("binary", [y], {"fn": fn, "scalar": float(bound)}, part=part)
    return y


def _softplus(c, x, beta=1, threshold=20):
    if beta != 1 or threshold != 20:
        c.fail(f"softplus with beta={beta}, threshold={threshold} (only torch's defaults, 1 and 20, are defined)")
    return c.emit("unary", [c.t(x)], {"fn": "softplus"})


def _elu(c, x, alpha=1, scale=1, input_scale=1):
    """torch's elu: scale * x where x > 0, else scale * alpha * (exp(input_scale * x) - 1). That is
    (scale / s) * elu(s * x, alpha * s) for s = input_scale > 0, so selu (a scale) and celu
    (s = 1 / alpha) are the IR's elu between two multiplies."""
    if input_scale <= 0:
        c.fail(f"elu with input_scale={input_scale} (a positive one is defined)")
    name, outer = c.t(x), scale / input_scale
    if input_scale != 1:
        name = c.emit("binary", [name], {"fn": "mul", "scalar": float(input_scale)}, part="scaled")
    y = c.emit("binary", [name], {"fn": "elu", "scalar": float(alpha * input_scale)}, part="elu" if outer != 1 else "")
    return c.emit("binary", [y], {"fn": "mul", "scalar": float(outer)}) if outer != 1 else y


def _leaky_relu(c, x, negative_slope=0.01):
    return c.emit("binary", [c.t(x)], {"fn": "leaky_relu", "scalar": float(negative_slope)})


def _gelu(c, x, *, approximate="none"):
    return c.emit("unary", [c.t(x)], {"fn": "gelu" if approximate == "none" else "gelu_tanh"})


def _pow(c, x, exponent):
    if isinstance(exponent, torch.fx.Node):
        c.fail("pow with a tensor exponent is not supported")
    if float(exponent) == 2.0:
        return c.emit("unary", [c.t(x)], {"fn": "square"})
    return c.emit("binary", [c.t(x)], {"fn": "pow", "scalar": float(exponent)})


def _to(c, x, *args, **kw):
    if _scores(c, x) or _probs(c, x) or any(_pending(c, x, k) for k in ("lse", "sink_gate", "sink_scale", "one_hot")):
        return c.env[x]
    name = c.t(x)
    out = c.out_type()
    if out.dtype == c.type(name).dtype:
        return name
    if _is_mask(c, x) and c.fx.meta["val"].dtype in (torch.bool, torch.float32):
        return name  # a comparison's 1.0 / 0.0 is its bool, and its float
    if c.fx.meta["val"].dtype == torch.bool and c.type(name).dtype == "f32":
        return _as_mask(c, c.emit("binary", [name], {"fn": "ne", "scalar": 0.0}))  # .bool() of a float: x != 0
    return c.emit("cast", [name], {"dtype": out.dtype})


def _is_mask(c, x) -> bool:
    """A bool value of the model that the IR holds as 1.0 / 0.0 in f32 (a comparison, a logical op)."""
    return isinstance(x, torch.fx.Node) and x.meta["val"].dtype == torch.bool and c.type(c.t(x)).dtype == "f32"


def _logical(fn):
    """logical_and / or / not of comparisons, on their 1.0 / 0.0: mul, maximum, 1 - c."""
    def conv(c, a, b=None):
        if not all(_is_mask(c, v) for v in (a, b) if v is not None):
            c.fail(f"logical_{fn} of values that are not comparisons of activations")
        if fn == "not":
            return _as_mask(c, c.emit("binary", [c.t(a)], {"fn": "sub", "scalar": 1.0, "reverse": True}))
        return _as_mask(c, c.emit("binary", [c.t(a), c.t(b)], {"fn": {"and": "mul", "or": "maximum"}[fn]}))

    return conv


def _alias(c, x, *args, **kw):
    if _scores(c, x) or _probs(c, x):
        return c.env[x]
    return c.t(x)


def _mean(c, x, dims, keepdim=False, *, dtype=None):
    """mean over the given axes: one `mean` per axis (keepdim), then the fx node's shape."""
    name = c.t(x)
    t = c.type(name)
    dims = sorted({_axis(d, len(t.shape)) for d in (dims if isinstance(dims, (list, tuple)) else [dims])})
    if t.seq_axis in dims:
        c.fail("a mean along the sequence axis (sequence-mixing the compiler does not understand)")
    shape = t.shape
    for i, d in enumerate(dims):
        shape = shape[:d] + (1,) + shape[d + 1:]
        last = i == len(dims) - 1 and keepdim  # the fx node's own name on its value
        name = c.emit("mean", [name], {"axis": d}, TensorType(shape, "f32"), "" if last else f"mean{d}")
    return name if keepdim else c.emit("reshape", [name], {"shape": list(c.out_type().shape)})


def _sum(c, x, dims, keepdim=False, *, dtype=None):
    """sum over one axis: its mean times its length (MoE routers renormalize their top-k weights)."""
    t = c.type(c.t(x))
    dims = [_axis(d, len(t.shape)) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    if len(dims) != 1:
        c.fail("a sum over several axes is not supported")
    if dims[0] == t.seq_axis:
        c.fail("a sum along the sequence axis (sequence-mixing the compiler does not understand)")
    kept = TensorType(t.shape[:dims[0]] + (1,) + t.shape[dims[0] + 1:], "f32")
    m = c.emit("mean", [c.t(x)], {"axis": dims[0]}, kept, part="mean")
    y = c.emit("binary", [m], {"fn": "mul", "scalar": float(t.shape[dims[0]])}, kept, part="" if keepdim else "sum")
    return y if keepdim else c.emit("reshape", [y], {"shape": list(c.out_type().shape)})


def _vector_norm(c, x, ord=2, dim=None, keepdim=False, *, dtype=None):
    """The 2-norm over one axis (F.normalize: l2 qk-norm, x-transformers' RMSNorm as
    normalize(x) * sqrt(d) * g): sqrt(mean(x^2) * n)."""
    t = c.type(c.t(x))
    dims = [_axis(d, len(t.shape)) for d in (dim if isinstance(dim, (list, tuple)) else [dim])] if dim is not None else []
    if ord != 2 or len(dims) != 1:
        c.fail(f"a vector norm other than the 2-norm over one axis (ord={ord}, dim={dim})")
    if dims[0] == t.seq_axis:
        c.fail("a norm along the sequence axis (sequence-mixing the compiler does not understand)")
    kept = TensorType(t.shape[:dims[0]] + (1,) + t.shape[dims[0] + 1:], "f32")
    y = c.emit("unary", [c.t(x)], {"fn": "square"}, t, part="square")
    y = c.emit("mean", [y], {"axis": dims[0]}, kept, part="mean")
    y = c.emit("binary", [y], {"fn": "mul", "scalar": float(t.shape[dims[0]])}, kept, part="sum")
    y = c.emit("unary", [y], {"fn": "sqrt"}, kept, part="" if keepdim else "norm")
    return y if keepdim else c.emit("reshape", [y], {"shape": list(c.out_type().shape)})


def _topk(c, x, k, dim=-1, largest=True, sorted=True):
    """torch.topk along the last axis: (values, indices), the indices as f32 (the runtimes' activations)."""
    name = c.t(x)
    t = c.type(name)
    if _axis(dim, len(t.shape)) != len(t.shape) - 1 or t.seq_axis == len(t.shape) - 1:
        c.fail("topk along an axis other than the last (per-token) one")
    if not largest:
        c.fail("topk of the smallest values (largest=False)")
    out = TensorType(t.shape[:-1] + (int(k),), "f32")
    return [c.emit("topk", [name], {"k": int(k), "indices": i}, out, part)
            for i, part in ((False, "values"), (True, "indices"))]


def _amax(c, x, dims=(), keepdim=False):
    """x.amax(dim): the values of torch.max(x, dim) (a hand-written softmax's row max)."""
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    if len(dims) != 1:
        c.fail(f"amax over {len(dims) or 'all'} axes (one per-token axis is supported)")
    return _max_dim(c, x, dims[0], keepdim)[0]


def _max_dim(c, x, dim, keepdim=False):
    """torch.max(x, dim) along the last axis: topk of 1, (values, indices); of attention scores, their
    row max, which only a subtraction from them may use (GPT-OSS)."""
    if _scores(c, x) and keepdim and _axis(dim, 4) == 3:
        return [_Pending("row_max", c.env[x].name), None]
    parts = _topk(c, x, 1, dim)
    if keepdim:
        return parts
    shape = list(c.type(parts[0]).shape[:-1])
    return [c.emit("reshape", [p], {"shape": shape}, TensorType(tuple(shape), "f32"), f"{part}_squeezed")
            for p, part in zip(parts, ("values", "indices"))]


def _softmax(c, x, dim, *rest, **kw):
    if _scores(c, x):
        p = c.env[x]
        if _axis(dim, 4) != 3:
            c.fail("a softmax of attention scores over the query axis")
        if p.attrs.get("zeroed") is not None:
            c.fail("a softmax of attention scores multiplied by a mask with no fill added (a zeroed score still "
                   "counts)")
        if p.attrs["window"] is None:
            c.fail("attention without a causal mask mixes future positions (sequence-mixing the compiler does not "
                   "understand)")
        return _Pending("probs", p.name, **p.attrs)
    t = c.type(c.t(x))
    dim = _axis(dim, len(t.shape))
    if dim == t.seq_axis:
        c.fail("a softmax along the sequence axis (sequence-mixing the compiler does not understand)")
    return c.emit("softmax", [c.t(x)], {"axis": dim})


def _sdpa(c, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, *, enable_gqa=False):
    window, terms = 0, {}
    if any(c.type(c.t(t)).seq_axis is None for t in (q, k, v)):
        c.fail("attention whose queries, keys or values are not the sequence's (cross-attention to a fixed memory)")
    if attn_mask is not None:
        if is_causal:
            c.fail("attention with both a mask and is_causal")
        bias = c.score_bias(attn_mask, c.type(c.t(q)).shape[1])
        if bias is not None:  # Falcon's ALiBi in its mask
            if bias[1] is None:
                c.fail("attention with a bias and no causal mask mixes future positions")
            terms["alibi"], window = bias
        else:
            window = c.mask_window(attn_mask, additive=attn_mask.meta["val"].is_floating_point())
    elif not is_causal:
        c.fail("non-causal attention mixes future positions (sequence-mixing the compiler does not understand)")
    if dropout_p:
        c.fail("attention dropout is not supported")
    qt, kt = c.type(c.t(q)), c.type(c.t(k))
    if qt.seq_axis != 2 or kt.seq_axis != 2 or len(qt.shape) != 4:
        c.fail("attention expects (B, H, T, D) operands")
    hq, hkv, d = qt.shape[1], kt.shape[1], qt.shape[3]
    if hq % hkv:
        c.fail(f"attention with {hq} query heads and {hkv} KV heads")
    return _attention(c, c.t(q), c.t(k), c.t(v), {
        "layout": "BHTD", "n_head": hq, "n_kv_head": hkv,
        "scale": float(scale) if scale is not None else float(1.0 / np.sqrt(d)), "window": window, **terms,
    })


def _attention(c, q: str, k: str, v: str, attrs: dict, part: str = "") -> str:
    """The attention op, whose q/k and v heads have one size (head_dim) on every backend: the smaller
    side padded with zeros (DeepSeek's MLA: q and k 192 wide, v 128), which changes no score and
    only adds output columns of zeros, sliced off."""
    d, dv = c.type(q).shape[-1], c.type(v).shape[-1]
    D = max(d, dv)
    if d < D:
        q, k = _zero_pad(c, q, D, "q_pad"), _zero_pad(c, k, D, "k_pad")
    if dv < D:
        v = _zero_pad(c, v, D, "v_pad")
    shape = tuple(c.type(q).shape[:-1])
    y = c.emit("attention", [q, k, v], {**attrs, "head_dim": D}, TensorType(shape + (D,), "f32"),
               "padded" if dv < D else part)
    if dv < D:
        y = c.emit("slice", [y], {"axis": len(shape), "start": 0, "end": dv}, TensorType(shape + (dv,), "f32"), part)
    return y


def _pad(c, x, pad, mode="constant", value=None):
    """F.pad with a constant: along the sequence, (k, -k) is a token shift by k positions (each row
    k rows later, zeros first); along any other axis, a slice where negative and a block of the
    value concatenated where positive."""
    if mode != "constant":
        c.fail(f"a pad of mode {mode!r} (only constant padding is understood)")
    name = c.t(x)
    shape = tuple(c.type(name).shape)
    fill = float(value or 0.0)
    for i in range(len(pad) // 2):
        axis, (before, after) = len(shape) - 1 - i, (int(c.dim(p)) for p in pad[2 * i:2 * i + 2])
        if shape[axis] == SEQ:
            if before > 0 and after == 0 and not fill and not any(pad[:2 * i]) and not any(pad[2 * i + 2:]):
                return _Pending("left_padded", name, axis=axis, count=before)  # a causal conv1d's input
            if before + after or before < 0 or fill:
                c.fail(f"a pad of ({before}, {after}) along the sequence axis (only a shift of zeros, (k, -k), or "
                       "K - 1 zeros in front of a causal conv1d keeps each position's row its own past)")
            for k in range(before):
                name = c.emit("token_shift", [name], {"axis": axis}, TensorType(shape, "f32"), f"shift{k}")
            continue
        for side, n in (("before", before), ("after", after)):
            if n < 0:
                name = _span(c, name, axis, *((-n, shape[axis]) if side == "before" else (0, shape[axis] + n)),
                             f"{side}{axis}")
                shape = tuple(c.type(name).shape)
            elif n > 0:
                block = shape[:axis] + (n,) + shape[axis + 1:]
                const = c.g.fresh(f"{c.fx.name}.pad")
                c.g.weights[const] = Weight((n,), "f32", np.full(n, fill, np.float32), None, "derived")
                one = (1,) * axis + (n,) + (1,) * (len(shape) - axis - 1)
                z = c.emit("reshape", [const], {"shape": list(one)}, TensorType(one, "f32"), f"{side}{axis}_row")
                z = c.emit("expand", [z], {"shape": list(block)}, TensorType(block, "f32"), f"{side}{axis}_fill")
                shape = shape[:axis] + (shape[axis] + n,) + shape[axis + 1:]
                name = c.emit("concat", [z, name] if side == "before" else [name, z], {"axis": axis},
                              TensorType(shape, "f32"), f"{side}{axis}")
    return c.emit("reshape", [name], {"shape": list(c.out_type().shape)})


def _zero_pad(c, x: str, width: int, part: str) -> str:
    """x with zeros appended along its last axis up to `width`: a weight of zeros broadcast, concatenated."""
    t = c.type(x)
    pad = width - t.shape[-1]
    zeros = c.g.fresh(f"{part}.zeros")
    c.g.weights[zeros] = Weight((pad,), "f32", np.zeros(pad, np.float32), None, "derived")
    one = (1,) * (len(t.shape) - 1) + (pad,)
    z = c.emit("reshape", [zeros], {"shape": list(one)}, TensorType(one, "f32"), part + "_row")
    shape = tuple(t.shape[:-1]) + (pad,)
    z = c.emit("expand", [z], {"shape": list(shape)}, TensorType(shape, "f32"), part + "_zeros")
    return c.emit("concat", [x, z], {"axis": len(shape) - 1}, TensorType(tuple(t.shape[:-1]) + (width,), "f32"), part)


def _new_zeros(c, x, size, *rest, **kw):
    return _Pending("zeros", shape=[int(c.dim(d)) for d in size])


def _new_empty(c, x, size, *rest, **kw):
    """A tensor the model fills by copying into slices of it (DeepSeek's k = [k_nope, k_rot]):
    pending until it is read, then the pieces concatenated (_assembled)."""
    return _Pending("empty", shape=[c.dim(d) for d in size], pieces=[])


def _copy_into(c, dst, src, non_blocking=False):
    """buffer[..., a:b].copy_(src) into a new_empty buffer: the piece is recorded."""
    if not _pending(c, dst, "piece") or not _pending(c, c.env[dst].attrs["base"], "empty"):
        c.fail("copy_ into anything but a slice of a new_empty tensor not read yet")
    p = c.env[dst]
    c.env[p.attrs["base"]].attrs["pieces"].append((p.attrs["axis"], p.attrs["span"], c.t(src)))
    return None


def _assembled(c, base: torch.fx.Node, p: _Pending) -> str:
    """A new_empty tensor, read for the first time: its pieces, disjoint along one axis and covering
    it, concatenated in order."""
    pieces = sorted(p.attrs["pieces"], key=lambda q: q[1])
    axes = {q[0] for q in pieces}
    ends = [0] + [q[1][1] for q in pieces]
    if len(axes) != 1 or [q[1][0] for q in pieces] != ends[:-1] or ends[-1] != p.shape[pieces[0][0]]:
        c.fail(f"%{base.name} (new_empty) is read before copies into it cover it once, along one axis")
    here, c.fx = c.fx, base
    try:
        names = []
        for i, (axis, (a, b), src) in enumerate(pieces):
            shape = tuple(b - a if d == axis else n for d, n in enumerate(p.shape))
            if tuple(c.type(src).shape) != shape:  # the copy broadcasts its source (k_rot over heads)
                src = c.emit("expand", [src], {"shape": list(shape)}, TensorType(shape, "f32"), f"piece{i}")
            names.append(src)
        return names[0] if len(names) == 1 else c.emit("concat", names, {"axis": pieces[0][0]},
                                                       TensorType(tuple(p.shape), "f32"))
    finally:
        c.fx = here


def _zeros_like(c, x, *rest, **kw):
    return _Pending("zeros", shape=list(c.type(c.t(x)).shape))


def _last_axis_rows(c, what: str, dim, *names: str) -> None:
    """gather/scatter along the last axis, every operand with the same leading (per-token) dims."""
    types = [c.type(n) for n in names]
    if _axis(dim, len(types[0].shape)) != len(types[0].shape) - 1 or types[0].seq_axis == len(types[0].shape) - 1:
        c.fail(f"{what} along an axis other than the last (per-token) one")
    if any(t.shape[:-1] != types[0].shape[:-1] for t in types):
        c.fail(f"{what} with an index whose leading dims differ from its input's")


def _gather(c, x, dim, index, *, sparse_grad=False):
    """torch.gather along the last axis by a topk's indices (a router's weights of its chosen experts)."""
    name, idx = c.t(x), c.t(index)
    _last_axis_rows(c, "gather", dim, name, idx)
    return c.emit("gather", [name, idx], {}, TensorType(c.type(idx).shape, "f32"))


def _scatter(c, x, dim, index, src=None, *, value=None, reduce=None):
    """x.scatter(-1, index, src or value) along the last axis: into zeros, a router's choice as a dense
    row (GLM-4-MoE's group mask); into a tensor, pick_not(x, where) + the same into zeros (PhiMoE's
    sparsemixer masking its first choice)."""
    if reduce is not None:
        c.fail("scatter with a reduction")
    zeros = _pending(c, x, "zeros")
    shape = tuple(c.env[x].shape) if zeros else c.type(c.t(x)).shape
    zeros = zeros or _all_zeros(c, c.t(x))
    idx = c.t(index)
    inputs = [idx]
    attrs = {"width": int(shape[-1])}
    if isinstance(src, torch.fx.Node):
        inputs.append(c.t(src))
    else:
        attrs["value"] = _finite(c, src if value is None else value)
    _last_axis_rows(c, "scatter", dim, *inputs)
    out = TensorType(shape, "f32")
    if len(shape) != len(c.type(idx).shape) or shape[:-1] != c.type(idx).shape[:-1]:
        c.fail("scatter with an index whose leading dims differ from its input's")
    if zeros:
        return c.emit("scatter", inputs, attrs, out)
    where = c.emit("scatter", [idx], {"width": attrs["width"], "value": 1.0}, out, "where")
    kept = c.emit("binary", [c.t(x), where], {"fn": "pick_not"}, out, "kept")
    return c.emit("binary", [kept, c.emit("scatter", inputs, attrs, out, "put")], {"fn": "add"})


def _all_zeros(c, name: str) -> bool:
    """Whether `name` is a constant that evaluated to zeros (`torch.zeros(T, E)`: a positions lookup of
    a table of zeros, or a weight of them)."""
    if name in c.g.inputs:
        return False
    if name not in c.g.weights and c.g.node(name).op == "positions":
        name = c.g.node(name).inputs[0]
    w = c.g.weights.get(name)
    return w is not None and w.dtype == "f32" and not np.any(np.asarray(w.data))


def _scattered_in_place(c, x, dim, index, src):
    """x.scatter_(...): the result, which is x from here on for every later reader of it."""
    c.env[x] = _scatter(c, x, dim, index, src)
    return c.env[x]


def _select(c, x, dim, index):
    name = c.t(x)
    t = c.type(name)
    dim = _axis(dim, len(t.shape))
    if t.shape[dim] == SEQ:
        c.fail("selecting one position of the sequence (sequence-mixing the compiler does not understand)")
    return _one_of(c, name, dim, int(index + t.shape[dim] if index < 0 else index))


def _span(c, name: str, axis: int, start: int, end: int, part: str = "") -> str:
    """name[..., start:end, ...] along axis."""
    t = c.type(name)
    shape = tuple(end - start if a == axis else d for a, d in enumerate(t.shape))
    return c.emit("slice", [name], {"axis": axis, "start": start, "end": end}, TensorType(shape, t.dtype), part)


def _one_of(c, name: str, axis: int, i: int, part: str = "") -> str:
    """name's index i along axis, that axis dropped: a slice, then a reshape."""
    t = c.type(name)
    one = tuple(1 if a == axis else d for a, d in enumerate(t.shape))
    out = TensorType(one[:axis] + one[axis + 1:], t.dtype)
    return c.emit("reshape", [_span(c, name, axis, i, i + 1, f"{part}slice")], {"shape": list(out.shape)}, out, part)


def _glu(c, x, dim=-1):
    """F.glu: the first half along dim times the sigmoid of the second."""
    name = c.t(x)
    t = c.type(name)
    d = _axis(dim, len(t.shape))
    if t.shape[d] == SEQ:
        c.fail("a glu along the sequence axis (sequence-mixing the compiler does not understand)")
    half = t.shape[d] // 2
    gate = c.emit("unary", [_span(c, name, d, half, 2 * half, "b")], {"fn": "sigmoid"}, c.out_type(), "gate")
    return c.emit("binary", [_span(c, name, d, 0, half, "a"), gate], {"fn": "mul"})


def _window_attention(c, q, k, v, window):
    qt, kt = c.type(c.t(q)), c.type(c.t(k))
    if qt.seq_axis != 1 or kt.seq_axis != 1 or len(qt.shape) != 4:
        c.fail("monologue::causal_attention expects (B, T, H, D) operands")
    return _attention(c, c.t(q), c.t(k), c.t(v), {
        "layout": "BTHD", "n_head": qt.shape[2], "n_kv_head": kt.shape[2],
        "scale": float(1.0 / np.sqrt(qt.shape[3])), "window": int(window),
    })


# --- attention written out: softmax(q @ k.transpose(-2, -1) * scale + mask) @ v --------------------
# The scores are never an IR value (they would be (T, T) per head): they stay pending through the
# scale, the mask and the softmax, and the product with v becomes one `attention` op.

def _scores(c, a) -> bool:
    return _pending(c, a, "scores")


def _probs(c, a) -> bool:
    return _pending(c, a, "probs")


def _sink_column(c, p: _Pending, column, dim) -> _Pending:
    """cat([scores, sinks], -1): GPT-OSS's sinks, a learned logit per head as one more column of the
    softmax, dropped after it (probs[..., :-1]). The column must be a parameter's, one value a head."""
    values = c.weight_values(c.t(column))
    if _axis(dim, 4) != 3 or values is None or values.size != _heads(c, p) or p.attrs["sinks"] is not None:
        c.fail("a concatenation to attention scores other than a sink column (one parameter value a head)")
    return _Pending("scores", p.name, **{**p.attrs, "sinks": [float(x) for x in values],
                                         "sink_column": True})


def _scores_op(c, fn, a, b):
    p, other = (c.env[a], b) if _scores(c, a) else (c.env[b], a)
    attrs = dict(p.attrs)
    if fn in ("mul", "div") and isinstance(other, (int, float)) and (fn == "mul" or _scores(c, a)):
        if attrs["sinks"] is not None:
            c.fail(f"attention scores {fn} {other!r} after the sink column")
        if attrs["softcap"] is not None and other <= 0:
            c.fail(f"attention scores {fn} {other!r} after a tanh (a logit softcap is a positive constant)")
        factor = other if fn == "mul" else 1.0 / other
        # score = softcap * tanh(q.k * scale / softcap) + alibi_h * (j - i): a factor scales every term
        attrs["scale"] = attrs["scale"] * factor
        if attrs["softcap"] is not None:
            attrs["softcap"] = attrs["softcap"] * factor
        if attrs["alibi"] is not None:
            attrs["alibi"] = [m * factor for m in attrs["alibi"]]
    elif fn == "mul" and attrs["window"] is None and attrs.get("zeroed") is None and isinstance(other, torch.fx.Node) \
            and isinstance(c.env.get(other), _Const):
        # GPT-1's (and the GPT-2 ports') w * b + -1e4 * (1 - b): b zeroes the scores of the keys the
        # fill added next must block
        attrs["zeroed"] = c.mask_window(other, additive=False, product=True)
    elif fn in ("add", "sub") and _scores(c, a) and attrs.get("zeroed") is not None:
        # the fill: 0 where b keeps a score, at most -1e4 where it zeroed one (exp(-1e4 - max) is 0 in
        # f32 for any score above -9896): the same causal mask (subtracted: w * b - 1e10 * (1 - b))
        if c.mask_window(other, additive=True, fill=BLOCKING_FILL, negate=fn == "sub") != attrs["zeroed"]:
            c.fail("attention scores times a mask plus a fill that blocks other keys than the mask zeroed")
        attrs["window"], attrs["zeroed"] = attrs["zeroed"], None
    elif fn == "add" or fn == "sub" and _scores(c, a) and isinstance(c.env.get(other), _Const):
        attrs = _score_term(c, attrs, other, _heads(c, p), -1.0 if fn == "sub" else 1.0)
    elif fn == "maximum" and (floor := _constant_scalar(c, other)) is not None and floor <= -1e30:
        pass  # XGLM's max(scores, float32's lowest): only a masked score is that low, and stays masked
    elif fn == "sub" and _scores(c, a) and isinstance(c.env.get(other), _Pending) and c.env[other].kind == "row_max" \
            and c.env[other].name == p.name:
        pass  # scores - their row max (GPT-OSS): the softmax takes it away anyway
    else:
        c.fail(f"attention scores {fn} {other!r} (only a scale, a tanh logit softcap, ALiBi and causal masks are "
               "understood)")
    return _Pending("scores", p.name, **attrs)


def _tanh(c, x):
    """tanh of attention scores is a logit softcap (Gemma 2: cap * tanh(scores / cap)) when no mask
    came before it: tanh(-inf) = -1 would let masked keys back in."""
    if not _scores(c, x):
        return c.emit("unary", [c.t(x)], {"fn": "tanh"})
    p = c.env[x]
    if p.attrs["window"] is not None or p.attrs["softcap"] is not None or p.attrs["alibi"] is not None:
        c.fail("tanh of attention scores after a mask, a bias or a tanh (only cap * tanh(scores / cap) before the "
               "causal mask is understood)")
    return _Pending("scores", p.name, **{**p.attrs, "softcap": 1.0})


def _heads(c, p) -> int:
    """The heads of pending scores: the dims in front of q's sequence axis, (1, H, T, D) or (H, T, D)."""
    qt = c.type(p.attrs["q"])
    return int(np.prod(qt.shape[:qt.seq_axis]))


def _baddbmm(c, bias, b1, b2, *, beta=1, alpha=1):
    """beta * bias + alpha * (b1 @ b2): Bloom's ALiBi scores, alibi.baddbmm(q, k.T, alpha=1/sqrt(d)),
    and nn.MultiheadAttention's mask.baddbmm(q, k.T) where it returns the weights too."""
    scores = _matmul(c, b1, b2)
    if not isinstance(scores, _Pending):
        c.fail("baddbmm other than attention's bias + q @ k.transpose(-2, -1)")
    p = _Pending("scores", scores.name, **{**scores.attrs, "scale": scores.attrs["scale"] * alpha})
    if beta == 0:
        return p
    return _Pending("scores", p.name, **_score_term(c, dict(p.attrs), bias, _heads(c, p), beta))


def _score_term(c, attrs: dict, term, heads: int, factor: float) -> dict:
    """The attrs of scores + factor * term, where term is ALiBi (slopes per head, maybe with blocked
    keys: Falcon's mask) or a causal mask (subtracted where factor < 0)."""
    bias = c.score_bias(term, heads) if factor > 0 else None
    if bias is None:
        attrs["window"] = _both(attrs["window"], c.mask_window(term, additive=True, negate=factor < 0))
        return attrs
    slopes, window = bias
    slopes = [m * factor for m in slopes]
    attrs["alibi"] = slopes if attrs["alibi"] is None else [a + b for a, b in zip(attrs["alibi"], slopes)]
    if window is not None:
        attrs["window"] = _both(attrs["window"], window)
    return attrs


# A score replaced by a fill at or below this is a blocked key, as -inf is: exp(fill - max) is 0 in
# f32 for any row whose largest score is above -9896 (-inf, float32's lowest as MPT writes it, and the
# -1e9 and -1e4 of tutorials and GPT-1 alike)
BLOCKING_FILL = -1e4


def _masked_fill(c, x, mask, value):
    if not _scores(c, x):
        if _is_mask(c, mask):  # on activations: where(mask, value, x) (GLM-4-MoE's router, -inf out of group)
            return _where_values(c, mask, value, x)
        c.fail("masked_fill of activations with a mask that is not a comparison of activations")
    p = c.env[x]
    if float(value) > BLOCKING_FILL:
        c.fail(f"masked_fill of attention scores other than a causal mask with a fill of at most {BLOCKING_FILL:g}")
    window = _both(p.attrs["window"], c.mask_window(mask, additive=False, invert=True))
    return _Pending("scores", p.name, **{**p.attrs, "window": window})


def _where(c, cond, x, other):
    """torch.where(causal mask, scores, fill): GPT-Neo's eager attention (fill: float32's lowest); on
    activations, _where_values."""
    if not _scores(c, x):
        return _where_values(c, cond, x, other)
    p, fill = c.env[x], _constant_scalar(c, other)
    if fill is None or fill > BLOCKING_FILL:
        c.fail(f"where on attention scores other than a causal mask and a fill of at most {BLOCKING_FILL:g}")
    window = _both(p.attrs["window"], c.mask_window(cond, additive=False))
    return _Pending("scores", p.name, **{**p.attrs, "window": window})


def _both(a: int | None, b: int) -> int:
    """The window of two causal masks applied one after the other (None: no mask yet; 0: all keys)."""
    if a is None:
        return b
    return min(w for w in (a, b) if w) if a or b else 0


def _constant_scalar(c, a) -> float | None:
    """The value of a one-element constant argument (a number, a 0-d buffer or constant), else None."""
    if isinstance(a, (int, float)):
        return float(a)
    if not isinstance(a, torch.fx.Node):
        return None
    v = c.env.get(a)
    if isinstance(v, _Const):
        value = c.evaluator.value(a, c.tmax)
    elif isinstance(v, str) and v in c.g.weights:
        value = torch.from_numpy(np.asarray(c.g.weights[v].data))
    else:
        return None
    return float(value.reshape(-1)[0]) if isinstance(value, torch.Tensor) and value.numel() == 1 else None


def _one_hot(c, ids, num_classes=-1):
    """F.one_hot(ids, V): pending, for the product with a weight that makes it an embedding."""
    if c.env.get(ids) != IDS or num_classes < 1:
        c.fail("one_hot other than of the token ids, with a given number of classes")
    return _Pending("one_hot", IDS, rows=int(num_classes))


def _one_hot_product(c, one_hot, weight, transpose=False) -> str:
    """one_hot(ids, V) @ W (V, D) (or F.linear by a (D, V) weight: transposed) is W's rows at the
    ids: the embedding of W."""
    name = c.weight(c.t(weight), transpose)
    rows = c.type(name).shape[0] if name is not None else None
    if rows != c.env[one_hot].attrs["rows"]:
        c.fail("the tokens' one-hot vectors times something other than a weight of one row per class")
    return c.emit("embedding", [name, IDS])


def _matmul(c, a, b, part=""):
    if _pending(c, a, "one_hot"):
        return _one_hot_product(c, a, b)
    if isinstance(a, _Pending) or _probs(c, a):
        p = a if isinstance(a, _Pending) else c.env[a]
        q, k, v = p.attrs["q"], p.attrs["k"], b if isinstance(b, str) else c.t(b)
        if len(c.type(q).shape) == 3:  # (N, T, hs): one head (N = B = 1) or Bloom's B * H heads, as (1, N, T, hs)
            # (v may be (B, H, T, hs) already: scores by bmm over folded heads, viewed back as (B, H, T, T))
            q, k, v = (c.emit("reshape", [n], {"shape": [1, c.type(n).shape[0], SEQ, c.type(n).shape[2]]},
                              TensorType((1, c.type(n).shape[0], SEQ, c.type(n).shape[2]), "f32"), part)
                       if len(c.type(n).shape) == 3 else n for n, part in ((q, "q"), (k, "k"), (v, "v")))
            y = _matmul(c, _Pending("probs", p.name, **{**p.attrs, "q": q, "k": k}), v, "heads")
            return c.emit("reshape", [y], {"shape": list(c.out_type().shape)})
        qt, kt, vt = (c.type(n) for n in (q, k, v))
        if not (len(qt.shape) == len(kt.shape) == len(vt.shape) == 4 and qt.seq_axis == kt.seq_axis == vt.seq_axis == 2):
            c.fail("attention expects (B, H, T, D) operands")
        hq, hkv = qt.shape[1], kt.shape[1]
        if hq % hkv or vt.shape[1] != hkv:
            c.fail(f"attention with {hq} query heads and {hkv} KV heads")
        terms = {"softcap": float(p.attrs["softcap"])} if p.attrs["softcap"] is not None else {}
        if p.attrs["alibi"] is not None:
            terms["alibi"] = [float(m) for m in p.attrs["alibi"]]
        if p.attrs.get("sink_column"):
            c.fail("attention probabilities @ v with the sink column still in them (probs[..., :-1] drops it)")
        if p.attrs.get("sinks") is not None:
            terms["sinks"] = p.attrs["sinks"]
        attrs = {"layout": "BHTD", "n_head": hq, "n_kv_head": hkv,
                 "scale": float(p.attrs["scale"]), "window": p.attrs["window"] or 0, **terms}
        return _attention(c, q, k, v, attrs, part)
    an = c.t(a)
    bn = b if isinstance(b, str) else c.t(b)
    at, bt = c.type(an), c.type(bn)
    if bt.shape and bt.shape[-1] == SEQ:
        # q @ k.T: k.T the transpose of a (B, H, T, D) or (B, T, D) tensor, q's sequence axis its row axis
        kn = c.g.node(bn) if bn not in c.g.weights else None
        r = len(at.shape)
        swap = list(range(r - 2)) + [r - 1, r - 2]
        if kn is None or kn.op != "permute" or at.seq_axis != r - 2 or r not in (3, 4):
            c.fail("a product over the sequence axis other than attention's q @ k.transpose(-2, -1)")
        k = kn.inputs[0]
        if kn.attrs["perm"] != swap:  # k.T made by one permute of (B, T, H, D) (GPT-1's permute(0, 2, 3, 1))
            perm = kn.attrs["perm"][:-2] + kn.attrs["perm"][:-3:-1]
            kt = c.type(k)
            k = c.emit("permute", [k], {"perm": perm}, TensorType(tuple(kt.shape[p] for p in perm), kt.dtype), "k")
        return _Pending("scores", an, q=an, k=k, scale=1.0, window=None, softcap=None, alibi=None,
                        sinks=None, sink_column=False)
    if bn in c.g.weights and len(bt.shape) == 2:
        return c.emit("linear", [an, _transposed(c, bn)], part=part)
    if len(bt.shape) == 2 and (w := c.weight(bn, transpose=True)) is not None:
        return c.emit("linear", [an, w], part=part)  # x @ W[e] (GPT-OSS's experts)
    kn = c.g.node(bn)
    if kn.op == "permute" and kn.attrs["perm"] == [1, 0] and kn.inputs[0] in c.g.weights:
        return c.emit("linear", [an, kn.inputs[0]], part=part)  # x @ W.T (Falcon): W is linear's (N, K)
    c.fail("a matrix product of two activations (only attention's q @ k.T and probs @ v are understood)")


def _transposed(c, w: str) -> str:
    """W.T of a (K, N) parameter used as x @ W (GPT-2's Conv1D): the (N, K) weight `linear` reads."""
    name = w + ".T"
    if name not in c.g.weights:
        src = c.g.weights[w]
        c.g.weights[name] = Weight(tuple(src.shape[::-1]), "f32", np.ascontiguousarray(np.asarray(src.data).T), None,
                                   src.role)
    return name


def _addmm(c, bias, x, w, *, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        c.fail("addmm with alpha or beta other than 1")
    y = _matmul(c, x, w, "mm")
    return c.emit("binary", [y, c.t(bias)], {"fn": "add"})


def _split(c, x, size, dim=0):
    name = c.t(x)
    t = c.type(name)
    dim = _axis(dim, len(t.shape))
    if t.shape[dim] == SEQ:
        c.fail("a split along the sequence axis (sequence-mixing the compiler does not understand)")
    sizes = [size] * -(-t.shape[dim] // size) if isinstance(size, int) else list(size)
    out, start = [], 0
    for s in sizes:
        end = min(start + s, t.shape[dim])
        shape = tuple(end - start if i == dim else d for i, d in enumerate(t.shape))
        out.append(c.emit("slice", [name], {"axis": dim, "start": start, "end": end}, TensorType(shape, t.dtype)))
        start = end
    return out


def _chunk(c, x, chunks, dim=0):
    t = c.type(c.t(x))
    return _split(c, x, -(-t.shape[_axis(dim, len(t.shape))] // chunks), dim)


def _unbind(c, x, dim=0):
    """x.unbind(dim): each index along dim, that axis dropped (DeepSeek-V4's `scale.unbind(0)`)."""
    name = c.t(x)
    t = c.type(name)
    dim = _axis(dim, len(t.shape))
    if t.shape[dim] == SEQ:
        c.fail("an unbind along the sequence axis (sequence-mixing the compiler does not understand)")
    return [_one_of(c, name, dim, i, f"item{i}") for i in range(t.shape[dim])]


def _getitem(c, parts, i):
    vals = c.env.get(parts)
    if not isinstance(vals, list):
        c.fail("getitem of a value that is not a list of tensors")
    return vals[i]


def _sym_size(c, x, dim):
    return c.type(c.t(x)).shape[dim]


def _skip(c, *args, **kw):
    return None


# ATen op -> converter. This table is the op coverage of the compiler.
CONVERTERS: dict[object, Callable] = {
    aten.embedding.default: _embedding,
    aten.linear.default: _linear,
    aten.rms_norm.default: _rms_norm,
    aten.layer_norm.default: _layer_norm,
    aten.view.default: _reshape,
    aten.reshape.default: _reshape,
    aten._unsafe_view.default: _reshape,
    aten.unsqueeze.default: _unsqueeze,
    aten.squeeze.dim: _unsqueeze,
    aten.flatten.using_ints: _flatten,
    aten.unflatten.int: _flatten,  # nn.MultiheadAttention's packed q, k, v
    aten.transpose.int: _transpose,
    aten.permute.default: _permute,
    aten.slice.Tensor: _slice,
    aten.cat.default: _cat,
    aten.expand.default: _expand,
    aten.expand_as.default: _expand,  # the shape is the fx node's own: other's
    aten.add.Tensor: _binary("add"),
    aten.add.Scalar: _binary("add"),
    aten.sub.Tensor: _binary("sub"),
    aten.sub.Scalar: _binary("sub"),
    aten.rsub.Scalar: _rsub,
    aten.mul.Tensor: _binary("mul"),
    aten.mul.Scalar: _binary("mul"),
    aten.div.Tensor: _binary("div"),
    aten.div.Scalar: _binary("div"),
    aten.pow.Tensor_Scalar: _pow,
    aten.neg.default: _unary("neg"),
    aten.relu.default: _unary("relu"),
    aten.square.default: _unary("square"),
    aten.tanh.default: _tanh,
    aten.sigmoid.default: _unary("sigmoid"),
    aten.silu.default: _unary("silu"),
    aten.exp.default: _unary("exp"),
    aten.rsqrt.default: _unary("rsqrt"),
    aten.sqrt.default: _unary("sqrt"),
    aten.abs.default: _unary("abs"),
    aten.gelu.default: _gelu,
    aten.mean.dim: _mean,
    aten.sum.dim_IntList: _sum,
    aten.linalg_vector_norm.default: _vector_norm,
    aten.topk.default: _topk,
    aten.logsumexp.default: _logsumexp,
    aten.max.dim: _max_dim,
    aten.softmax.int: _softmax,
    aten._softmax.default: _softmax,
    aten.scaled_dot_product_attention.default: _sdpa,
    torch.ops.monologue.causal_attention.default: _window_attention,
    aten.select.int: _select,
    aten.new_zeros.default: _new_zeros,
    aten.to.dtype: _to,
    aten._to_copy.default: _to,
    aten.type_as.default: _to,
    aten.clone.default: _alias,
    aten.contiguous.default: _alias,
    aten.alias.default: _alias,
    aten.detach.default: _alias,
    aten.dropout.default: _alias,
    aten.sym_size.int: _sym_size,
    aten._assert_tensor_metadata.default: _skip,
    aten._assert_scalar.default: _skip,
    aten.sym_constrain_range_for_size.default: _skip,
    operator.getitem: _getitem,  # parts of split / chunk / topk
}

# Ops that transformers' and hand-written GPTs' code meets (HF.md). `setdefault`: where another
# converter for the same op is in the table above, it is the one definition.
for _op, _conv in {
    aten.matmul.default: _matmul,
    aten.mm.default: _matmul,
    aten.addmm.default: _addmm,
    aten.bmm.default: _matmul,
    aten.where.ScalarOther: _where,
    aten.where.ScalarSelf: _where,
    aten.where.Scalar: _where,
    **{getattr(aten, fn).Tensor: _compare(fn) for fn in ("gt", "ge", "lt", "le", "eq", "ne")},
    **{getattr(aten, fn).Scalar: _compare(fn) for fn in ("gt", "ge", "lt", "le", "eq", "ne")},
    aten.logical_not.default: _logical("not"),
    aten.logical_and.default: _logical("and"),
    aten.logical_or.default: _logical("or"),
    aten.bitwise_not.default: _logical("not"),  # ~mask, mask & mask, mask | mask on bools
    aten.bitwise_and.Tensor: _logical("and"),
    aten.bitwise_or.Tensor: _logical("or"),
    aten.__and__.Tensor: _logical("and"),
    aten.__or__.Tensor: _logical("or"),
    aten.maximum.default: _binary("maximum"),
    aten.minimum.default: _binary("minimum"),
    aten.max.other: _binary("maximum"),
    aten.min.other: _binary("minimum"),
    aten.clamp.default: _clamp,
    aten.clamp.Tensor: _clamp,
    aten.clamp_min.default: lambda c, x, lo: _clamp(c, x, lo, None),
    aten.clamp_max.default: lambda c, x, hi: _clamp(c, x, None, hi),
    aten.hardtanh.default: lambda c, x, lo=-1.0, hi=1.0: _clamp(c, x, lo, hi),
    aten.relu6.default: lambda c, x: _clamp(c, x, 0.0, 6.0),
    aten.softplus.default: _softplus,
    aten.expm1.default: _unary("expm1"),
    aten.log1p.default: _unary("log1p"),
    aten.log2.default: _unary("log2"),
    aten.log10.default: _unary("log10"),
    aten.exp2.default: _unary("exp2"),
    aten.log.default: _unary("log"),
    aten.mish.default: _unary("mish"),
    aten.hardswish.default: _unary("hardswish"),
    aten.hardsigmoid.default: _unary("hardsigmoid"),
    aten.log_sigmoid.default: _unary("log_sigmoid"),
    aten.erf.default: _unary("erf"),  # GELU written out: 0.5 * x * (1 + erf(x / sqrt(2)))
    aten.reciprocal.default: _unary("reciprocal"),  # 1 / x
    aten.sign.default: _unary("sign"),
    aten.selu.default: lambda c, x: _elu(c, x, 1.6732632423543772848170429916717, 1.0507009873554804934193349852946),
    aten.celu.default: lambda c, x, alpha=1.0: _elu(c, x, alpha, 1, 1 / alpha),
    aten.amax.default: _amax,
    aten.one_hot.default: _one_hot,
    aten.index_select.default: _index_select,
    aten.leaky_relu.default: _leaky_relu,
    aten.elu.default: _elu,
    aten.baddbmm.default: _baddbmm,
    aten.conv1d.default: _conv1d,
    aten.zeros_like.default: _zeros_like,
    aten.new_empty.default: _new_empty,
    aten.copy_.default: _copy_into,
    aten.gather.default: _gather,
    aten.scatter.value: lambda c, x, dim, index, value: _scatter(c, x, dim, index, value),
    aten.scatter.src: _scatter,
    aten.scatter_.value: lambda c, x, dim, index, value: _scattered_in_place(c, x, dim, index, value),
    aten.scatter_.src: lambda c, x, dim, index, src: _scattered_in_place(c, x, dim, index, src),
    aten.squeeze.default: _flatten,  # every axis of 1 dropped: the fx node's own shape
    aten.squeeze.dims: _flatten,
    aten.reshape_as.default: _view_as,
    aten.unsafe_split.Tensor: _split,
    aten.unsafe_chunk.default: _chunk,
    aten.masked_fill.Scalar: _masked_fill,
    aten.where.self: _where,
    aten.stack.default: _stack,
    aten.concat.default: _cat,
    aten.index.Tensor: _index,
    aten.broadcast_to.default: _expand,
    aten.repeat.default: _repeat,  # DiffLlama's v.repeat(1, 2, 1, 1)
    aten.repeat_interleave.self_int: _repeat_interleave,
    aten.pad.default: _pad,
    aten.glu.default: _glu,
    aten.constant_pad_nd.default: lambda c, x, pad, value=0: _pad(c, x, pad, "constant", value),
    aten.unbind.int: _unbind,
    aten.view_as_complex.default: _view_as_complex,
    aten.view_as_real.default: _view_as_real,
    aten.view_as.default: _view_as,
    # Falcon's `mlp_output += attention_output`, `attention_scores /= math.sqrt(self.head_dim)`
    **{getattr(aten, f"{fn}_").Tensor: _in_place(_binary(fn), fn) for fn in ("add", "sub", "mul", "div")},
    **{getattr(aten, f"{fn}_").Scalar: _in_place(_binary(fn), fn) for fn in ("add", "sub", "mul", "div")},
    aten.masked_fill_.Scalar: _in_place(_masked_fill, "masked_fill"),
    aten.numpy_T.default: _reverse_axes,  # Falcon's `input @ self.weight.T`
    aten.t.default: _reverse_axes,
    aten.split.Tensor: _split,
    aten.split_with_sizes.default: _split,
    aten.chunk.default: _chunk,
    aten.to.dtype_layout: _to,
    aten.to.device: _to,
}.items():
    CONVERTERS.setdefault(_op, _conv)

# every covered op's in-place twin (x.relu_(), nn.ReLU(inplace=True), x.clamp_(...), x.unsqueeze_(0)) is
# that op under the in-place rule
for _op, _conv in list(CONVERTERS.items()):
    _twin = getattr(getattr(aten, _op.overloadpacket.__name__ + "_", None), _op._overloadname, None) \
        if isinstance(_op, torch._ops.OpOverload) and _conv is not None else None
    if _twin is not None and _twin not in CONVERTERS:
        CONVERTERS[_twin] = _in_place(_conv, _op.overloadpacket.__name__)


def supported_ops() -> list[str]:
    return sorted(str(k) for k, v in CONVERTERS.items() if v is not None)


def lower(ep: torch.export.ExportedProgram) -> Graph:
    """fx graph (from trace) -> IR graph with weights (f32 numpy) attached."""
    c = _Ctx(ep)
    sig = ep.graph_signature
    kinds = {s.arg.name: s for s in sig.input_specs}
    data = {**ep.state_dict, **ep.constants}
    seen_storage = c.storage
    user_inputs = []
    for n in ep.graph.nodes:
        if n.op != "placeholder":
            continue
        spec = kinds[n.name]
        if spec.target is None:  # the user input: token ids
            user_inputs.append(n)
            val = n.meta["val"]
            if val.dim() != 2 or val.dtype not in (torch.int64, torch.int32):
                raise MonologueError("the model's forward must take one (B, T) tensor of token ids")
            c.seq_symbol = val.shape[1].node.expr if isinstance(val.shape[1], torch.SymInt) else None
            c.env[n] = IDS
            continue
        tensor = data[spec.target]
        key = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        if key in seen_storage:  # tied parameters: one weight, two uses
            c.env[n] = seen_storage[key]
            continue
        role = "param" if spec.kind.name == "PARAMETER" else "table"
        if not tensor.is_floating_point():
            # a bool or integer buffer (GPT-Neo's and GPT-BigCode's causal masks) is a constant: it
            # is evaluated where it is used, as a mask or a table, and never stored as a weight
            # (`materialize` refuses one that an op on activations reads)
            c.env[n] = _Const(n)
            continue
        c.g.weights[spec.target] = Weight(tuple(tensor.shape), "f32",
                                          tensor.detach().to(torch.float32).numpy(), None, role)
        seen_storage[key] = spec.target
        c.env[n] = spec.target
    if len(user_inputs) != 1 or c.seq_symbol is None:
        raise MonologueError("the model's forward must take exactly one (B, T) tensor with a dynamic length T")
    c.tmax = int(ep.range_constraints[c.seq_symbol].upper)
    c.evaluator = Evaluator(ep, c.seq_symbol)
    consts = constant_nodes(ep, user_inputs[0])

    for n in ep.graph.nodes:
        if n.op != "call_function":
            continue
        c.fx = c.evaluator.reader = n
        if n in consts:
            val = n.meta.get("val")
            if isinstance(val, int) and not isinstance(val, bool) or \
                    isinstance(val, torch.SymInt) and (val.node.expr == c.seq_symbol or val.node.expr.is_number):
                c.env[n] = c.dim(val)  # a size: T or a number, what shapes are made of
            else:
                c.env[n] = _Const(n)
            continue
        conv = CONVERTERS.get(n.target)
        if conv is None:
            c.fail(f"unsupported op {n.target}")
        c.env[n] = conv(c, *n.args, **n.kwargs)

    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    outs = out_node.args[0]
    if len(outs) != 1:
        raise MonologueError(f"the model returns {len(outs)} values; expected only logits")
    c.fx = c.evaluator.reader = None
    name = c.env[outs[0]]
    t = c.g.type_of(name)
    if len(t.shape) != 3 or t.shape[:2] != (1, SEQ):
        raise MonologueError(f"the model's output has shape {t}; expected logits (B, T, V)")
    c.g.outputs = [name]
    return verify(c.g, "lowering")
