"""Canonicalize: drop dead code and duplicates, fold views,
fold subgraphs of weights alone into derived weights, and turn the written-out RMSNorm into `rms_norm`."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from ..ir import OPS, SEQ, Graph, Node, Weight


def dead_code(g: Graph) -> Graph:
    live = set(g.outputs)
    keep = []
    for n in reversed(g.nodes):
        if n.name in live:
            keep.append(n)
            live.update(n.inputs)
    g.nodes = keep[::-1]
    g.weights = {k: w for k, w in g.weights.items() if k in live}
    return g


def rename_uses(g: Graph, old: str, new: str) -> None:
    for n in g.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]
    g.outputs = [new if o == old else o for o in g.outputs]


def cse(g: Graph) -> Graph:
    """Merge nodes that compute the same op on the same inputs (e.g. the `-sin` of every RoPE)."""
    seen: dict[str, str] = {}
    replace: dict[str, str] = {}
    out = []
    for n in g.nodes:
        n.inputs = [replace.get(i, i) for i in n.inputs]
        if OPS[n.op].seq == "mixing":  # each owns its own cache/state
            out.append(n)
            continue
        key = json.dumps([n.op, n.inputs, n.attrs, list(n.type.shape)], sort_keys=True, default=str)
        if key in seen:
            replace[n.name] = seen[key]
            continue
        seen[key] = n.name
        out.append(n)
    g.nodes = out
    g.outputs = [replace.get(o, o) for o in g.outputs]
    return g


def same_tables(g: Graph) -> Graph:
    """Position tables with equal contents (every layer's RoPE cos/sin, evaluated per layer) become one."""
    first: dict[tuple, str] = {}
    for name in sorted(g.weights):
        w = g.weights[name]
        if w.role != "table" or w.dtype != "f32":
            continue
        data = np.ascontiguousarray(w.data, dtype=np.float32)
        key = (tuple(w.shape), hashlib.sha256(data.tobytes()).hexdigest())
        if key in first:
            rename_uses(g, name, first[key])
        else:
            first[key] = name
    return dead_code(g)


def fold_views(g: Graph) -> Graph:
    """reshape(reshape(x)) -> reshape(x); a reshape or permute that changes nothing -> x."""
    by_name = {n.name: n for n in g.nodes}
    for n in list(g.nodes):
        src = by_name.get(n.inputs[0]) if n.inputs else None
        if n.op == "reshape":
            if src is not None and src.op == "reshape":
                n.inputs = [src.inputs[0]]
            if list(g.type_of(n.inputs[0]).shape) == list(n.type.shape):
                rename_uses(g, n.name, n.inputs[0])
        elif n.op == "permute":
            if src is not None and src.op == "permute":
                n.attrs = {"perm": [src.attrs["perm"][p] for p in n.attrs["perm"]]}
                n.inputs = [src.inputs[0]]
            if n.attrs["perm"] == sorted(n.attrs["perm"]):
                rename_uses(g, n.name, n.inputs[0])
    return dead_code(g)


def fold_constants(g: Graph) -> Graph:
    """A node computed from f32 weights alone (a `1 + w` norm weight, a product of two parameters)
    becomes a derived weight holding its value, evaluated once by the interpreter's kernels."""
    from ..interpreter import KERNELS, Session

    s = Session(Graph({}, {}, [], [], {}), max_len=1)
    views: dict[str, Weight] = {}  # the values of views of weights, for the kernels that read them
    for n in list(g.nodes):
        ins = [views.get(i) or g.weights.get(i) for i in n.inputs]
        # position tables are read per step
        if (not n.inputs or OPS[n.op].seq != "token" or SEQ in n.type.shape
                or any(w is None or w.dtype != "f32" for w in ins)):
            continue
        value = np.ascontiguousarray(KERNELS[n.op](s, n, n.attrs, ins), dtype=np.float32)
        if not OPS[n.op].kernel:  # views stay views (they cost nothing; a parameter keeps its name)
            views[n.name] = Weight(tuple(value.shape), "f32", value)
            continue
        g.weights[n.name] = Weight(tuple(value.shape), "f32", value, None, "derived")
        g.nodes.remove(n)
    return dead_code(g)


def _is_scalar(n, fn: str, value: float | None = None) -> bool:
    return (n is not None and n.op == "binary" and n.attrs.get("fn") == fn and "scalar" in n.attrs
            and not n.attrs.get("reverse") and (value is None or float(n.attrs["scalar"]) == value))


def rms_norm_idiom(g: Graph) -> Graph:
    """The written-out RMSNorm `x * rsqrt(mean(x * x, -1) + eps)` (square, x*x or pow 2; either operand
    order) becomes `rms_norm(x)`; a following multiply by a weight vector over the last axis becomes
    its weight (after fold_constants, `(1 + w)` is such a weight too)."""
    by_name = {n.name: n for n in g.nodes}
    last = {n.name: len(n.type.shape) - 1 for n in g.nodes}

    def squared(name):
        q = by_name.get(name)
        if q is None:
            return None
        if q.op == "unary" and q.attrs["fn"] == "square":
            return q.inputs[0]
        if q.op == "binary" and q.attrs.get("fn") == "mul" and len(q.inputs) == 2 and q.inputs[0] == q.inputs[1]:
            return q.inputs[0]
        return None

    def inv_rms(name):
        """(x, eps) when name is rsqrt(mean(x^2, last axis) + eps)."""
        r = by_name.get(name)
        if r is None or r.op != "unary" or r.attrs["fn"] != "rsqrt":
            return None
        a = by_name.get(r.inputs[0])
        if not _is_scalar(a, "add"):
            return None
        m = by_name.get(a.inputs[0])
        if m is None or m.op != "mean" or m.attrs["axis"] != last[m.name]:
            return None
        x = squared(m.inputs[0])
        return (x, float(a.attrs["scalar"])) if x is not None else None

    for n in g.nodes:
        if n.op != "binary" or n.attrs.get("fn") != "mul" or len(n.inputs) != 2:
            continue
        for x, r in (n.inputs, n.inputs[::-1]):
            found = inv_rms(r)
            if found and found[0] == x and g.type_of(x).shape == n.type.shape:
                n.op, n.inputs, n.attrs = "rms_norm", [x], {"eps": found[1]}
                break
    users = g.users()
    for n in g.nodes:
        if n.op != "binary" or n.attrs.get("fn") != "mul" or len(n.inputs) != 2:
            continue
        for a, w in (n.inputs, n.inputs[::-1]):
            src = by_name.get(a)
            wt = g.weights.get(w)
            if (src is not None and src.op == "rms_norm" and len(src.inputs) == 1 and len(users.get(a, [])) == 1
                    and wt is not None and wt.dtype == "f32" and tuple(wt.shape) == (n.type.shape[-1],)):
                n.op, n.inputs, n.attrs = "rms_norm", [src.inputs[0], w], dict(src.attrs)
                break
    return dead_code(g)


def integer_powers(g: Graph) -> Graph:
    """`x ** n` for a small integer n (GELU-tanh's `pow(x, 3)`) becomes products: WGSL's `pow` is
    undefined for a negative base, while x ** 3 of a negative x is well defined."""
    for n in list(g.nodes):
        k = n.attrs.get("scalar")
        if not (_is_scalar(n, "pow") and float(k).is_integer() and 2 <= k <= 8):
            continue
        x = n.inputs[0]
        at = g.nodes.index(n)
        acc = Node(g.fresh(n.name + "_sq"), "unary", [x], {"fn": "square"}, n.type, n.source)
        g.nodes.insert(at, acc)
        for _ in range(int(k) - 2):
            at += 1
            acc = Node(g.fresh(n.name + "_mul"), "binary", [acc.name, x], {"fn": "mul"}, n.type, n.source)
            g.nodes.insert(at, acc)
        rename_uses(g, n.name, acc.name)
    return dead_code(g)


def scalar_weights(g: Graph) -> Graph:
    """A binary op whose tensor operand is a one-element f32 weight (Gemma's `embed_scale`, a 0-d
    parameter) takes it as its scalar: no backend needs a 0-d tensor."""
    for n in g.nodes:
        if n.op != "binary" or len(n.inputs) != 2 or n.inputs[0] == n.inputs[1]:
            continue
        for k, name in enumerate(n.inputs):
            w = g.weights.get(name)
            other = n.inputs[1 - k]
            if (w is None or w.dtype != "f32" or int(np.prod(w.shape)) != 1
                    or g.type_of(other).shape != n.type.shape):
                continue
            value = float(np.asarray(w.data).reshape(-1)[0])
            # R_q (parity.rq_state_dict) still needs the parameter
            g.meta.setdefault("scalar_weights", {})[name] = {"shape": list(w.shape), "value": value}
            n.inputs = [other]
            n.attrs = {"fn": n.attrs["fn"], "scalar": value,
                       **({"reverse": True} if k == 0 else {})}
            break
    return dead_code(g)


def canonicalize(g: Graph) -> Graph:
    return rms_norm_idiom(scalar_weights(fold_constants(integer_powers(fold_views(cse(same_tables(dead_code(g))))))))
