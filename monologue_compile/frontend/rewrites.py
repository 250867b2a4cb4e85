"""Rewrites of the exported graph before lowering, each into the ATen ops the lowering already
understands, so the patterns it recognises (attention, a weight's matmul, a position table) are
recognised however the model spelled them.

- `inline_autocast`: a `torch.autocast(..., enabled=False)` region (rotary embeddings kept in
  f32 under mixed precision, as x-transformers and rotary-embedding-torch write them) is exported
  as a call of a submodule (`wrap_with_autocast`); its nodes go inline, as in the model's own code.
- `decompose`, einsum: torch.einsum as the permutes, sums and matmuls it stands for. Attention
  written as `einsum("bhqd,bhkd->bhqk", q, k)` then meets the same `q @ k.transpose` recognition
  as the matmul form, and no backend needs an einsum op. Operands are contracted left to right,
  as torch does without opt_einsum. Each pair is one matmul over their shared contracted indices:
  the first operand's own indices as rows, the second's as columns, the shared kept ones as batch
  axes; the matmul broadcasts over extra row axes, and columns merge only where their sizes are
  known at compile time. An equation this cannot write (a diagonal `ii`) is an error naming the node.
- `decompose`, COMPOSITES: ops made of others (`lerp`: a + (b - a) * w; var, std, var_mean: a
  LayerNorm written out; log_softmax; prelu; amin; addcmul, addcdiv; the axis moves movedim, swapaxes
  and mT as permutes; narrow as a slice; tile as repeat), each a formula in the table.
- `ids_shape_only`: `torch.ones_like(ids)` and the like as `full` of the ids' sizes, a constant of
  the length (positions as `ones_like(ids).cumsum(1) - 1`).
- `written_softmax`: `e = exp(x - x.amax(d)); e / e.sum(d)` (with or without the row max) is
  softmax(x, d), wherever it appears: of attention scores it is then the attention op.
- `drop_dead_code`: what no output reads and writes nothing in place (nn.MultiheadAttention's
  averaged weights where only its output is used; what a rewrite above left unread) is not lowered.
"""

from __future__ import annotations

import math
import operator
import string

import torch
import torch.fx
from torch._guards import detect_fake_mode
from torch.utils._pytree import tree_map

from ..errors import MonologueError

aten = torch.ops.aten


def inline_autocast(ep: torch.export.ExportedProgram) -> None:
    """Every autocast region of `ep` whose autocast does nothing here (disabled, or for another
    device than the CPU the reference runs on) put inline; one that casts on the CPU is an error
    naming it (the compiled model computes in f32)."""
    gm = ep.graph_module
    regions = [n for n in ep.graph.nodes if n.op == "call_function" and n.target is _AUTOCAST]
    for n in regions:
        device, dtype, enabled, _cache, body, *operands = n.args
        sub = getattr(gm, body.target)
        if enabled and device == "cpu":
            raise MonologueError(f"a torch.autocast({device!r}, {dtype}) region computes in {dtype}, and the compiled "
                                 f"model in f32, at fx node %{n.name} ({_first_source(sub.graph)})")
        inputs = [p for p in sub.graph.nodes if p.op == "placeholder"]
        if any(m.op in ("get_attr", "call_module") for m in sub.graph.nodes):
            raise MonologueError(f"an autocast region holding another region, at fx node %{n.name} "
                                 f"({_first_source(sub.graph)})")
        with ep.graph.inserting_before(n):
            outputs = ep.graph.graph_copy(sub.graph, dict(zip(inputs, operands)))
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        for user in list(n.users):  # getitem(region, i): the region's i-th output
            out = outputs[user.args[1]]
            if isinstance(out, torch.fx.Node) and isinstance(out.meta.get("val"), torch.Tensor):
                # under the getitem's name, which the program's signature may give an output
                user.target, user.args, user.kwargs = aten.alias.default, (out,), {}
            else:  # a size (-T), a number
                user.replace_all_uses_with(out)
                ep.graph.erase_node(user)
        ep.graph.erase_node(n)
        ep.graph.erase_node(body)
        delattr(gm, body.target)
    if regions:
        gm.recompile()


