"""Subgraphs that depend only on positions, evaluated at compile time.

A model computes some values from the sequence length and its constants alone, never from the
token ids: position ids (`arange`), RoPE `cos`/`sin` from `inv_freq` with any scaling, learned
position rows (`wpe(arange(T))`), attention masks built from comparisons of positions, `1 + w` of a
norm weight. Lowering does not translate those ops one by one; it marks the fx nodes whose inputs
are only constants and sizes (`constant_nodes`) and, where an id-dependent op uses one, asks
`Evaluator` for its value at a concrete length and turns it into what the IR already has:

- no sequence axis: a constant weight;
- one sequence axis: a table read by absolute position (`positions`), after checking that the value
  at a shorter length is the prefix of the value at the longest (row t never depends on T);
- two sequence axes, used as an attention mask: proven causal (+ a sliding window) by evaluating it
  at several lengths (`causal_window`); any other mask is an error naming the node.
- a finite term added to the attention scores: proven to be ALiBi, slope_h * (key position) plus
  anything constant along each query's row (which the softmax cancels), by evaluating it at several
  lengths (`linear_bias`).
"""

from __future__ import annotations

import torch
import torch.fx
from torch.utils._pytree import tree_map

from .errors import MonologueError

_SCALARS = (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)


def constant_nodes(ep: torch.export.ExportedProgram, ids: torch.fx.Node) -> set[torch.fx.Node]:
    """call_function nodes whose value follows from the sequence length and the constants alone."""
    out: set[torch.fx.Node] = set()
    known = {n for n in ep.graph.nodes if n.op == "placeholder" and n is not ids}
    params = {n for n in known if getattr(_spec(ep, n), "kind", None) == torch.export.graph_signature.InputKind.PARAMETER}
    positional: set[torch.fx.Node] = set()  # depends on T
    for n in ep.graph.nodes:
        if n.op != "call_function":
            continue
        val = n.meta.get("val")
        if isinstance(val, _SCALARS) and not isinstance(val, torch.Tensor):
            out.add(n)  # a size, e.g. sym_size(ids, 1): a function of T
            positional.add(n)
            continue
        ins = n.all_input_nodes
        if not all(a in known or a in out for a in ins):
            continue
        if any(a in positional for a in ins):
            out.add(n)
            positional.add(n)
        elif not any(a in params for a in ins):
            out.add(n)  # buffers and literals only
        # else: parameters only (`resid_lambdas[i]`, `1 + w`): lowered as ops on the weight, which
        # stays a weight of its own name (R_q is rebuilt from the IR's weights)
    return out


def _spec(ep, n):
    return next((s for s in ep.graph_signature.input_specs if s.arg.name == n.name), None)


class Evaluator:
    """Runs constant fx nodes with torch for a concrete sequence length T (memoized per T).

    A tensor the model fills in place (`pe = zeros(T, D); pe[:, 0::2] = sin(...)`: a copy_ into a
    view of it) is read as eager PyTorch would at `reader`, the node being lowered: the value, its
    ancestors and the in-place writes into any of them that come before the reader run in graph
    order, on fresh tensors, so each write goes through the views that share storage with it."""

    def __init__(self, ep: torch.export.ExportedProgram, seq_symbol):
        self.data = {**ep.state_dict, **ep.constants}
        self.specs = {s.arg.name: s for s in ep.graph_signature.input_specs}
        self.seq = seq_symbol
        self.cache: dict[tuple, object] = {}
        self.order = {m: i for i, m in enumerate(ep.graph.nodes)}
        self.writes = in_place_writes(ep.graph)
        self.reader: torch.fx.Node | None = None  # None: after the whole graph

    def value(self, n: torch.fx.Node, T: int):
        writes = self._writes_seen(n)
        key = (n, T, writes)
        if key not in self.cache:
            self.cache[key] = self._in_order(n, writes, T) if writes else self._compute(n, T)
        return self.cache[key]

    def _writes_seen(self, n: torch.fx.Node) -> tuple[torch.fx.Node, ...]:
        """The in-place writes before the reader into n's ancestors (or into theirs), in graph order."""
        if not self.writes:
            return ()
        until = self.order[self.reader] if self.reader is not None else len(self.order)
        need, seen = _ancestors([n]), []
        while more := [w for w, base in self.writes if base in need and w not in seen and self.order[w] < until]:
            seen += more
            need |= _ancestors(more)
        return tuple(sorted(seen, key=self.order.get))

    def _in_order(self, n: torch.fx.Node, writes: tuple, T: int):
        env: dict = {}
        written = {base for _, base in self.writes}
        for m in sorted(_ancestors([n, *writes]), key=self.order.get):
            if m.op == "placeholder":
                v = self._compute(m, T)
                env[m] = v.clone() if m in written else v  # a buffer written in forward: not the model's own
            else:
                env[m] = self._compute(m, T, env.__getitem__)
        return env[n]

    def _compute(self, n: torch.fx.Node, T: int, get=None):
        if n.op == "placeholder":
            if self.specs[n.name].target is None:
                raise MonologueError(f"fx node %{n.name}: a value taken for a constant of the positions depends on "
                                     "the token ids (written into it in place)")
            return self.data[self.specs[n.name].target]
        val = n.meta.get("val")
        if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            expr = val.node.expr
            free = expr.free_symbols - {self.seq}
            if free:
                raise MonologueError(f"fx node %{n.name}: a size depends on {sorted(map(str, free))}, not only on "
                                     "the sequence length")
            v = expr.subs(self.seq, T)
            return {torch.SymInt: int, torch.SymFloat: float, torch.SymBool: bool}[type(val)](v)
        get = get or (lambda a: self.value(a, T))
        args = tree_map(lambda a: get(a) if isinstance(a, torch.fx.Node) else a, n.args)
        kwargs = tree_map(lambda a: get(a) if isinstance(a, torch.fx.Node) else a, n.kwargs)
        with torch.no_grad():
            return n.target(*args, **kwargs)


