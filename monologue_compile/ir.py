"""The Monologue IR: a flat list of typed ops over tensors with one symbolic sequence dimension.

A `Graph` is what every stage after lowering passes around:

- `inputs`: the token ids, type `(1, T) i32`; `T` is the symbolic sequence length.
- `weights`: name -> `Weight` (shape, dtype, data, and how it is quantized, if it is).
- `nodes`: in topological order; each `Node` has an op from `OPS`, input names (nodes, inputs or
  weights), attributes, a result `TensorType`, and where it came from (fx node + model source line).
- `outputs`: the logits, `(1, T, V) f32`.

Dimensions are ints or the string "T". Every op is T-generic: prefill runs the graph with T = the
chunk length, decode with T = 1; the only ops that look across positions are those whose
`OPS[op].seq` is "mixing" (they own a cache or carried state) or "position" (a table indexed by
absolute position). `verify` checks all of that and runs after every pass.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import elementwise

SEQ = "T"


@dataclass(frozen=True)
class TensorType:
    shape: tuple
    dtype: str = "f32"  # f32 | i32

    def __str__(self):
        return f"({', '.join(str(d) for d in self.shape)}) {self.dtype}"

    def concrete(self, t: int) -> tuple[int, ...]:
        return tuple(t if d == SEQ else d for d in self.shape)

    @property
    def seq_axis(self) -> int | None:
        return self.shape.index(SEQ) if SEQ in self.shape else None


@dataclass
class Weight:
    """A named constant. `quant` is None (stored as `dtype`) or a dict describing the int8 packing."""

    shape: tuple[int, ...]
    dtype: str  # f32 | q8
    data: Any = None  # np.ndarray (f32), or for q8 a dict {"q": int8 (N, Kpad), "scale": f32 (N, G)}
    quant: dict | None = None  # {"scheme": "int8"|"int8-g64"|..., "group": K or 64/128, "k_pad": int}
    role: str = "param"  # param | table (position-indexed buffer) | derived (made by a pass)

    @property
    def bits(self) -> int:
        """Bits per stored value of a q8 weight: 8, or 4 (two to a byte; unpacked in memory)."""
        return int((self.quant or {}).get("bits", 8))

    def nbytes(self) -> int:
        """Bytes as the artifact stores them."""
        if self.dtype == "q8":
            return int(self.data["q"].size * self.bits // 8 + self.data["scale"].nbytes)
        return int(np.asarray(self.data).nbytes)


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    attrs: dict
    type: TensorType
    source: str = ""  # "fx:<node> @ file.py:123 <code>" — kept through passes for error messages and kernels

    def __str__(self):
        attrs = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(self.attrs.items()))
        body = f"%{self.name}: {self.type} = {self.op}({', '.join('%' + i for i in self.inputs)})"
        return body + (f" {{{attrs}}}" if attrs else "")


def _fmt(v):
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


@dataclass(frozen=True)
class OpInfo:
    seq: str  # token: per position | position: reads a table by absolute position | mixing: across positions
    kernel: bool  # False for views (no data movement in a backend: a layout change or alias)
    doc: str
    attrs: tuple = ()  # attribute names (optional ones in brackets)
    becomes: str = ""  # the op the pass pipeline always rewrites this one into (backends never see it)


# The op table: every op the IR can hold. Lowering emits the "primitive" ops; passes rewrite
# them into the kernel ops (`matmul`, `rope`, `attention`, `elementwise`, ...). A backend
# implements the ops that survive `passes.pipeline` (the `kernel=True` ones) and the views; its
# table (interpreter.KERNELS, backends/rust_crate.KERNELS, backends/wgsl_plan.EMITTERS) is looked up
# by op name, and `monologue ops` prints which backend covers which op. Elementwise functions
# (attrs.fn, epilogue steps) are defined once in elementwise.py.
OPS: dict[str, OpInfo] = {
    # primitives (from lowering)
    "embedding": OpInfo("token", True, "rows of table[weight] at ids (weight: (V, C)); then epilogue", ("[epilogue]",)),
    "linear": OpInfo("token", True, "y = x @ W.T  (W: (N, K)), f32 accumulation", (), "matmul"),
    "rms_norm": OpInfo("token", True, "x / sqrt(mean(x^2, last axis) + eps) [* weight]", ("eps",)),
    "layer_norm": OpInfo("token", True, "(x - mean) / sqrt(var + eps) over the last axis [* weight] [+ bias] "
                         "(inputs x, then the weight and the bias the attrs name)", ("eps", "weight", "bias")),
    "unary": OpInfo("token", True, "attrs.fn in UNARY", ("fn",), "elementwise"),
    "binary": OpInfo("token", True, "attrs.fn in BINARY; second operand a tensor (broadcast) or attrs.scalar",
                     ("fn", "[scalar]", "[reverse]"), "elementwise"),
    "mean": OpInfo("token", True, "mean over attrs.axis (never the sequence axis), keepdim", ("axis",)),
    "softmax": OpInfo("token", True, "softmax over attrs.axis (never the sequence axis)", ("axis",)),
    "topk": OpInfo("token", True, "the attrs.k largest of the last axis, descending, ties lower index first; "
                   "attrs.indices: their positions (as f32) instead", ("k", "indices")),
    "gather": OpInfo("token", True, "y[..., j] = x[..., index[..., j]] along the last axis (inputs x, index: f32 "
                     "positions, as topk's)"),
    "scatter": OpInfo("token", True, "each index row's attrs.width zeros, then y[..., index[..., j]] = src[..., j] "
                      "(inputs index[, src]) or attrs.value, along the last axis", ("width", "[value]")),
    "positions": OpInfo("position", True, "rows [pos, pos+T) of a table along attrs.axis", ("axis",)),
    "attention": OpInfo("mixing", True, "causal SDPA over a KV cache; attrs: layout, gqa groups, scale, window, "
                        "softcap, alibi (score of query i, key j in head h = softcap * tanh(q.k * scale / softcap) "
                        "+ alibi[h] * (j - i)); sinks[h]: one more logit in head h's softmax, of no value "
                        "(GPT-OSS)",
                        ("layout", "n_head", "n_kv_head", "head_dim", "scale", "[window]", "[softcap]", "[alibi]",
                         "[sinks]")),
    "token_shift": OpInfo("mixing", True, "y[t] = x[t-1], y[0] = 0: carried state of one position", ("[axis]",)),
    # views: no kernel, only a layout. One that moves data (view_block says None) becomes a `copy`
    # (passes/views.py); one that moves T off axis 1 is left for the backend to name.
    "reshape": OpInfo("token", False, "same data, new shape (the sequence dim kept whole)", ("shape",)),
    "permute": OpInfo("token", False, "axis permutation attrs.perm", ("perm",)),
    "slice": OpInfo("token", False, "x[start:end] along attrs.axis (never the sequence axis)", ("axis", "start", "end")),
    "concat": OpInfo("token", True, "concatenate inputs along attrs.axis (never the sequence axis); attrs.reads[i], "
                     "when set, reads input i as a copy does ({shape, strides, offset})", ("axis", "[reads]")),
    "expand": OpInfo("token", False, "broadcast to attrs.shape", ("shape",)),
    "cast": OpInfo("token", False, "to attrs.dtype (f32 | i32); the runtimes hold activations as f32, so only a cast "
                   "that keeps the dtype is a view there", ("dtype",)),
    "copy": OpInfo("token", True, "a view that moves data, materialized: output element i (dense, per token) is input "
                   "element attrs.offset + sum_k i_k * attrs.strides[k] of input 0's per-token block", ("strides", "offset")),
    # fused kernels (from passes)
    "matmul": OpInfo(
        "token",
        True,
        "y = epilogue(prologue(x) @ W.T); attrs.prologue: null | {rms_norm: eps}; attrs.epilogue: steps; "
        "attrs.gate: operand i (inputs[2 + i]) of one value per token: where it is 0 the product is 0, not "
        "computed (an expert its router did not pick), and the epilogue still applies",
        ("prologue", "epilogue", "[gate]"),
    ),
    "rope": OpInfo("token", True, "half-split rotary: y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos; then epilogue",
                   ("epilogue",)),
    "elementwise": OpInfo("token", True, "a chain of elementwise steps on input 0 (extra inputs are operands)", ("steps",)),
}

UNARY = tuple(elementwise.UNARY)
BINARY = tuple(elementwise.BINARY)


def row_broadcast(op_shape: tuple, out_shape: tuple) -> tuple[int, int]:
    """How an operand repeats over one token's output row, as (len, repeat): element j reads the
    operand's row at `(j / repeat) % len`. Right when the operand's own dims (per token for a
    (1, T, ...) tensor, all of a fixed one), aligned to the right, are ones, then a run equal to the
    output's dims, then ones: a scalar, a trailing vector, a per-head gate (H, 1) over (H, D).
    ValueError otherwise. Every backend's tensor operands follow this one rule."""
    if SEQ in op_shape and tuple(op_shape[:2]) != (1, SEQ):
        raise ValueError(f"operand shape {op_shape} is not (1, T, ...)")
    own = list(op_shape[2:]) if SEQ in op_shape else list(op_shape)
    target = list(out_shape[2:]) if SEQ in out_shape else list(out_shape)
    if len(own) > len(target):
        if any(d != 1 for d in own[: len(own) - len(target)]):
            raise ValueError(f"operand shape {op_shape} is larger than {out_shape}")
        own = own[len(own) - len(target):]
    own = [1] * (len(target) - len(own)) + own
    core = [i for i, d in enumerate(own) if d != 1]
    if core and (core != list(range(core[0], core[-1] + 1)) or any(own[i] != target[i] for i in core)):
        raise ValueError(f"operand shape {op_shape} does not broadcast as a block over {out_shape}")
    length = 1
    for i in core:
        length *= own[i]
    repeat = 1
    for d in target[core[-1] + 1:] if core else []:
        repeat *= d
    return length, repeat


