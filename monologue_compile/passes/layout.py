"""Layout: make the batch-one, sequence-second layout canonical, so the backends' per-token rows hold.

Every activation becomes `(1, T, ...)`:

1. `batch_one`: a `(T, ...)` value (a Conv1D's `view(-1, C)`, a learned position table looked up as
   `(T, C)`) gets the leading 1 of the batch, which is always one; the reshapes between `(T, C)` and
   `(1, T, C)` then change nothing and fold away, and broadcasts line up.
2. `fold_repeat_kv`: GQA written as `repeat_kv` (insert an axis after the heads, expand it, merge it
   back) before attention becomes the attention op's own `n_kv_head`: query head h reads KV head
   h // groups, which is that repeat. KV heads repeated as a block (`k.repeat(1, groups, 1, 1)`,
   einops' `(r h)`: h reads h % n_kv) become the same, with the query heads regrouped before the
   attention and its output's heads put back after it.
   (A reshape that both merges dims and moves axes of 1, as a merge of rotary pairs folded with
   repeat_interleave's unsqueeze, is taken apart first by `split_mixed_reshapes`, so the repeat is
   found whole; per-element ops between the repeat and the attention, k * scale or a rotary after
   repeat_kv, are applied to the unrepeated heads instead.)
3. `sink_permutes`: a permute that moves T off axis 1 (HF's `view(1, T, H, D).transpose(1, 2)`) is
   pushed down through every op that commutes with it (one rule table, `SINK`), the op rewritten to
   work on the unpermuted value, until it reaches attention (which takes the permute into its
   layout), cancels against its inverse, or meets an op it cannot pass; there it stays, and a backend
   that cannot run it names it.
"""

from __future__ import annotations

import numpy as np

from ..ir import SEQ, Graph, Node, TensorType, Weight, consecutive_runs, permute_is_view
from .canonicalize import cse, dead_code, fold_views, rename_uses, same_tables

_SWAP_HT = [0, 2, 1, 3]


def _permuted(shape, perm) -> tuple:
    return tuple(shape[p] for p in perm)


def _inverse(perm) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


# --- 1. batch one -----------------------------------------------------------------------------------

def batch_one(g: Graph) -> Graph:
    """(T, ...) -> (1, T, ...) for every value; axis attributes move with the new leading axis."""
    # a permute that moves only axes of 1 is a reshape first (nn.MultiheadAttention's batch_first
    # transposes (1, T, D) <-> (T, 1, D)), so growing it is growing a reshape
    g = unit_permutes_as_reshapes(g)
    grown: set[str] = set()
    for n in g.nodes:
        t = n.type.shape
        from_grown = bool(n.inputs) and n.inputs[0] in grown
        if n.op == "permute" and (from_grown or (t and t[0] == SEQ)):
            if not from_grown:
                continue  # (1, T, ...) -> (T, ...) by a permute: left for the backend to name
            n.attrs["perm"] = [0] + [p + 1 for p in n.attrs["perm"]]
        elif not (t and t[0] == SEQ):
            continue
        grown.add(n.name)
        n.type = TensorType((1,) + tuple(t), n.type.dtype)
        if n.op in ("reshape", "expand"):
            n.attrs["shape"] = [1] + list(n.attrs["shape"])
        elif n.op == "positions":
            name = n.inputs[0]
            w = g.weights[name]
            n.inputs[0] = g.fresh(name + ".b1")
            g.weights[n.inputs[0]] = Weight((1,) + tuple(w.shape), w.dtype, np.asarray(w.data)[None], w.quant, w.role)
            n.attrs["axis"] += 1
        elif "axis" in n.attrs and from_grown:
            n.attrs["axis"] += 1
    return dead_code(fold_views(g))


# --- 2. repeat_kv into the attention op ---------------------------------------------------------------