_AUTOCAST = getattr(torch.ops.higher_order, "wrap_with_autocast", None)


def _first_source(graph: torch.fx.Graph) -> str:
    """The user's line of a region's first node that has one (the region's own call has none)."""
    from .trace import source_line  # trace imports this module

    return next((line for m in graph.nodes if (line := source_line(m))), "no source")


class _Emitter:
    """New nodes computing what `node` computes, placed before it, each with its value (fake tensors,
    symbolic in T) and `node`'s source (for errors) in its meta; `become` makes `node` itself the
    last of them, so its name, which the program's signature may give an output, stays."""

    def __init__(self, graph: torch.fx.Graph, node: torch.fx.Node):
        self.graph, self.node = graph, node
        self.fake = detect_fake_mode([a.meta["val"] for a in node.all_input_nodes])

    def emit(self, target, *args, **kwargs) -> torch.fx.Node:
        vals = tree_map(lambda a: a.meta["val"] if isinstance(a, torch.fx.Node) else a, args)
        with self.fake:
            val = target(*vals, **kwargs)
        with self.graph.inserting_before(self.node):
            out = self.graph.call_function(target, args, kwargs)
        out.meta.update({k: v for k, v in self.node.meta.items() if k in ("stack_trace", "nn_module_stack")}, val=val)
        return out

    def become(self, last) -> None:
        """`node` replaced by `last`, or by a tuple of nodes where it has several outputs (its users
        are getitems: each then becomes an alias of its part, under its own name)."""
        if isinstance(last, tuple):
            for user in list(self.node.users):
                user.target, user.args, user.kwargs = aten.alias.default, (last[user.args[1]],), {}
            self.graph.erase_node(self.node)
            return
        if last in self.node.all_input_nodes:  # the op changed nothing ("ij->ij")
            last = self.emit(aten.alias.default, last)
        self.node.target, self.node.args, self.node.kwargs = last.target, last.args, last.kwargs
        self.node.meta["val"] = last.meta["val"]
        self.graph.erase_node(last)

    def fail(self, why: str):
        from .trace import source_line  # trace imports this module

        at = source_line(self.node)
        raise MonologueError(f"{why} at fx node %{self.node.name}" + (f" ({at})" if at else ""))


def _lerp(e, a, b, w):
    return e.emit(aten.add.Tensor, a, e.emit(aten.mul.Tensor, e.emit(aten.sub.Tensor, b, a), w))


def _variance(e, x, dim, correction, keepdim):
    """(var, mean) of x over `dim`: mean((x - mean)^2) * n / (n - correction), the mean kept."""
    shape = x.meta["val"].shape
    dims = list(range(len(shape))) if dim is None else [dim] if isinstance(dim, int) else list(dim)
    mean = e.emit(aten.mean.dim, x, dims, True)
    centred = e.emit(aten.sub.Tensor, x, mean)
    var = e.emit(aten.mean.dim, e.emit(aten.mul.Tensor, centred, centred), dims, keepdim)
    if correction:
        n = math.prod(shape[d] for d in dims)
        if not isinstance(n, int):
            e.fail("a variance over the sequence axis (sequence-mixing the compiler does not understand)")
        var = e.emit(aten.mul.Tensor, var, n / (n - correction))
    return var, mean if keepdim else e.emit(aten.mean.dim, x, dims, False)


def _var(e, x, dim=None, unbiased=True, keepdim=False, *, correction=None):
    """var.dim's (unbiased) and var.correction's (correction=) spellings alike."""
    return _variance(e, x, dim, int(unbiased) if correction is None else correction, keepdim)


def _var_only(e, *args, **kw):
    return _var(e, *args, **kw)[0]


def _std(e, *args, **kw):
    return e.emit(aten.sqrt.default, _var_only(e, *args, **kw))