def permute_is_view(shape: tuple, perm: list[int]) -> bool:
    """The permute moves only axes of size 1, so the data keep their order: a reshape, not a copy."""
    return [p for p in perm if shape[p] != 1] == [i for i, d in enumerate(shape) if d != 1]


def row_dims(shape: tuple) -> tuple:
    """The dims of one token's block: those after (1, T) of an activation, all of a fixed tensor."""
    return tuple(shape[2:]) if SEQ in shape else tuple(shape)


def dense_strides(dims) -> list[int]:
    out, s = [], 1
    for d in reversed(list(dims)):
        out.append(s)
        s *= d
    return out[::-1]


def view_block(src: TensorType, n: Node) -> tuple[int, int] | None:
    """Where view node n's per-token elements lie in its input's per-token block, when they are one
    run of it in order: (start, length), so the view costs nothing (an offset). None when the view
    moves data (passes/views.py makes it a `copy`), moves T off axis 1, or changes the dtype."""
    per_src = math.prod(row_dims(src.shape))
    per = math.prod(row_dims(n.type.shape))
    if n.type.seq_axis not in (None, 1) or src.seq_axis not in (None, 1) or (src.seq_axis and n.type.seq_axis is None):
        return None
    if n.op in ("reshape", "expand"):  # an expand that keeps the count only adds size-1 dims (or T to a fixed tensor)
        return (0, per) if per == per_src else None
    if n.op == "cast":
        return (0, per) if n.attrs["dtype"] == src.dtype else None
    if n.op == "permute":
        return (0, per) if permute_is_view(src.shape, n.attrs["perm"]) else None
    if n.op == "slice":
        a, start, end = n.attrs["axis"], n.attrs["start"], n.attrs["end"]
        shape = src.shape
        if start == 0 and end == shape[a]:
            return 0, per
        first = 2 if SEQ in shape else 0
        if a < first or any(d != 1 for d in shape[first:a]):
            return None
        inner = math.prod(shape[a + 1:])
        return start * inner, (end - start) * inner
    return None