def _repeat_source(g: Graph, by_name: dict, name: str, head: int) -> tuple[str, int, bool] | None:
    """(x, groups, tiled) when `name` repeats each of x's heads (axis `head`) `groups` times in a row
    (llama's repeat_kv: reshape(expand(reshape(x))) with the new axis after the heads), or all of
    them `groups` times over (tiled: the new axis before the heads, einops' 'b h n d -> b (r h) n d',
    or `x.repeat(1, groups, 1, 1)`, a concat of copies); None otherwise."""
    merge = by_name.get(name)
    if merge is not None and merge.op == "concat" and merge.attrs["axis"] == head and len(set(merge.inputs)) == 1 \
            and len(merge.inputs) > 1:
        return merge.inputs[0], len(merge.inputs), True
    if merge is None or merge.op != "reshape":
        return None
    rep = by_name.get(merge.inputs[0])
    if rep is None or rep.op != "expand":
        return None
    split = by_name.get(rep.inputs[0])
    if split is None or split.op != "reshape":
        return None
    x = list(g.type_of(split.inputs[0]).shape)
    if len(rep.type.shape) != len(x) + 1:
        return None
    for at, tiled in ((head + 1, False), (head, True)):
        groups = rep.type.shape[at]
        if (isinstance(groups, int) and list(split.type.shape) == x[:at] + [1] + x[at:]
                and list(rep.type.shape) == x[:at] + [groups] + x[at:]
                and list(merge.type.shape) == x[:head] + [x[head] * groups] + x[head + 1:]):
            return split.inputs[0], groups, tiled
    return None


_PER_ELEMENT = ("unary", "binary", "elementwise")


def _through_per_element(g: Graph, by_name: dict, name: str, head: int, at: Node) -> tuple[str, int, bool] | None:
    """_repeat_source of `name`, looking through per-element ops after the repeat whose other
    operands do not vary along the heads (k * scale, a norm or rotary applied after repeat_kv): each
    such op is applied to the unrepeated heads instead (a new node before `at`), as it commutes with
    the repeat."""
    found = _repeat_source(g, by_name, name, head)
    n = by_name.get(name)
    if found is not None or n is None or n.op not in _PER_ELEMENT or not n.inputs:
        return found
    rank = len(n.type.shape)
    for o in n.inputs[1:]:  # broadcast from the right: its head axis, if it reaches that far, is 1
        shape = g.type_of(o).shape
        if len(shape) > rank - head and shape[head - (rank - len(shape))] != 1:
            return None
    found = _through_per_element(g, by_name, n.inputs[0], head, at)
    if found is None:
        return None
    x, groups, tiled = found
    shape = tuple(n.type.shape[:head]) + (g.type_of(x).shape[head],) + tuple(n.type.shape[head + 1:])
    twin = Node(g.fresh(n.name + "_kv"), n.op, [x] + list(n.inputs[1:]), dict(n.attrs),
                TensorType(shape, n.type.dtype), n.source)
    g.nodes.insert(g.nodes.index(at), twin)
    by_name[twin.name] = twin
    return twin.name, groups, tiled


