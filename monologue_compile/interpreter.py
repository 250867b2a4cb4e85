"""The numpy reference: runs an IR graph with exactly the kernels' semantics.

f32 activations and accumulation everywhere; q8 weights are used as int8 values times f32 scales
(per output row, or per group of K), never as a pre-dequantized f32 copy, so this is what a kernel
computes. A `Session` keeps the position, the KV cache of every attention node and the carried
state of every token shift: `forward(ids)` with several ids is (chunked) prefill, with one id it is
a decode step; both run the same graph, because every op is T-generic (see ir.py).
"""

from __future__ import annotations

import functools

import numpy as np

from . import elementwise
from .ir import OPS, SEQ, Graph, Node, layer_norm_step, row_dims

_F = np.float32


UNARY_FNS = {name: functools.partial(elementwise.unary, name) for name in elementwise.UNARY}
BINARY_FNS = {name: functools.partial(elementwise.binary, name) for name in elementwise.BINARY}


def rms_norm(x: np.ndarray, eps: float, weight: np.ndarray | None = None) -> np.ndarray:
    ms = np.mean(np.square(x, dtype=_F), axis=-1, keepdims=True, dtype=_F)
    y = x * (_F(1) / np.sqrt(ms + _F(eps)))
    return (y * weight if weight is not None else y).astype(_F)