def merge_dims(shape, *strides) -> tuple[list[int], list[list[int]]]:
    """The fewest dims that walk the same elements: size-1 dims dropped, neighbours merged where every
    stride list steps over the inner one as one run. A scalar is ([1], [[0], ...])."""
    keep = [k for k, d in enumerate(shape) if d != 1]
    dims = [shape[k] for k in keep]
    ss = [[s[k] for k in keep] for s in strides]
    k = len(dims) - 1
    while k > 0:
        if all(s[k - 1] == s[k] * dims[k] for s in ss):
            dims[k - 1] *= dims[k]
            for s in ss:
                s[k - 1] = s[k]
                del s[k]
            del dims[k]
        k -= 1
    if not dims:
        return [1], [[0] for _ in strides]
    return dims, ss


def permute_refusal(g: "Graph", n: Node) -> str:
    """Why a backend cannot run permute n: it moves data, and where the layout pass stopped it."""
    why = g.meta.get("unsunk_permutes", {}).get(n.name)
    return (f"permute {n.attrs['perm']} of {g.type_of(n.inputs[0]).shape} moves data"
            + (f" ({why})" if why else "") + f" at {n.source or 'no source'}")


def concat_pieces(g: "Graph", n: Node) -> list[tuple[tuple, list[int], int]]:
    """Each input of concat n as (per-token dims, strides, offset) into that input's per-token block:
    dense, or through the strides of attrs.reads."""
    out = []
    for name, r in zip(n.inputs, n.attrs.get("reads") or [None] * len(n.inputs)):
        if r is None:
            dims = row_dims(g.type_of(name).shape)
            out.append((dims, dense_strides(dims), 0))
        else:
            out.append((row_dims(tuple(r["shape"])), list(r["strides"]), r["offset"]))
    return out