def fold_repeat_kv(g: Graph) -> Graph:
    """Query head h reads KV head h // groups (the attention op's grouping). KV heads repeated as a
    block (tiled: h reads h % n_kv) are the same grouping with the query heads reordered, n_kv
    groups of every n_kv-th head, and the output's heads put back: per-token copies of the heads."""
    by_name = {n.name: n for n in g.nodes}
    for n in list(g.nodes):
        if n.op != "attention":
            continue
        head = 1 if n.attrs["layout"] == "BHTD" else 2
        found = [_through_per_element(g, by_name, i, head, n) for i in n.inputs[1:]]
        if None in found or found[0][1:] != found[1][1:]:
            continue
        (k, groups, tiled), (v, _, _) = found
        n_kv = n.attrs["n_kv_head"] // groups
        q = n.inputs[0]
        if tiled and n_kv > 1:
            # new head j is old head (j % groups) * n_kv + j // groups: reads KV head j // groups
            order = [(j % groups) * n_kv + j // groups for j in range(n_kv * groups)]
            q = _heads_in_order(g, q, head, order, n, g.fresh(f"{n.name}_q_grouped"), after=False)
            # the attention's value under a name of its own, and its name on the heads put back in order
            name, n.name = n.name, g.fresh(f"{n.name}_grouped")
            _heads_in_order(g, n.name, head, [order.index(i) for i in range(len(order))], n, name, after=True)
        n.inputs = [q, k, v]
        n.attrs["n_kv_head"] = n_kv
    return dead_code(g)


def _heads_in_order(g: Graph, x: str, axis: int, order: list[int], at: Node, name: str, after: bool) -> str:
    """`name`: x's heads (along `axis`) in `order`, slices of runs of consecutive heads concatenated,
    placed before or after node `at`."""
    t = g.type_of(x)
    nodes = []
    for a, b in consecutive_runs(order):
        shape = tuple(b - a if i == axis else d for i, d in enumerate(t.shape))
        nodes.append(Node(g.fresh(f"{name}{a}"), "slice", [x], {"axis": axis, "start": a, "end": b},
                          TensorType(shape, t.dtype), at.source))
    nodes.append(Node(name, "concat", [m.name for m in nodes], {"axis": axis}, t, at.source))
    i = g.nodes.index(at) + after
    g.nodes[i:i] = nodes
    return name


# --- 3. permutes sink to attention -----------------------------------------------------------------

def _moves_seq(g: Graph, n: Node) -> bool:
    """A permute that takes a (1, T, ...) value to a layout with T elsewhere, or with an axis other
    than the batch of 1 before it (nn.MultiheadAttention's (3, T, ...) of packed q, k, v)."""
    if n.op != "permute":
        return False
    src = g.type_of(n.inputs[0]).shape
    return len(src) > 1 and src[:2] == (1, SEQ) and tuple(n.type.shape[:2]) != (1, SEQ)


def _axis_rule(check_last: bool = False):
    def rule(g: Graph, n: Node, perm: list[int]) -> tuple[dict, list[int]] | None:
        last = len(n.type.shape) - 1
        if last != len(perm) - 1:
            return None  # an operand of higher rank broadcasts the permuted one (nn.MultiheadAttention's mask)
        if check_last and perm[last] != last:
            return None  # a norm over the last axis needs the last axis to stay last
        return ({**n.attrs, "axis": perm[n.attrs["axis"]]} if "axis" in n.attrs else dict(n.attrs)), perm
    return rule


def _attention_rule(g: Graph, n: Node, perm: list[int]) -> tuple[dict, list[int]] | None:
    if perm != _SWAP_HT or n.attrs["layout"] != "BHTD":
        return None
    return {**n.attrs, "layout": "BTHD"}, perm


def _reshape_rule(g: Graph, n: Node, perm: list[int]) -> tuple[dict, list[int]] | None:
    """A reshape of only the axes the permute leaves in place (x[..., ::2]'s split of the last axis
    into (D / 2, 2)): the same reshape of the unpermuted value, the permute extended over the new
    axes after it."""
    src, out = g.type_of(n.inputs[0]).shape, n.type.shape
    k = len(perm)
    while k > 0 and perm[k - 1] == k - 1:
        k -= 1
    if tuple(out[:k]) != tuple(src[:k]):
        return _unit_reshape_rule(src, out, perm)
    after = list(perm[:k]) + list(range(k, len(out)))
    return {"shape": list(_permuted(out, _inverse(after)))}, after


def _unit_reshape_rule(src: tuple, out: tuple, perm: list[int]) -> tuple[dict, list[int]] | None:
    """A reshape that only drops or adds axes of 1 (nn.MultiheadAttention's squeeze of its packed
    (3, T, 1, 1, D) q, k, v): the unpermuted value reshaped to (1, T, its other dims of more than 1,
    1, ...), and a permute putting each dim where the reshape had it."""
    if [d for d in out if d != 1] != [d for d in src if d != 1]:
        return None
    unpermuted = _permuted(src, _inverse(perm))
    big = [a for a in range(2, len(unpermuted)) if unpermuted[a] != 1]
    shape = [1, SEQ] + [unpermuted[a] for a in big]
    if len(shape) > len(out):
        return None
    shape += [1] * (len(out) - len(shape))
    where = {1: 1, **{a: 2 + i for i, a in enumerate(big)}}  # unpermuted axis -> its axis in `shape`
    order = iter(where[perm[i]] for i in range(len(src)) if src[i] != 1)  # out's dims of more than 1
    units = iter([0] + list(range(2 + len(big), len(shape))))
    return {"shape": shape}, [next(order) if d != 1 else next(units) for d in out]


def _expand_rule(g: Graph, n: Node, perm: list[int]) -> tuple[dict, list[int]] | None:
    """A broadcast (DeepSeek's k_rot over the heads): the same broadcast of the unpermuted value."""
    return {"shape": list(_permuted(n.attrs["shape"], _inverse(perm)))}, perm


# op -> how it works on the unpermuted value (its new attrs, and the permute that then follows it: perm,
# or perm extended over axes a reshape adds), or None when it does not commute with perm; every tensor
# input must then be the same permute (or a table/weight the pass permutes back)
SINK = {
    "reshape": _reshape_rule,
    "expand": _expand_rule,
    "unary": _axis_rule(),
    "binary": _axis_rule(),
    "cast": _axis_rule(),
    "slice": _axis_rule(),
    "concat": _axis_rule(),
    "mean": _axis_rule(),
    "softmax": _axis_rule(),
    "rms_norm": _axis_rule(check_last=True),
    "layer_norm": _axis_rule(check_last=True),
    "linear": _axis_rule(check_last=True),  # DeepSeek's kv_b_proj of a (1, 1, T, r) latent
    "attention": _attention_rule,
}
# the index from which inputs are weights of the last axis (a norm's vectors, a linear's matrix), not tensors
# in the permuted layout
_WEIGHT_INPUTS = {"rms_norm": 1, "layer_norm": 1, "linear": 1}


def split_mixed_reshapes(g: Graph) -> Graph:
    """A reshape that changes both the dims of more than 1 and where the axes of 1 sit (pairs merged
    back, then repeat_interleave's unsqueeze, folded into one) as two: to the leading 1s then its dims
    of more than 1, then the axes of 1 alone. A repeat_kv is then found whole, and a permute sinks
    through each part."""
    for n in list(g.nodes):
        if n.op != "reshape" or not n.inputs:
            continue
        src, out = g.type_of(n.inputs[0]).shape, n.type.shape
        big = [d for d in out if d != 1]
        lead = next((i for i, d in enumerate(src) if d != 1), len(src))
        shape = (1,) * lead + tuple(big)
        if [d for d in src if d != 1] == big or shape == tuple(out):
            continue
        dims = Node(g.fresh(n.name + "_dims"), "reshape", list(n.inputs), {"shape": list(shape)},
                    TensorType(shape, n.type.dtype), n.source)
        g.nodes.insert(g.nodes.index(n), dims)
        n.inputs = [dims.name]
    return g


class _Sinker:
    def __init__(self, g: Graph):
        self.g = g
        self.done: dict[tuple, str] = {}  # (operand, perm) -> its unpermuted twin

    def operand(self, name: str, rank: int, inv: list[int]) -> str | None:
        """`name` (broadcast against a permuted value of rank `rank`) in the unpermuted layout."""
        g = self.g
        key = (name, tuple(inv))
        if key in self.done:
            return self.done[key]
        by_name = {n.name: n for n in g.nodes}
        src = by_name.get(name)
        shape = tuple(g.type_of(name).shape)
        if len(shape) > rank:
            return None
        full = (1,) * (rank - len(shape)) + shape
        new_shape = _permuted(full, inv)
        if src is not None and src.op == "permute" and src.attrs["perm"] == _inverse(inv):
            out = src.inputs[0]
        elif name in g.weights and g.weights[name].dtype == "f32":
            w = g.weights[name]
            out = g.fresh(name + ".t")
            g.weights[out] = Weight(new_shape, "f32", np.ascontiguousarray(np.transpose(
                np.asarray(w.data).reshape(full), inv)), None, w.role if w.role == "table" else "derived")
        elif src is not None and src.op == "positions" and src.inputs[0] in g.weights:
            w = g.weights[src.inputs[0]]
            if len(w.shape) > rank:
                return None
            lead = rank - len(w.shape)  # a (T, D) table broadcast against (1, H, T, D)
            data = np.asarray(w.data).reshape((1,) * lead + tuple(w.shape))
            table = g.fresh(src.inputs[0] + ".t")
            g.weights[table] = Weight(_permuted(data.shape, inv), "f32",
                                      np.ascontiguousarray(np.transpose(data, inv)), None, "table")
            out = g.fresh(name + "_t")
            lookup = Node(out, "positions", [table], {"axis": inv.index(src.attrs["axis"] + lead)},
                          TensorType(new_shape, "f32"), src.source)
            g.nodes.insert(g.nodes.index(src) + 1, lookup)
        else:
            return None
        self.done[key] = out
        return out

    def sink(self, p: Node, u: Node) -> bool:
        """Rewrite user u of the permute p to run before it; True when it did."""
        g = self.g
        perm = p.attrs["perm"]
        inv = _inverse(perm)
        rule = SINK.get(u.op)
        rewritten = rule(g, u, perm) if rule else None
        if rewritten is None:
            return False
        attrs, after_perm = rewritten
        rank = len(p.type.shape)
        by_name = {n.name: n for n in g.nodes}
        tensors = u.inputs[:_WEIGHT_INPUTS.get(u.op, len(u.inputs))]
        new_inputs = list(u.inputs)
        for i, name in enumerate(tensors):
            src = by_name.get(name)
            if src is not None and src.op == "permute" and src.attrs["perm"] == perm:
                new_inputs[i] = src.inputs[0]
                continue
            if src is not None and src.op == "expand" and g.type_of(src.inputs[0]).seq_axis is None:
                # a weight broadcast over T (attention's zero padding): the same broadcast, unpermuted
                shape = _permuted(src.type.shape, inv)
                twin = Node(g.fresh(name + "_t"), "expand", [src.inputs[0]], {"shape": list(shape)},
                            TensorType(shape, src.type.dtype), src.source)
                g.nodes.insert(g.nodes.index(src) + 1, twin)
                new_inputs[i] = twin.name
                continue
            if src is not None and src.type.seq_axis is not None and src.op != "positions":
                return False  # another activation in another layout
            twin = self.operand(name, rank, inv)
            if twin is None:
                return False
            new_inputs[i] = twin
        old_type = u.type
        u.inputs, u.attrs = new_inputs, attrs
        u.type = TensorType(_permuted(old_type.shape, _inverse(after_perm)), old_type.dtype)
        after = Node(g.fresh(u.name + "_perm"), "permute", [u.name], {"perm": list(after_perm)}, old_type, p.source)
        rename_uses(g, u.name, after.name)
        after.inputs = [u.name]
        g.nodes.insert(g.nodes.index(u) + 1, after)
        return True


def split_unit_reshapes(g: Graph) -> Graph:
    """A reshape that moves T off axis 1 by inserting axes of size 1 in front of it ((1, T, D) ->
    (1, 1, T, D), one head in BHTD) is a reshape to (1, T, 1, D) and a permute, which can then sink."""
    for n in list(g.nodes):
        src, out = g.type_of(n.inputs[0]).shape if n.inputs else (), n.type.shape
        if n.op != "reshape" or src[:2] != (1, SEQ) or SEQ not in out or out.index(SEQ) < 2:
            continue
        k = out.index(SEQ)
        if any(d != 1 for d in out[:k]):
            continue
        canon = (1, SEQ) + tuple(out[1:k]) + tuple(out[k + 1:])
        perm = [0] + list(range(2, k + 1)) + [1] + list(range(k + 1, len(out)))
        view = Node(g.fresh(n.name + "_rows"), "reshape", list(n.inputs), {"shape": list(canon)},
                    TensorType(canon, n.type.dtype), n.source)
        g.nodes.insert(g.nodes.index(n), view)
        n.op, n.inputs, n.attrs = "permute", [view.name], {"perm": perm}
    return g


def unit_permutes_as_reshapes(g: Graph) -> Graph:
    for n in g.nodes:
        if n.op == "permute" and permute_is_view(g.type_of(n.inputs[0]).shape, n.attrs["perm"]):
            n.op, n.attrs = "reshape", {"shape": list(n.type.shape)}
    return fold_views(g)


def sink_permutes(g: Graph) -> Graph:
    sinker = _Sinker(g)
    changed = True
    while changed:
        changed = False
        g = fold_views(g)
        users = g.users()
        for p in list(g.nodes):
            if not _moves_seq(g, p):
                continue
            for u in users.get(p.name, []):
                if sinker.sink(p, u):
                    changed = True
            if changed:
                break
    g = dead_code(cse(same_tables(g)))
    users = g.users()
    stuck = {p.name: "T leaves axis 1; the layout pass cannot move it past " +
             ", ".join(f"%{u.name} ({u.op})" for u in users.get(p.name, [])) for p in g.nodes if _moves_seq(g, p)}
    if stuck:
        g.meta["unsunk_permutes"] = stuck
    return g


def layout(g: Graph) -> Graph:
    g = fold_repeat_kv(split_mixed_reshapes(split_unit_reshapes(batch_one(g))))
    return unit_permutes_as_reshapes(sink_permutes(g))