def _log_softmax(e, x, dim, *rest, **kw):
    return e.emit(aten.sub.Tensor, x, e.emit(aten.logsumexp.default, x, [dim], True))


def _prelu(e, x, weight):
    """max(0, x) + w * min(0, x), w broadcast along axis 1 (torch's channel axis) when it has several values."""
    if weight.meta["val"].numel() > 1:
        weight = e.emit(aten.view.default, weight, [-1] + [1] * (x.meta["val"].dim() - 2))
    return e.emit(aten.where.self, e.emit(aten.gt.Scalar, x, 0.0), x, e.emit(aten.mul.Tensor, x, weight))


def _movedim(e, x, source, destination):
    """movedim / moveaxis: the permute that puts each source axis at its destination, the others
    in their order."""
    rank = x.meta["val"].dim()
    src = [s % rank for s in ([source] if isinstance(source, int) else source)]
    dst = [d % rank for d in ([destination] if isinstance(destination, int) else destination)]
    perm = [None] * rank
    for s, d in zip(src, dst):
        perm[d] = s
    rest = iter(i for i in range(rank) if i not in src)
    return e.emit(aten.permute.default, x, [next(rest) if p is None else p for p in perm])


def _swap_last(e, x):
    """x.mT, x.mH and x.adjoint() of a real tensor: its last two axes swapped."""
    return e.emit(aten.transpose.int, x, -2, -1)


def _narrow(e, x, dim, start, length):
    """narrow by numbers: a slice. By the length (`x.narrow(1, T - 1, 1)`, the last position) it is
    left for last_position.py, which knows that one."""
    if not isinstance(start, int) or not isinstance(length, int):
        return None
    return e.emit(aten.slice.Tensor, x, dim, start, start + length)


def _tile(e, x, dims):
    """tile: repeat, with ones in front for the axes `dims` leaves out."""
    rank = x.meta["val"].dim()
    return e.emit(aten.repeat.default, x, [1] * (rank - len(dims)) + list(dims))


def _amin(e, x, dim=(), keepdim=False):
    """x.amin(dim): -(-x).amax(dim), the same values."""
    return e.emit(aten.neg.default, e.emit(aten.amax.default, e.emit(aten.neg.default, x), dim, keepdim))


def _addcmul(e, a, b, c, *, value=1):
    return e.emit(aten.add.Tensor, a, e.emit(aten.mul.Tensor, e.emit(aten.mul.Tensor, b, c), value))


def _addcdiv(e, a, b, c, *, value=1):
    return e.emit(aten.add.Tensor, a, e.emit(aten.mul.Tensor, e.emit(aten.div.Tensor, b, c), value))


# composite ops as the ops they are made of: defined here once, so no backend needs them
COMPOSITES = {
    aten.movedim.int: _movedim,
    aten.movedim.intlist: _movedim,
    aten.moveaxis.int: _movedim,
    aten.moveaxis.intlist: _movedim,
    aten.swapaxes.default: lambda e, x, a, b: e.emit(aten.transpose.int, x, a, b),
    aten.swapdims.default: lambda e, x, a, b: e.emit(aten.transpose.int, x, a, b),
    aten.mT.default: _swap_last,
    aten.mH.default: _swap_last,
    aten.adjoint.default: _swap_last,
    aten.narrow.default: _narrow,
    aten.tile.default: _tile,
    aten.amin.default: _amin,
    aten.addcmul.default: _addcmul,
    aten.addcdiv.default: _addcdiv,
    aten.lerp.Scalar: _lerp,
    aten.lerp.Tensor: _lerp,
    aten.var.dim: _var_only,
    aten.var.correction: _var_only,
    aten.var_mean.correction: _var,
    aten.var_mean.dim: _var,
    aten.std.dim: _std,
    aten.std.correction: _std,
    aten.log_softmax.int: _log_softmax,
    aten._log_softmax.default: _log_softmax,
    aten.prelu.default: _prelu,
}