def layer_norm(x: np.ndarray, eps: float, weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> np.ndarray:
    # two passes (the mean, then squared deviations), as every backend computes it
    mean = np.mean(x, axis=-1, keepdims=True, dtype=_F)
    d = (x - mean).astype(_F)
    var = np.mean(np.square(d, dtype=_F), axis=-1, keepdims=True, dtype=_F)
    y = d * (_F(1) / np.sqrt(var + _F(eps)))
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.astype(_F)


def apply_step(v: np.ndarray, step: dict, operands: list[np.ndarray]) -> np.ndarray:
    """One epilogue / elementwise step: {"fn": unary} | {"fn": binary, "scalar"|"operand", "reverse"}
    | {"fn": "rms_norm", "eps", ["operand"]} | {"fn": "layer_norm", "eps", ["operand"], ["bias_operand"]} | {"fn": "softmax"} (over the last axis)."""
    fn = step["fn"]
    if fn in UNARY_FNS:
        return UNARY_FNS[fn](v).astype(_F, copy=False)
    if fn == "rms_norm":
        w = operands[step["operand"]] if "operand" in step else None
        return rms_norm(v, step["eps"], w)
    if fn == "softmax":
        return softmax(v)
    if fn == "layer_norm":
        w = operands[step["operand"]] if "operand" in step else None
        b = operands[step["bias_operand"]] if "bias_operand" in step else None
        return layer_norm(v, step["eps"], w, b)
    other = _F(step["scalar"]) if "scalar" in step else operands[step["operand"]]
    a, b = (other, v) if step.get("reverse") else (v, other)
    return BINARY_FNS[fn](a, b).astype(_F, copy=False)


def dense_weight(w) -> np.ndarray:
    """The f32 value a q8 weight stands for (tests and R_q); kernels never materialize this."""
    if w.dtype != "q8":
        return np.asarray(w.data, dtype=_F)
    q, scale = w.data["q"], w.data["scale"]
    n, k = w.shape
    g = w.quant["group"]
    deq = q[:, : scale.shape[1] * g].astype(_F).reshape(n, scale.shape[1], g) * scale[:, :, None]
    return deq.reshape(n, -1)[:, :k]


def matvec(x: np.ndarray, w, cache: dict | None = None) -> np.ndarray:
    """x (..., K) @ W.T with W f32 (N, K) or q8: int8 values, f32 accumulation per group, then scale.

    `cache` keeps each int8 matrix's values as f32 (exact: int8 fits f32) between calls.
    """
    if w.dtype != "q8":
        return (x @ np.asarray(w.data, dtype=_F).T).astype(_F)
    q, scale = w.data["q"], w.data["scale"]
    n, k = w.shape
    g = w.quant["group"]
    groups = scale.shape[1]
    kp = groups * g
    xp = np.zeros(x.shape[:-1] + (kp,), _F)
    xp[..., :k] = x
    qf = cache.get(id(q)) if cache is not None else None
    if qf is None:
        qf = q[:, :kp].astype(_F)
        if cache is not None:
            cache[id(q)] = qf
    if groups == 1:
        return ((xp @ qf.T) * scale[:, 0]).astype(_F)
    partial = np.einsum("...gk,ngk->...ng", xp.reshape(x.shape[:-1] + (groups, g)), qf.reshape(n, groups, g))
    return np.einsum("...ng,ng->...n", partial.astype(_F), scale).astype(_F)


def embedding_rows(w, ids: np.ndarray) -> np.ndarray:
    if w.dtype != "q8":
        return np.asarray(w.data, dtype=_F)[ids]
    q, scale = w.data["q"], w.data["scale"]
    g = w.quant["group"]
    rows = q[ids][..., : scale.shape[1] * g].astype(_F)
    rows = rows.reshape(ids.shape + (scale.shape[1], g)) * scale[ids][..., None]
    return rows.reshape(ids.shape + (-1,))[..., : w.shape[1]].astype(_F)


class Session:
    """One conversation's state: position, KV caches, carried token-shift state."""

    def __init__(self, graph: Graph, max_len: int | None = None):
        self.g = graph
        self.qf: dict = {}  # int8 weights as f32 values, made on first use
        self.max_len = max_len or int(graph.meta.get("config", {}).get("sequence_len", 1 << 30))
        self.reset()

    def reset(self):
        self.pos = 0
        self.kv: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.shift: dict[str, np.ndarray] = {}

    def forward(self, ids, probe: dict | None = None) -> np.ndarray:
        """Logits (T, V) for the next len(ids) tokens; `probe` (name -> array) receives every node's value."""
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        T = self.T = ids.shape[1]
        if self.pos + T > self.max_len:
            raise ValueError(f"sequence of {self.pos + T} tokens exceeds sequence_len={self.max_len}")
        env: dict[str, np.ndarray] = {"ids": ids}
        for n in self.g.nodes:
            args = [env[i] if i in env else self._weight(i) for i in n.inputs]
            env[n.name] = _run(self, n, args)
            if probe is not None:
                probe[n.name] = env[n.name]
        self.pos += T
        return env[self.g.outputs[0]][0]

    def _weight(self, name):
        return self.g.weights[name]


def _val(a) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else np.asarray(a.data, dtype=_F)


def _embedding(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    return _epilogue(embedding_rows(args[0], args[1]), at.get("epilogue", []), [_val(a) for a in args[2:]])


def _linear(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    return matvec(args[0], args[1], s.qf)


def gate_rows(gate: np.ndarray, ndim: int) -> np.ndarray:
    """A matmul's gate, one value per token of a (1, T, ...) tensor, shaped to broadcast over its rows."""
    return gate.reshape(gate.shape[:2] + (1,) * (ndim - 2))


def _matmul(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    x = args[0]
    pro = at.get("prologue")
    if pro:
        x = rms_norm(x, pro["eps"])
    y = matvec(x, args[1], s.qf)
    operands = [_val(a) for a in args[2:]]
    if at.get("gate") is not None:
        y = np.where(gate_rows(operands[at["gate"]], y.ndim) != 0, y, _F(0))
    return _epilogue(y, at.get("epilogue", []), operands)


def _rms_norm(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    return rms_norm(_val(args[0]), at["eps"], _val(args[1]) if len(args) > 1 else None)


def _layer_norm(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    return apply_step(_val(args[0]), layer_norm_step(n), [_val(a) for a in args[1:]])


def _unary(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    return UNARY_FNS[at["fn"]](_val(args[0])).astype(_F, copy=False)


def _binary(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    step = dict(at)
    if "scalar" not in step:
        step["operand"] = 0
    return apply_step(_val(args[0]), step, [_val(a) for a in args[1:]])


def _elementwise(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    return _epilogue(_val(args[0]), at["steps"], [_val(a) for a in args[1:]])


def _mean(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    return np.mean(_val(args[0]), axis=at["axis"], keepdims=True, dtype=_F)


def _topk(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    x = _val(args[0])
    order = np.argsort(-x, axis=-1, kind="stable")[..., :at["k"]]  # ties: the lower index first
    return order.astype(_F) if at["indices"] else np.take_along_axis(x, order, -1)


def _gather(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    return np.take_along_axis(_val(args[0]), _val(args[1]).astype(np.int64), -1)


def _scatter(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    index = _val(args[0]).astype(np.int64)
    out = np.zeros(index.shape[:-1] + (at["width"],), _F)
    np.put_along_axis(out, index, _val(args[1]) if len(args) > 1 else _F(at["value"]), -1)
    return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return (e / np.sum(e, axis=axis, keepdims=True, dtype=_F)).astype(_F)


def _softmax(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    return softmax(_val(args[0]), at["axis"])


def _cast(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    return _val(args[0]).astype(_F if at["dtype"] == "f32" else np.int64)


def _positions(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    table = _val(args[0])
    idx = [slice(None)] * table.ndim
    idx[at["axis"]] = slice(s.pos, s.pos + s.T)
    return table[tuple(idx)]


def _reshape(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    return _val(args[0]).reshape(_shape(at["shape"], s))


def _permute(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    return np.transpose(_val(args[0]), at["perm"])


def _slice(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    x = _val(args[0])
    idx = [slice(None)] * x.ndim
    idx[at["axis"]] = slice(at["start"], at["end"])
    return x[tuple(idx)]


def _concat(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    reads = at.get("reads") or [None] * len(args)
    parts = [_val(a) if r is None else strided_read(s, name, _val(a), tuple(r["shape"]), r["strides"], r["offset"])
             for name, a, r in zip(n.inputs, args, reads)]
    return np.concatenate(parts, axis=at["axis"])


def _expand(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    return np.broadcast_to(_val(args[0]), _shape(at["shape"], s))


def copy_index(out_shape: tuple, strides: list[int], offset: int) -> np.ndarray:
    """The per-token source index of every element of a copy's output block, in order."""
    dims = row_dims(out_shape)
    idx = np.full(dims, offset, dtype=np.int64)
    for k, s in enumerate(strides):
        shape = [1] * len(dims)
        shape[k] = dims[k]
        idx = idx + np.arange(dims[k], dtype=np.int64).reshape(shape) * s
    return idx.reshape(-1)


def strided_read(s: Session, name: str, x: np.ndarray, shape: tuple, strides: list[int], offset: int) -> np.ndarray:
    """The `copy` semantics: a value of `shape` read from value `name` (= x) through per-token strides."""
    # one row per token; a fixed input is the same row for every token
    rows = x.reshape(s.T, -1) if SEQ in s.g.type_of(name).shape else x.reshape(1, -1)
    out = rows[:, copy_index(shape, strides, offset)]
    if SEQ not in shape:
        return out.reshape(shape)
    return np.broadcast_to(out, (s.T, out.shape[1])).reshape(_shape(shape, s)).copy()


def _copy(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    return strided_read(s, n.inputs[0], _val(args[0]), n.type.shape, at["strides"], at["offset"])


def _rope(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    x, cos, sin = args[:3]  # then the epilogue's operands
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    y = np.concatenate([x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos], axis=-1).astype(_F)
    return _epilogue(y, at.get("epilogue", []), [_val(a) for a in args[3:]])


def _token_shift(s: Session, n: Node, at: dict, args: list) -> np.ndarray:
    x = args[0]
    prev = s.shift.get(n.name)
    if prev is None:
        prev = np.zeros_like(x[:, :1])
    out = np.concatenate([prev, x[:, :-1]], axis=1)
    s.shift[n.name] = x[:, -1:].copy()
    return out


# op -> its numpy semantics (the reference every backend is compared with)
KERNELS = {
    "embedding": _embedding,
    "linear": _linear,
    "matmul": _matmul,
    "rms_norm": _rms_norm,
    "layer_norm": _layer_norm,
    "unary": _unary,
    "binary": _binary,
    "elementwise": _elementwise,
    "mean": _mean,
    "softmax": _softmax,
    "topk": _topk,
    "gather": _gather,
    "scatter": _scatter,
    "cast": _cast,
    "positions": _positions,
    "reshape": _reshape,
    "permute": _permute,
    "slice": _slice,
    "concat": _concat,
    "expand": _expand,
    "copy": _copy,
    "rope": _rope,
    "attention": lambda s, n, at, args: _attention(s, n, args),
    "token_shift": _token_shift,
}


def _run(s: Session, n: Node, args: list) -> np.ndarray:
    fn = KERNELS.get(n.op)
    if fn is None:
        raise NotImplementedError(f"interpreter has no kernel for op {n.op} ({OPS.get(n.op)})")
    return fn(s, n, n.attrs, args)


def _epilogue(y, steps, operands):
    for st in steps:
        y = apply_step(y, st, operands)
    return y


def _shape(shape, s: Session) -> tuple:
    return tuple(s.T if d == "T" else d for d in shape)


def _attention(s: Session, n: Node, args) -> np.ndarray:
    q, k, v = args
    at = n.attrs
    if at["layout"] == "BHTD":  # (1, H, T, D) -> (T, H, D)
        q, k, v = (a[0].transpose(1, 0, 2) for a in (q, k, v))
    else:  # BTHD
        q, k, v = q[0], k[0], v[0]
    ck, cv = s.kv.get(n.name, (np.zeros((0,) + k.shape[1:], _F), np.zeros((0,) + v.shape[1:], _F)))
    ck, cv = np.concatenate([ck, k]), np.concatenate([cv, v])
    s.kv[n.name] = (ck, cv)
    T, P = q.shape[0], ck.shape[0]
    groups = at["n_head"] // at["n_kv_head"]
    kh = np.repeat(ck, groups, axis=1)  # (P, Hq, D): query head h reads KV head h // groups
    vh = np.repeat(cv, groups, axis=1)
    scores = np.einsum("thd,phd->htp", q, kh).astype(_F) * _F(at["scale"])
    for step in elementwise.softcap_steps(at["softcap"]) if at.get("softcap") else ():
        scores = apply_step(scores, step, [])
    qpos = np.arange(P - T, P)[:, None]
    kpos = np.arange(P)[None, :]
    if at.get("alibi"):  # ALiBi: + m_h * (j - i)
        scores = scores + np.asarray(at["alibi"], _F)[:, None, None] * (kpos - qpos).astype(_F)[None]
    mask = kpos <= qpos
    if at.get("window"):
        mask &= kpos > qpos - at["window"]
    scores = np.where(mask[None], scores, _F(-np.inf))
    sinks = np.asarray(at.get("sinks") or [-np.inf] * at["n_head"], _F)[:, None, None]  # one more logit per head
    top = np.maximum(scores.max(axis=-1, keepdims=True), sinks)
    p = np.exp(scores - top)
    p = (p / (p.sum(axis=-1, keepdims=True) + np.exp(sinks - top))).astype(_F)
    y = np.einsum("htp,phd->thd", p, vh).astype(_F)
    return y[None] if at["layout"] == "BTHD" else y.transpose(1, 0, 2)[None]
