"""Fusion: turn the primitive ops from lowering into the kernels a backend runs.

Rules, applied in this order (each is a small function, each keeps the graph verifiable):

1. `rope`: the half-split rotary pattern (two slices, four products with the position tables,
   two sums, a concat) becomes one op.
2. `linear` -> `matmul` (a prologue, the product, an epilogue of elementwise steps).
3. A weightless RMSNorm whose every user is a matmul becomes those matmuls' prologue.
4. A matmul whose product reaches the output only through a multiply by one value per token (an
   expert's routing weight) takes that value as its gate (gate.py), then matmuls that read the
   same input with the same prologue and gate (q/k/v, gate/up) merge into one
   matmul over concatenated weight rows; the parts are slices of its output (views). Biases
   added to every part concatenate too, into the merged matmul's epilogue.
5. Elementwise ops (activations, the residual add, the softcap) join their producer's epilogue
   when they are its only user; a row norm joins the epilogue of producers that write whole rows
   (embedding, rope, elementwise): the QK-norm after RoPE, the norm after the embedding.
6. What is left of elementwise chains becomes `elementwise` kernels; one read only by matmuls of one
   gate ends in a `pick` by it (gate.py), so its rows no matmul reads are 0 and need not be computed.
"""

from __future__ import annotations

import numpy as np

from ..ir import UNARY, Graph, Node, TensorType, Weight
from .canonicalize import cse, dead_code, same_tables
from .gate import gate_of, gate_products, pick_read_rows

_ELEMENTWISE = ("unary", "binary")
_ROW_PRODUCERS = ("embedding", "rope", "elementwise")
_EPILOGUE_PRODUCERS = ("matmul", "rope", "embedding", "elementwise")


def _by_name(g: Graph) -> dict[str, Node]:
    return {n.name: n for n in g.nodes}


# --- 1. rope --------------------------------------------------------------------------------