def decompose(ep: torch.export.ExportedProgram) -> None:
    """Every einsum and COMPOSITES node of `ep` replaced, in place, by the ops it is made of."""
    nodes = [n for n in ep.graph.nodes
             if n.op == "call_function" and (n.target in COMPOSITES or n.target is aten.einsum.default)]
    for n in nodes:
        if n.target is aten.einsum.default:
            e = _Einsum(ep.graph, n)
            e.become(e.contract(*n.args))
        else:
            e = _Emitter(ep.graph, n)
            made = COMPOSITES[n.target](e, *n.args, **n.kwargs)
            if made is not None:  # None: the composite leaves this one as it is
                e.become(made)
    if nodes:
        ep.graph_module.recompile()


# Ops that read only their input's shape (and dtype), as (fill value, where the size is): a tensor
# made from the token ids' shape is a constant of the length, as arange(T) is
_SHAPE_ONLY = {aten.ones_like.default: (1, None), aten.zeros_like.default: (0, None),
               aten.empty_like.default: (0, None), aten.full_like.default: ("fill", None),
               aten.new_ones.default: (1, 1), aten.new_zeros.default: (0, 1), aten.new_empty.default: (0, 1),
               aten.new_full.default: ("fill", 1)}


def ids_shape_only(ep: torch.export.ExportedProgram) -> None:
    """`torch.ones_like(ids)`, `ids.new_ones(ids.shape)` and the like rewritten as `full` of the ids'
    sizes, so they no longer read the ids: `(ones_like(ids).cumsum(1) - 1)` is then a position
    table, as arange(T) is."""
    ids = {n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs}
    found = [n for n in ep.graph.nodes if n.op == "call_function" and n.target in _SHAPE_ONLY and n.args[0] in ids]
    for n in found:
        fill, size_at = _SHAPE_ONLY[n.target]
        fill = n.args[2 if size_at else 1] if fill == "fill" else fill
        e = _Emitter(ep.graph, n)
        val = n.meta["val"]
        size = n.args[size_at] if size_at else [
            d if isinstance(d, int) else e.emit(aten.sym_size.int, n.args[0], i) for i, d in enumerate(val.shape)]
        e.become(e.emit(aten.full.default, size, fill, dtype=val.dtype))
    if found:
        ep.graph_module.recompile()


def written_softmax(ep: torch.export.ExportedProgram) -> None:
    """Each `e / e.sum(d, keepdim=True)` (or `x.exp() / x.exp().sum(...)`) with e = exp(x) or
    exp(x - x's row max along d) replaced by softmax(x, d): the same values (softmax is the same with
    any shift), and where exp(x) alone overflows the softmax stays finite. So is `exp(log_softmax(x,
    d))`, which `decompose` has written as exp(x - logsumexp(x, d))."""
    found = []
    for n in ep.graph.nodes:
        x = _log_softmax_of(n.args[0]) if n.op == "call_function" and n.target is aten.exp.default else None
        if x is not None:
            n.target, n.args, n.kwargs = aten._softmax.default, x, {}
            found.append(n)
            continue
        if n.op != "call_function" or n.target is not aten.div.Tensor or not all(
                isinstance(a, torch.fx.Node) for a in n.args):
            continue
        e, total = n.args
        if e.target is not aten.exp.default or total.target is not aten.sum.dim_IntList or not (
                total.args[0] is e or total.args[0].target is aten.exp.default and total.args[0].args == e.args):
            continue
        rank = e.meta["val"].dim()
        dims, keepdim = total.args[1], _arg(total, 2, "keepdim", False)
        if not keepdim or len(dims) != 1:
            continue
        d = dims[0] % rank
        x = _row_max_taken(e.args[0], d, rank) or e.args[0]
        n.target, n.args, n.kwargs = aten._softmax.default, (x, d, False), {}
        found.append(n)
    if found:
        ep.graph_module.recompile()  # the exp, sum and row max left unread go with the dead code