def consecutive_runs(indices) -> list[tuple[int, int]]:
    """[start, end) of each run of consecutive indices, in order: [0, 1, 4, 2] -> [(0, 2), (4, 5), (2, 3)]."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1][1] += 1
        else:
            runs.append([i, i + 1])
    return [(a, b) for a, b in runs]


def view_refusal(g: "Graph", n: Node) -> str:
    """Why a backend cannot place view n as an offset (view_block said None) after the passes."""
    src = g.type_of(n.inputs[0])
    where = f"at {n.source or 'no source'}"
    if n.op == "permute":
        return permute_refusal(g, n)
    if n.op == "cast":
        return (f"cast {src.dtype} -> {n.attrs['dtype']} {where}: the runtimes hold activations as f32 (a cast "
                "that keeps the dtype is a view)")
    return f"{n.op} {n.attrs} of {src.shape} is not one block per token and was not made a copy {where}"


def layer_norm_step(n: Node) -> dict:
    """A layer_norm node as the elementwise step over its own inputs 1.. (weight, then bias)."""
    step = {"fn": "layer_norm", "eps": n.attrs["eps"]}
    k = 0
    for key, present in (("operand", n.attrs.get("weight")), ("bias_operand", n.attrs.get("bias"))):
        if present:
            step[key] = k
            k += 1
    return step


@dataclass
class Graph:
    inputs: dict[str, TensorType]
    weights: dict[str, Weight]
    nodes: list[Node]
    outputs: list[str]
    meta: dict = field(default_factory=dict)  # model config, arch, notes from passes

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def type_of(self, name: str) -> TensorType:
        if name in self.inputs:
            return self.inputs[name]
        if name in self.weights:
            w = self.weights[name]
            return TensorType(tuple(w.shape), "f32")
        return self.node(name).type

    def users(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                out.setdefault(i, []).append(n)
        for o in self.outputs:
            out.setdefault(o, [])
        return out

    def fresh(self, base: str) -> str:
        taken = {n.name for n in self.nodes} | set(self.weights) | set(self.inputs)
        if base not in taken:
            return base
        i = 1
        while f"{base}_{i}" in taken:
            i += 1
        return f"{base}_{i}"

    def copy(self) -> "Graph":
        nodes = [Node(n.name, n.op, list(n.inputs), _deep(n.attrs), n.type, n.source) for n in self.nodes]
        return Graph(dict(self.inputs), dict(self.weights), nodes, list(self.outputs), _deep(self.meta))

    def kernel_count(self) -> int:
        return sum(1 for n in self.nodes if OPS[n.op].kernel)

    def weight_bytes(self) -> int:
        used = {i for n in self.nodes for i in n.inputs}
        return sum(w.nbytes() for k, w in self.weights.items() if k in used)

    # --- printing and serialization -------------------------------------------------------
    def dump(self) -> str:
        lines = [f"graph({', '.join(f'%{k}: {t}' for k, t in self.inputs.items())}) {{"]
        for k in sorted(self.weights):
            w = self.weights[k]
            q = f" quant={w.quant['scheme']}" if w.quant else ""
            lines.append(f"  weight {k}: ({', '.join(map(str, w.shape))}) {w.dtype}{q} role={w.role}")
        for n in self.nodes:
            lines.append(f"  {n}")
        lines.append(f"  return {', '.join('%' + o for o in self.outputs)}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        """The IR without weight data (the manifest says where each weight's bytes are)."""
        return {
            "format": "monologue-ir",
            "version": 1,
            "inputs": {k: _type_json(t) for k, t in self.inputs.items()},
            "weights": {
                k: {"shape": list(w.shape), "dtype": w.dtype, "quant": w.quant, "role": w.role}
                for k, w in sorted(self.weights.items())
            },
            "nodes": [
                {"name": n.name, "op": n.op, "inputs": n.inputs, "attrs": n.attrs, "type": _type_json(n.type),
                 "source": n.source}
                for n in self.nodes
            ],
            "outputs": self.outputs,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: dict, weight_data: dict | None = None) -> "Graph":
        weight_data = weight_data or {}
        weights = {
            k: Weight(tuple(w["shape"]), w["dtype"], weight_data.get(k), w["quant"], w["role"])
            for k, w in d["weights"].items()
        }
        nodes = [Node(n["name"], n["op"], list(n["inputs"]), n["attrs"], _type_from(n["type"]), n["source"])
                 for n in d["nodes"]]
        return cls({k: _type_from(t) for k, t in d["inputs"].items()}, weights, nodes, list(d["outputs"]), d["meta"])


def _type_json(t: TensorType) -> dict:
    return {"shape": list(t.shape), "dtype": t.dtype}


def _type_from(d: dict) -> TensorType:
    return TensorType(tuple(d["shape"]), d["dtype"])


def _deep(x):
    return json.loads(json.dumps(x))


class IRError(Exception):
    """The IR broke an invariant: a compiler bug, not a user mistake (so not a MonologueError)."""


def verify(g: Graph, stage: str = "") -> Graph:
    """Check names, op table membership, sequence-dim rules and attribute JSON-ness; return g."""
    where = f" after {stage}" if stage else ""
    defined = set(g.inputs) | set(g.weights)
    for n in g.nodes:
        if n.op not in OPS:
            raise IRError(f"%{n.name}: op {n.op!r} is not in the IR op table{where}")
        if n.name in defined:
            raise IRError(f"%{n.name} is defined twice{where}")
        for i in n.inputs:
            if i not in defined:
                raise IRError(f"%{n.name} uses %{i} before it is defined{where}")
        if sum(1 for d in n.type.shape if d == SEQ) > 1:
            raise IRError(f"%{n.name} has more than one sequence dimension{where}")
        for d in n.type.shape:
            if not (d == SEQ or (isinstance(d, int) and d >= 0)):
                raise IRError(f"%{n.name} has a bad dimension {d!r}{where}")
        axis = n.attrs.get("axis")
        if OPS[n.op].seq == "token" and axis is not None and n.inputs:
            t = g.type_of(n.inputs[0])
            if t.seq_axis is not None and axis == t.seq_axis:
                raise IRError(f"%{n.name} ({n.op}) works along the sequence axis but is marked per-token{where}")
        try:
            json.dumps(n.attrs)
        except TypeError as e:
            raise IRError(f"%{n.name} has attributes that are not JSON: {e}{where}") from None
        defined.add(n.name)
    for o in g.outputs:
        if o not in defined:
            raise IRError(f"output %{o} is not defined{where}")
    for k, w in g.weights.items():
        if w.dtype == "q8" and not w.quant:
            raise IRError(f"weight {k} is q8 without quantization parameters{where}")
    return g
