"""Gated products: a matmul whose rows are all later multiplied by one value per token skips the
rows where that value is 0.

A mixture of experts traced densely (frontend/experts.py) runs every expert on every token and
multiplies each output by the token's routing weight for that expert, which is 0 unless the router
picked it:

    out = out + expert_e(x) * w_e        w_e: (1, T, 1), 0 in most rows

Where w_e[t] is 0, row t of expert_e(x) cannot change the sum, so the expert's matmuls need not run
for it. For each product `mul(v, w)` by a per-token value w, this rule finds v's exclusive cone: the
ops whose value reaches the rest of the graph only through that product. If every op in it works
per token (row t from row t alone: no attention, no token shift) and stays finite on finite input,
every matmul in it takes w as its gate (`ir.OPS["matmul"]`): a row where w is 0 gets a product of 0
without computing it. The gated rows' values change only on their way to a product by 0; every other
row is untouched, so the graph's output is the same (up to the sign of a zero).

It runs inside fusion, before projections merge: a matmul merges only with matmuls of the same gate,
so an expert's gate and up projections still become one, while the router and the experts no longer
do. After fusion, `pick_read_rows` ends an elementwise kernel read only by matmuls gated by w (the
expert's activation) with `pick(w)`: its rows where w is 0 are never read, so making them 0 changes
nothing, and a chain that ends in a pick by 0 is 0 whatever came before, which lets a backend skip it.
"""

from __future__ import annotations

import math

from ..elementwise import POSITIVE_DOMAIN
from ..ir import Graph, Node

# per-token ops that map finite rows to finite rows; functions with a restricted domain (a division
# by a row that is now 0) are left out, so a cone holding one stays dense
_FINITE_VIEWS = ("reshape", "permute", "slice", "expand", "cast", "copy", "concat")
_FINITE_KERNELS = ("matmul", "softmax", "mean", "topk", "rope")


def _finite_per_token(n: Node) -> bool:
    if n.op in _FINITE_VIEWS + _FINITE_KERNELS:
        return True
    if n.op in ("unary", "binary"):
        return n.attrs["fn"] not in POSITIVE_DOMAIN
    if n.op in ("rms_norm", "layer_norm"):
        return n.attrs["eps"] > 0
    return False


def _from_tokens(g: Graph) -> set[str]:
    """The values computed from the token ids (not from positions and weights alone)."""
    out = set(g.inputs)
    for n in g.nodes:
        if any(i in out for i in n.inputs):
            out.add(n.name)
    return out


def _per_token_value(nodes: dict, name: str, from_tokens: set[str]) -> bool:
    """One f32 value per token computed from the tokens: a (1, T, 1, ...) activation. A value of the
    position alone (Llama 4's query temperature) is a table the backends read at the position, and
    is no expert's weight."""
    if name not in nodes or name not in from_tokens:
        return False
    t = nodes[name].type
    return t.dtype == "f32" and t.seq_axis == 1 and t.shape[0] == 1 and math.prod(t.shape[2:]) == 1


def _exclusive_cone(g: Graph, v: str, product: str, gate: str, users: dict, nodes: dict) -> set[str] | None:
    """The nodes whose every use lies in the cone or is `product`, grown backwards from v; None when
    one of them is not a finite per-token op. The gate never joins, so neither does any op it reads
    (each path from such an op to the product runs through the gate)."""
    cone = {v}
    grown = True
    while grown:
        grown = False
        for name in list(cone):
            for i in nodes[name].inputs:
                if i in cone or i not in nodes or i == gate or i in g.outputs:
                    continue
                if all(u.name in cone or u.name == product for u in users.get(i, [])):
                    cone.add(i)
                    grown = True
    return cone if all(_finite_per_token(nodes[c]) for c in cone) else None


def gate_products(g: Graph) -> Graph:
    nodes = {n.name: n for n in g.nodes}
    order = {n.name: i for i, n in enumerate(g.nodes)}
    users = g.users()
    from_tokens = _from_tokens(g)
    for p in g.nodes:
        if p.op != "binary" or p.attrs.get("fn") != "mul" or len(p.inputs) != 2:
            continue
        for v, gate in (p.inputs, p.inputs[::-1]):
            if (v not in nodes or v in g.outputs or not _per_token_value(nodes, gate, from_tokens)
                    or g.type_of(v).shape != p.type.shape
                    or p.type.seq_axis != 1 or [u.name for u in users[v]] != [p.name]):
                continue
            cone = _exclusive_cone(g, v, p.name, gate, users, nodes)
            for name in sorted(cone or (), key=order.get):
                m = nodes[name]
                if m.op == "matmul" and m.attrs.get("gate") is None and order[gate] < order[name]:
                    m.attrs["gate"] = len(m.inputs) - 2
                    m.inputs.append(gate)
    return g


def gate_of(n: Node) -> str | None:
    """The value a matmul's gate reads, or None."""
    return None if n.attrs.get("gate") is None else n.inputs[2 + n.attrs["gate"]]


def pick_read_rows(g: Graph) -> Graph:
    order = {n.name: i for i, n in enumerate(g.nodes)}
    users = g.users()
    for n in g.nodes:
        if n.op != "elementwise" or n.name in g.outputs or n.type.seq_axis != 1:
            continue
        gates = {gate_of(u) if u.op == "matmul" and u.inputs[0] == n.name and n.name not in u.inputs[1:] else None
                 for u in users.get(n.name, [])}
        if len(gates) != 1 or None in gates:
            continue
        (gate,) = gates
        if order[gate] > order[n.name] or n.attrs["steps"][-1:] and n.attrs["steps"][-1].get("fn") == "pick":
            continue
        operands = n.inputs[1:]
        if gate not in operands:
            n.inputs.append(gate)
        n.attrs["steps"] = n.attrs["steps"] + [{"fn": "pick", "operand": n.inputs[1:].index(gate)}]
    return g