def _log_softmax_of(y) -> tuple | None:
    """(x, d, False) where y is x - logsumexp(x, [d], keepdim=True), the log_softmax composite."""
    if not isinstance(y, torch.fx.Node) or y.target is not aten.sub.Tensor or not isinstance(y.args[1], torch.fx.Node):
        return None
    x, lse = y.args
    if lse.target is not aten.logsumexp.default or lse.args[0] is not x or not _arg(lse, 2, "keepdim", False):
        return None
    dims = lse.args[1]
    if len(dims) != 1:
        return None
    return x, dims[0] % x.meta["val"].dim(), False


def _arg(n: torch.fx.Node, i: int, name: str, default):
    """Argument `name` of node n, given at position i or by keyword."""
    return n.args[i] if len(n.args) > i else n.kwargs.get(name, default)


def drop_dead_code(ep: torch.export.ExportedProgram) -> None:
    """Nodes whose values reach no output, in-place writes (torch's is_impure) excepted."""
    if ep.graph.eliminate_dead_code():
        ep.graph_module.recompile()


def _row_max_taken(y: torch.fx.Node, d: int, rank: int) -> torch.fx.Node | None:
    """x where y is x - x.amax(d, keepdim=True) (or torch.max's values, maybe detached)."""
    if y.target is not aten.sub.Tensor or not isinstance(y.args[1], torch.fx.Node):
        return None
    x, m = y.args
    while m.target in (aten.detach.default, aten.alias.default):
        m = m.args[0]
    if m.target is operator.getitem and m.args[1] == 0 and m.args[0].target is aten.max.dim:
        m = m.args[0]
        dims, keepdim = [m.args[1]], _arg(m, 2, "keepdim", False)
    elif m.target is aten.amax.default:
        dims, keepdim = m.args[1], _arg(m, 2, "keepdim", False)
    else:
        return None
    return x if m.args[0] is x and keepdim and [i % rank for i in dims] == [d] else None


