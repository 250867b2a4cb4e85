"""Canonicalize: drop dead code and duplicates, fold views, and fold attention's transposes into its layout."""

from __future__ import annotations

import json

from ..ir import OPS, Graph


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


_SWAP_HT = [0, 2, 1, 3]


def attention_layout(g: Graph) -> Graph:
    """Attention reads q, k, v and writes y as (1, T, H, D), the layout projections produce.

    The model transposes to (B, H, T, D) for SDPA and back; folding those transposes into the
    attention op's layout removes two copies per layer.
    """
    by_name = {n.name: n for n in g.nodes}
    users = g.users()
    for n in g.nodes:
        if n.op != "attention" or n.attrs["layout"] != "BHTD":
            continue
        srcs = [by_name.get(i) for i in n.inputs]
        if not all(s is not None and s.op == "permute" and s.attrs["perm"] == _SWAP_HT for s in srcs):
            continue
        outs = users.get(n.name, [])
        if not outs or not all(u.op == "permute" and u.attrs["perm"] == _SWAP_HT for u in outs):
            continue
        n.inputs = [s.inputs[0] for s in srcs]
        n.attrs["layout"] = "BTHD"
        n.type = outs[0].type
        for u in outs:
            rename_uses(g, u.name, n.name)
    return dead_code(g)


def canonicalize(g: Graph) -> Graph:
    return attention_layout(fold_views(cse(dead_code(g))))