def _rope(g: Graph) -> Graph:
    nodes = _by_name(g)

    def get(name):
        return nodes.get(name)

    def operands_of_mul(name):
        n = get(name)
        if n is None or n.op != "binary" or n.attrs.get("fn") != "mul" or len(n.inputs) != 2:
            return None
        return n.inputs

    def table_kind(name):
        """('cos'|'sin', table_node_name, negated) for positions(...) or neg(positions(...))."""
        n = get(name)
        neg = False
        if n is not None and n.op == "unary" and n.attrs["fn"] == "neg":
            neg, n = True, get(n.inputs[0])
        if n is None or n.op != "positions":
            return None
        return n.name, neg

    def half(name):
        """(x, 0|1) when name is the first/second half slice of x along its last axis."""
        n = get(name)
        if n is None or n.op != "slice":
            return None
        t = g.type_of(n.inputs[0])
        last = len(t.shape) - 1
        d = t.shape[last]
        if n.attrs["axis"] != last or d % 2:
            return None
        if (n.attrs["start"], n.attrs["end"]) == (0, d // 2):
            return n.inputs[0], 0
        if (n.attrs["start"], n.attrs["end"]) == (d // 2, d):
            return n.inputs[0], 1
        return None

    def term(name):
        """A product slice*table as (x, half, table, negated)."""
        ops = operands_of_mul(name)
        if ops is None:
            return None
        for a, b in (ops, ops[::-1]):
            h, t = half(a), table_kind(b)
            if h and t:
                return h[0], h[1], t[0], t[1]
        return None

    for n in g.nodes:
        if n.op != "concat" or len(n.inputs) != 2 or n.attrs["axis"] != len(n.type.shape) - 1:
            continue
        parts = []
        for s in n.inputs:
            a = get(s)
            if a is None or a.op != "binary" or a.attrs.get("fn") != "add" or len(a.inputs) != 2:
                break
            terms = [term(i) for i in a.inputs]
            if None in terms:
                break
            parts.append(sorted(terms, key=lambda t: t[1]))  # (half 0 term, half 1 term)
        if len(parts) != 2:
            continue
        (x0, _, c1, n1), (x1, _, s1, n2) = parts[0]
        (x2, _, s2, n3), (x3, _, c2, n4) = parts[1]
        # y1 = x1 cos + x2 sin ; y2 = x1 (-sin) + x2 cos  (nanochat's rotation by -theta)
        if len({x0, x1, x2, x3}) == 1 and c1 == c2 and s1 == s2 and (n1, n2, n3, n4) == (False, False, True, False):
            n.op, n.inputs, n.attrs = "rope", [x0, c1, s1], {"epilogue": []}
    return cse(same_tables(dead_code(_rotate_half(g))))


def _rotate_half(g: Graph) -> Graph:
    """Hugging Face's form `x * cos + cat(-x2, x1) * sin` with duplicated half tables (cos = cat(f, f)) is
    the rotation above by +θ: rope(x, cos[:d], -sin[:d]); the tables' halves are checked equal."""
    nodes = _by_name(g)
    halves: dict[tuple, str] = {}

    def table(name):
        n = nodes.get(name)
        if n is None or n.op != "positions" or n.inputs[0] not in g.weights or g.weights[n.inputs[0]].dtype != "f32":
            return None
        return n

    def rotated(name):
        """x when name is concat(neg(x[..., d:]), x[..., :d]) along the last axis."""
        c = nodes.get(name)
        if c is None or c.op != "concat" or len(c.inputs) != 2 or c.attrs["axis"] != len(c.type.shape) - 1:
            return None
        neg, lo = nodes.get(c.inputs[0]), nodes.get(c.inputs[1])
        if neg is None or neg.op != "unary" or neg.attrs["fn"] != "neg":
            return None
        hi = nodes.get(neg.inputs[0])
        if hi is None or lo is None or hi.op != "slice" or lo.op != "slice" or hi.inputs != lo.inputs:
            return None
        d = c.type.shape[-1] // 2
        last = len(c.type.shape) - 1
        if (c.type.shape[-1] % 2 or (hi.attrs["axis"], hi.attrs["start"], hi.attrs["end"]) != (last, d, 2 * d)
                or (lo.attrs["axis"], lo.attrs["start"], lo.attrs["end"]) != (last, 0, d)
                or g.type_of(hi.inputs[0]).shape != c.type.shape):
            return None
        return hi.inputs[0]

    def product(name, want):
        """(x, positions node) for mul(want(x), table) in either order."""
        m = nodes.get(name)
        if m is None or m.op != "binary" or m.attrs.get("fn") != "mul" or len(m.inputs) != 2:
            return None
        for a, b in (m.inputs, m.inputs[::-1]):
            x, t = want(a), table(b)
            if x is not None and t is not None:
                return x, t
        return None

    def half_table(t: Node, sign: float) -> str | None:
        if (t.name, sign) in halves:
            return halves[t.name, sign]
        w = np.asarray(g.weights[t.inputs[0]].data)
        d = w.shape[-1] // 2
        if w.shape[-1] % 2 or t.attrs["axis"] == w.ndim - 1 or not np.array_equal(w[..., :d], w[..., d:]):
            return None
        name = g.fresh(t.inputs[0] + (".half" if sign > 0 else ".neghalf"))
        g.weights[name] = Weight(w[..., :d].shape, "f32", np.ascontiguousarray(sign * w[..., :d]), None, "table")
        out = g.fresh(t.name + "_half")
        shape = t.type.shape[:-1] + (d,)
        lookup = Node(out, "positions", [name], dict(t.attrs), TensorType(shape, "f32"), t.source)
        g.nodes.insert(g.nodes.index(t) + 1, lookup)
        halves[t.name, sign] = out
        return out

    for n in list(g.nodes):
        if n.op != "binary" or n.attrs.get("fn") != "add" or len(n.inputs) != 2:
            continue
        for a, b in (n.inputs, n.inputs[::-1]):
            direct, rot = product(a, lambda x: x), product(b, rotated)
            if not direct or not rot or direct[0] != rot[0] or direct[1].name == rot[1].name:
                continue
            if g.type_of(direct[0]).shape != n.type.shape:
                continue
            cos, sin = half_table(direct[1], 1.0), half_table(rot[1], -1.0)
            if cos and sin:
                n.op, n.inputs, n.attrs = "rope", [direct[0], cos, sin], {"epilogue": []}
                break
    return g


# --- 2-3. matmul and norm prologue -------------------------------------------------------------

def _matmuls(g: Graph) -> Graph:
    for n in g.nodes:
        if n.op == "linear":
            n.op, n.attrs = "matmul", {"prologue": None, "epilogue": []}
    return g


def _norm_prologue(g: Graph) -> Graph:
    users = g.users()
    for n in g.nodes:
        if n.op != "rms_norm" or len(n.inputs) != 1 or n.name in g.outputs:
            continue
        us = users.get(n.name, [])
        if us and all(u.op == "matmul" and u.inputs[0] == n.name and u.attrs["prologue"] is None for u in us):
            for u in us:
                u.inputs[0] = n.inputs[0]
                u.attrs["prologue"] = {"rms_norm": True, "eps": n.attrs["eps"]}
    return dead_code(g)


# --- 4. merge projections sharing an input ---------------------------------------------------

def _merge_projections(g: Graph) -> Graph:
    groups: dict[tuple, list[Node]] = {}
    for n in g.nodes:
        if n.op == "matmul" and not n.attrs["epilogue"] and g.weights[n.inputs[1]].dtype == "f32":
            key = (n.inputs[0], str(n.attrs["prologue"]), gate_of(n))
            groups.setdefault(key, []).append(n)
    g.meta.setdefault("merged_weights", {})
    users = g.users()
    for key, ms in groups.items():
        if len(ms) < 2:
            continue
        names = [m.inputs[1] for m in ms]
        prefix = _common_prefix(names)
        parts = "+".join(dict.fromkeys(nm[len(prefix):].split(".")[0] for nm in names))  # experts[0..E): once
        rows = [g.weights[nm].shape[0] for nm in names]
        wname = _concat_weights(g, prefix + parts + ".weight", names)
        first = ms[0]
        shape = list(first.type.shape)
        shape[-1] = sum(rows)
        out = g.fresh(first.name + "_merged")
        mm = Node(out, "matmul", [first.inputs[0], wname], dict(first.attrs),
                  TensorType(tuple(shape), "f32"), " + ".join(m.source for m in ms))
        if key[2] is not None:
            mm.attrs["gate"] = 0
            mm.inputs.append(key[2])
        g.nodes.insert(g.nodes.index(first), mm)
        # a bias added to every part (Qwen2's q/k/v) becomes the merged matmul's epilogue: one
        # concatenated bias, and each part a slice of the biased product (no add per part)
        biased = [_bias_add(g, m, users) for m in ms]
        if all(biased):
            adds, biases = zip(*biased)
            mm.inputs.append(_concat_weights(g, prefix + parts + ".bias", list(biases)))
            mm.attrs["epilogue"] = [{"fn": "add", "operand": len(mm.inputs) - 3}]
            for m, a in zip(ms, adds):
                g.nodes.remove(m)
                a.source = f"{m.source}; {a.source}"
            ms = list(adds)
        start = 0
        for m, r in zip(ms, rows):
            m.op, m.inputs = "slice", [out]
            m.attrs = {"axis": len(shape) - 1, "start": start, "end": start + r}
            start += r
        # the slices must come after the merged matmul: move them right behind it
        for m in ms:
            g.nodes.remove(m)
        at = g.nodes.index(mm) + 1
        g.nodes[at:at] = ms
    return dead_code(g)


def _concat_weights(g: Graph, name: str, parts: list[str]) -> str:
    """One weight of PARTS' rows in order, listed in meta.merged_weights (R_q splits it back)."""
    ws = [g.weights[p] for p in parts]
    rows = [w.shape[0] for w in ws]
    g.weights[name] = Weight((sum(rows), *ws[0].shape[1:]), "f32", np.concatenate([w.data for w in ws]),
                             None, "param")
    g.meta["merged_weights"][name] = [[p, r] for p, r in zip(parts, rows)]
    return name


def _bias_add(g: Graph, m: Node, users: dict) -> tuple[Node, str] | None:
    """(M's only user, the bias) when that user adds a vector weight of M's width (a linear's
    bias), else None."""
    us = users.get(m.name, [])
    if len(us) != 1 or m.name in g.outputs:
        return None
    u = us[0]
    if u.op != "binary" or u.attrs.get("fn") != "add" or "scalar" in u.attrs or len(u.inputs) != 2:
        return None
    bias = u.inputs[1 - u.inputs.index(m.name)]
    w = g.weights.get(bias)
    if w is None or w.dtype != "f32" or w.shape != (m.type.shape[-1],) or u.type.shape != m.type.shape:
        return None
    return u, bias


def _common_prefix(names: list[str]) -> str:
    p = names[0]
    for nm in names[1:]:
        while not nm.startswith(p):
            p = p[:-1]
    return p[: p.rfind(".") + 1]


# --- 5-6. epilogues and elementwise chains -------------------------------------------------------

def _as_step(n: Node, producer: str, operands: list[str]) -> dict | None:
    """The node as one epilogue step applied to `producer`'s value, adding tensor operands."""
    if n.op == "unary":
        return {"fn": n.attrs["fn"]}
    if n.op == "rms_norm":
        step = {"fn": "rms_norm", "eps": n.attrs["eps"]}
        if len(n.inputs) > 1:
            step["operand"] = len(operands)
            operands.append(n.inputs[1])
        return step
    if n.op != "binary":
        return None
    fn = n.attrs["fn"]
    if "scalar" in n.attrs:
        return {"fn": fn, "scalar": n.attrs["scalar"], **({"reverse": True} if n.attrs.get("reverse") else {})}
    a, b = n.inputs
    other, reverse = (b, False) if a == producer else (a, True)
    if a == b:
        return None
    step = {"fn": fn, "operand": operands.index(other) if other in operands else len(operands)}
    if reverse and fn not in ("add", "mul"):
        step["reverse"] = True
    if other not in operands:
        operands.append(other)
    return step


def _primitive(u: Node) -> Node | None:
    """An `elementwise` kernel of one step seen as the unary/binary op it came from (None if more)."""
    if u.op != "elementwise":
        return u
    if len(u.attrs["steps"]) != 1:
        return None
    st = u.attrs["steps"][0]
    if st["fn"] == "rms_norm":
        return Node(u.name, "rms_norm", u.inputs, {"eps": st["eps"]}, u.type, u.source)
    if "operand" not in st:
        if st["fn"] in UNARY:
            return Node(u.name, "unary", u.inputs[:1], {"fn": st["fn"]}, u.type, u.source)
        return Node(u.name, "binary", u.inputs[:1], {k: v for k, v in st.items()}, u.type, u.source)
    a, b = u.inputs[0], u.inputs[1 + st["operand"]]
    if st.get("reverse"):
        a, b = b, a
    return Node(u.name, "binary", [a, b], {"fn": st["fn"]}, u.type, u.source)


def _epilogues(g: Graph) -> Graph:
    changed = True
    while changed:
        changed = False
        users = g.users()
        for n in g.nodes:
            if n.op not in _EPILOGUE_PRODUCERS or n.name in g.outputs:
                continue
            us = users.get(n.name, [])
            if len(us) != 1:
                continue
            u = _primitive(us[0])
            if u is None or u.op not in _ELEMENTWISE + ("rms_norm",):
                continue
            if u.op == "rms_norm" and (n.op not in _ROW_PRODUCERS or u.inputs[0] != n.name):
                continue
            if u.type.shape != n.type.shape:
                continue  # a broadcast that grows the output is not an epilogue
            operands = _operands(n)
            before = len(operands)
            step = _as_step(u, n.name, operands)
            if step is None:
                continue
            # an operand must be ready before the producer runs
            order = {m.name: i for i, m in enumerate(g.nodes)}
            if any(order.get(o, -1) > order[n.name] for o in operands[before:]):
                continue
            key = "steps" if n.op == "elementwise" else "epilogue"
            n.attrs[key] = n.attrs.get(key, []) + [step]
            _set_operands(n, operands)
            n.type = u.type
            g.nodes.remove(us[0])
            n.name = u.name  # n's only user was u: everything downstream already names u
            changed = True
            break
    return g


def _fixed_inputs(n: Node) -> int:
    return {"matmul": 2, "rope": 3, "embedding": 2, "elementwise": 1}[n.op]


def _operands(n: Node) -> list[str]:
    return list(n.inputs[_fixed_inputs(n):])


def _set_operands(n: Node, operands: list[str]) -> None:
    n.inputs = n.inputs[: _fixed_inputs(n)] + operands


def _elementwise_kernels(g: Graph) -> Graph:
    for n in g.nodes:
        if n.op in _ELEMENTWISE:
            operands: list[str] = []
            step = _as_step(n, n.inputs[0], operands)
            if step is None:  # x op x
                step = {"fn": n.attrs["fn"], "operand": 0}
                operands = [n.inputs[0]]
            n.op, n.inputs, n.attrs = "elementwise", [n.inputs[0]] + operands, {"steps": [step]}
    return _epilogues(g)


def _full_shape_first(g: Graph) -> Graph:
    """add/mul with the broadcast (smaller) operand first: swap, so input 0 has the output's shape."""
    for n in g.nodes:
        if n.op == "binary" and len(n.inputs) == 2 and n.attrs["fn"] in ("add", "mul"):
            a, b = (g.type_of(i).shape for i in n.inputs)
            if a != n.type.shape and b == n.type.shape:
                n.inputs.reverse()
    return g


def fuse(g: Graph) -> Graph:
    g = _rope(g)
    g = _matmuls(g)
    g = _norm_prologue(g)
    g = _merge_projections(gate_products(g))
    g = _epilogues(_full_shape_first(g))
    return pick_read_rows(_elementwise_kernels(g))