def _ancestors(nodes) -> set[torch.fx.Node]:
    """The nodes `nodes` are computed from; a size (sym_size of the ids) is computed from T alone."""
    seen, stack = set(nodes), list(nodes)
    while stack:
        n = stack.pop()
        if isinstance(n.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool)):
            continue
        for a in n.all_input_nodes:
            if a not in seen:
                seen.add(a)
                stack.append(a)
    return seen


def _written(n: torch.fx.Node) -> torch.fx.Node | None:
    """The argument an in-place aten op writes (copy_'s `self`), None for any other node."""
    schema = getattr(n.target, "_schema", None)
    if n.op != "call_function" or schema is None:
        return None
    for i, a in enumerate(schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            arg = n.args[i] if i < len(n.args) else n.kwargs.get(a.name)
            return arg if isinstance(arg, torch.fx.Node) else None
    return None


def viewed_tensor(n: torch.fx.Node) -> torch.fx.Node | None:
    """The tensor a view op (slice, select, view, transpose, ...) shares storage with."""
    schema = getattr(n.target, "_schema", None)
    if (n.op == "call_function" and schema is not None and len(schema.returns) == 1 and schema.returns[0].alias_info
            is not None and not schema.returns[0].alias_info.is_write and n.args and isinstance(n.args[0], torch.fx.Node)):
        return n.args[0]
    return None


def in_place_writes(graph: torch.fx.Graph) -> list[tuple[torch.fx.Node, torch.fx.Node]]:
    """(in-place node, the tensor it writes, through however many views of it), in graph order."""
    out = []
    for n in graph.nodes:
        if (base := _written(n)) is not None:
            while (up := viewed_tensor(base)) is not None:
                base = up
            out.append((n, base))
    return out


def is_prefix_table(ev: Evaluator, n: torch.fx.Node, axis: int, tmax: int) -> bool:
    """Row t of the value at length T is row t of the value at tmax, for a few T."""
    full = ev.value(n, tmax)
    for t in sorted({1, 2, 3, min(7, tmax), max(1, tmax // 2), tmax - 1}):
        if t < 1 or t > tmax:
            continue
        part = ev.value(n, t)
        ref = full.narrow(axis, 0, t)
        wide = torch.complex128 if ref.is_complex() else torch.float64  # a complex table's both parts
        if part.shape != ref.shape or not torch.allclose(part.to(wide), ref.to(wide), rtol=1e-6, atol=1e-7):
            return False
    return True


# A value this low added to a score blocks its key (-inf, float32's lowest, a tutorial's -1e9): exp of
# it is 0 in f32 for the scores of any real model, and no ALiBi term (slope * distance) comes near it.
ADDED_BLOCK = -1e9


def _allowed(mask: torch.Tensor, additive: bool, bias: bool = False, fill: float = ADDED_BLOCK,
             product: bool = False) -> torch.Tensor | None:
    """The keys each query may see, or None when the values are neither blocked nor allowed (with
    `bias`, every value above the blocked ones is allowed: linear_bias checks them). A value at or
    below `fill` blocks; `product`: the scores are multiplied by the mask, 1 keeps and 0 zeroes."""
    if mask.dtype == torch.bool and not additive:
        return mask
    m = mask.float()
    if product:
        return m == 1 if bool(((m == 0) | (m == 1)).all()) else None
    blocked = m <= fill
    allowed = (m > fill) & torch.isfinite(m) if bias else m == 0
    if not bool((allowed | blocked).all()):
        return None
    return allowed


def causal_window(ev: Evaluator, n: torch.fx.Node, tmax: int, *, additive: bool, invert: bool = False,
                  bias: bool = False, fill: float = ADDED_BLOCK, product: bool = False, negate: bool = False) -> int:
    """The window (keys visible including the query's own; 0 = all) of the causal mask node `n`,
    proven by evaluating it at several lengths; a mask of any other form is an error.

    `additive`: the mask is added to the scores (0 / very negative); otherwise it is boolean, True
    where a key is visible, or blocked where `invert` (masked_fill's convention). `bias`: the
    visible keys' values are a bias (linear_bias), not 0 (Falcon's ALiBi inside its mask). `negate`:
    the mask is subtracted from the scores."""
    where = f"fx node %{n.name}"

    def allowed_at(t: int) -> torch.Tensor:
        m = ev.value(n, t)
        if not isinstance(m, torch.Tensor) or m.dim() < 2 or tuple(m.shape[-2:]) != (t, t):
            raise MonologueError(f"the attention mask at {where} is not a (T, T) mask of the sequence")
        if negate:
            m = -m
        a = _allowed(m, additive, bias, fill, product)
        if a is None:
            raise MonologueError(f"the attention mask at {where} has values other than 0 and -inf (a bias, not a "
                                 "causal mask)")
        if invert:
            a = ~a
        a = a.reshape(-1, t, t)
        if not bool((a == a[:1]).all()):
            raise MonologueError(f"the attention mask at {where} differs between heads or batch rows")
        return a[0]

    last = allowed_at(tmax)[-1]
    seen = int(last.sum())
    window = 0 if seen == tmax else seen
    for t in sorted({1, 2, 3, min(5, tmax), max(1, window - 1), window, window + 1, window + 3, tmax}):
        if t < 1 or t > tmax:
            continue
        q = torch.arange(t)[:, None]
        k = torch.arange(t)[None, :]
        want = k <= q
        if window:
            want &= k > q - window
        if not torch.equal(allowed_at(t), want):
            raise MonologueError(f"the attention mask at {where} is not causal" + (
                f" with a window of {window}" if window else "") + f" (checked at length {t}); only causal and "
                "sliding-window masks are understood")
    return window


def bias_kind(ev: Evaluator, n: torch.fx.Node, tmax: int) -> str | None:
    """What a term added to the scores holds beside blocked keys (at or below ADDED_BLOCK, as
    `_allowed` reads them), at the longest length: "bias" (finite values, some not 0), "masked bias"
    (those and blocked keys: Falcon's ALiBi in its mask), None (a mask of 0 and blocked, or no number)."""
    m = ev.value(n, tmax)
    if not (isinstance(m, torch.Tensor) and m.is_floating_point()):
        return None
    blocked = m <= ADDED_BLOCK
    finite = torch.isfinite(m) & ~blocked
    if not bool((finite | blocked).all()) or not bool(m[finite].any()):
        return None
    return "masked bias" if bool(blocked.any()) else "bias"


def linear_bias(ev: Evaluator, n: torch.fx.Node, tmax: int, heads: int) -> list[float]:
    """The per-head slopes m_h of an additive score term b that is, on every key a query can see,
    m_h * (key position) plus a constant of the query's row (ALiBi as Bloom and MPT write it: the
    softmax cancels the row constant, so attention adds m_h * (j - i)); proven by evaluating b at
    several lengths. Any other bias is an error naming the node."""
    where = f"fx node %{n.name}"

    def slopes_at(t: int) -> torch.Tensor:
        b = ev.value(n, t)
        try:
            b = b.double().expand(torch.broadcast_shapes(b.shape, (heads, t, t))).reshape(-1, t, t)
        except RuntimeError:
            b = None
        if b is None or b.shape[0] != heads:
            raise MonologueError(f"the attention bias at {where} is not a (heads, T, T) term of the scores")
        j = torch.arange(t, dtype=torch.float64)
        if t == 1:
            return torch.zeros(heads, dtype=torch.float64)
        # least squares along the last query row (it sees the most keys), then every row is checked
        # against it on the keys it sees; a row's first seen key anchors its constant
        seen = (b > ADDED_BLOCK) & (j[None, None, :] <= j[None, :, None])
        if not bool(seen[:, -1].sum(-1).ge(2).all()):
            return torch.zeros(heads, dtype=torch.float64)  # a window of one key: no slope to see
        b = b.masked_fill(~seen, 0.0)  # a blocked -inf would make NaN of the sums below
        last, jl = b[:, -1, :], seen[:, -1, :].double()
        mean_j = (j * jl).sum(-1, keepdim=True) / jl.sum(-1, keepdim=True)
        mean_b = (last * jl).sum(-1, keepdim=True) / jl.sum(-1, keepdim=True)
        m = ((j - mean_j) * (last - mean_b) * jl).sum(-1) / (((j - mean_j) ** 2) * jl).sum(-1)
        first = seen.double().argmax(-1, keepdim=True)
        rel = b - b.gather(-1, first) - m[:, None, None] * (j - first.double())
        err = rel.abs()[seen]
        scale = b.abs().max()
        if bool((err > 1e-6 * (1 + scale)).any()):
            raise MonologueError(f"the attention bias at {where} is not linear in the key position per head "
                                 f"(checked at length {t}); only ALiBi biases are understood")
        return m

    slopes = slopes_at(tmax)
    for t in sorted({2, 3, min(5, tmax), tmax - 1}):
        if 2 <= t < tmax and not torch.allclose(slopes_at(t), slopes, rtol=1e-5, atol=1e-9):
            raise MonologueError(f"the attention bias at {where} changes its slopes with the sequence length "
                                 f"(checked at length {t}); only ALiBi biases are understood")
    return [float(torch.tensor(float(m), dtype=torch.float32)) for m in slopes]