class _Einsum(_Emitter):
    def fail(self, why: str):
        super().fail(f"einsum {self.node.args[0]!r}: {why}")

    def contract(self, equation: str, operands: list) -> torch.fx.Node:
        """The last of the nodes computing einsum(equation, *operands)."""
        inputs, output = self.subscripts(equation, [o.meta["val"].dim() for o in operands])
        x, xs = operands[0], inputs[0]
        for i, (y, ys) in enumerate(zip(operands[1:], inputs[1:]), 1):
            later = set(output).union(*inputs[i + 1:])
            x, xs = self.pair(x, xs, y, ys, later)
        x, xs = self.reduce(x, xs, set(output))
        return self.permute(x, xs, output)

    def subscripts(self, equation: str, ranks: list[int]) -> tuple[list[str], str]:
        """Each operand's indices and the output's, "..." spelled out as letters the equation leaves free."""
        lhs, arrow, rhs = equation.replace(" ", "").partition("->")
        inputs = lhs.split(",")
        if len(inputs) != len(ranks):
            self.fail(f"{len(inputs)} subscripts for {len(ranks)} operands")
        free = [c for c in string.ascii_letters if c not in equation]
        widest = max((r - len(s) + 3 for s, r in zip(inputs, ranks) if "..." in s), default=0)
        ellipsis = "".join(free[:widest])
        inputs = [s.replace("...", ellipsis[len(ellipsis) - (r - len(s) + 3):]) if "..." in s else s
                  for s, r in zip(inputs, ranks)]
        if arrow:
            output = rhs.replace("...", ellipsis)
        else:  # implicit output: the ellipsis, then the indices seen once, in alphabetical order
            seen = "".join(inputs)
            output = ellipsis + "".join(sorted(c for c in set(seen) if seen.count(c) == 1 and c not in ellipsis))
        for s, r in zip(inputs, ranks):
            if len(s) != r or len(set(s)) != len(s):
                self.fail(f"subscripts {s!r} for an operand of {r} axes" if len(s) != r else
                          f"an index repeated within one operand ({s!r}: a diagonal)")
        return inputs, output

    def pair(self, x, xs: str, y, ys: str, later: set[str]):
        """x and y contracted over the indices they share that nothing later needs: one matmul."""
        x, xs = self.reduce(x, xs, later | set(ys))
        y, ys = self.reduce(y, ys, later | set(xs))
        batch = [i for i in xs if i in ys and i in later]
        summed = [i for i in xs if i in ys and i not in later]
        rows, cols = [i for i in xs if i not in ys], [i for i in ys if i not in xs]
        if len(cols) > 1 and (len(rows) <= 1 or not self.fixed(y, ys, cols)):
            # the matmul broadcasts over several rows, and columns merge only where their sizes are
            # known: (x y)^T = y^T x^T
            x, xs, y, ys, rows, cols = y, ys, x, xs, cols, rows
        if len(cols) > 1 and not self.fixed(y, ys, cols):
            self.fail("both operands have several indices of their own, of sizes known only at run time")
        # axes of 1 where an operand lacks one the other has (digits: never an einsum index), so one
        # permute makes each operand: k.transpose as attention's recognition wants it, for MQA's
        # "bhid,bjd->bhij" too
        ones = [str(i) for i in range(len(rows))]
        if not summed:  # an outer product over the batch indices: a broadcast multiply
            a = self.arrange(x, xs, batch + rows + [str(9 - i) for i in range(len(cols))])
            b = self.arrange(y, ys, batch + ones + cols)
            return self.emit(aten.mul.Tensor, a, b), "".join(batch + rows + cols)
        a = self.arrange(x, xs, batch + (rows or ["0"]) + summed)
        # a matrix b broadcasts over a's rows as it is (x @ W); with batch axes, over rows beyond one
        b = self.arrange(y, ys, batch + (ones[1:] if batch else []) + summed + (cols or ["9"]))
        if len(summed) > 1:
            a = self.emit(aten.flatten.using_ints, a, -len(summed), -1)
            b = self.emit(aten.flatten.using_ints, b, -len(summed) - max(len(cols), 1), -max(len(cols), 1) - 1)
        if len(cols) > 1:
            b = self.emit(aten.flatten.using_ints, b, -len(cols), -1)
        out = self.emit(aten.matmul.default, a, b)
        if len(cols) > 1:
            out = self.emit(aten.unflatten.int, out, -1, self.fixed(y, ys, cols))
        for axis in ([-1] if not cols else []) + ([len(batch)] if not rows else []):
            out = self.emit(aten.squeeze.dim, out, axis)
        return out, "".join(batch + rows + cols)

    def arrange(self, x, xs: str, order: list[str]) -> torch.fx.Node:
        """x permuted to `order`, with an axis of 1 for each index of `order` it lacks."""
        ones = [i for i in order if i not in xs]
        return self.permute(self.unsqueeze(x, len(xs), len(ones)), xs + "".join(ones), order)

    @staticmethod
    def fixed(x, xs: str, indices: list[str]) -> list[int] | None:
        """The sizes of x's `indices`, where each is known at compile time."""
        sizes = [x.meta["val"].shape[xs.index(i)] for i in indices]
        return sizes if all(isinstance(n, int) for n in sizes) else None

    def reduce(self, x, xs: str, keep: set[str]):
        """x summed over the indices nothing else needs."""
        gone = [d for d, i in enumerate(xs) if i not in keep]
        if not gone:
            return x, xs
        return self.emit(aten.sum.dim_IntList, x, gone), "".join(i for i in xs if i in keep)

    def permute(self, x, xs: str, order) -> torch.fx.Node:
        order = "".join(order)
        if order == xs:
            return x
        return self.emit(aten.permute.default, x, [xs.index(i) for i in order])

    def unsqueeze(self, x, axis: int, count: int) -> torch.fx.Node:
        for _ in range(count):
            x = self.emit(aten.unsqueeze.default, x, axis)
        return x
