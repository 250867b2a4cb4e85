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
    """Runs constant fx nodes with torch for a concrete sequence length T (memoized per T)."""

    def __init__(self, ep: torch.export.ExportedProgram, seq_symbol):
        self.data = {**ep.state_dict, **ep.constants}
        self.specs = {s.arg.name: s for s in ep.graph_signature.input_specs}
        self.seq = seq_symbol
        self.cache: dict[tuple, object] = {}

    def value(self, n: torch.fx.Node, T: int):
        key = (n, T)
        if key not in self.cache:
            self.cache[key] = self._compute(n, T)
        return self.cache[key]

    def _compute(self, n: torch.fx.Node, T: int):
        if n.op == "placeholder":
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
        args = tree_map(lambda a: self.value(a, T) if isinstance(a, torch.fx.Node) else a, n.args)
        kwargs = tree_map(lambda a: self.value(a, T) if isinstance(a, torch.fx.Node) else a, n.kwargs)
        with torch.no_grad():
            return n.target(*args, **kwargs)


def is_prefix_table(ev: Evaluator, n: torch.fx.Node, axis: int, tmax: int) -> bool:
    """Row t of the value at length T is row t of the value at tmax, for a few T."""
    full = ev.value(n, tmax)
    for t in sorted({1, 2, 3, min(7, tmax), max(1, tmax // 2), tmax - 1}):
        if t < 1 or t > tmax:
            continue
        part = ev.value(n, t)
        ref = full.narrow(axis, 0, t)
        if part.shape != ref.shape or not torch.allclose(part.double(), ref.double(), rtol=1e-6, atol=1e-7):
            return False
    return True


def _allowed(mask: torch.Tensor, additive: bool) -> torch.Tensor | None:
    """The keys each query may see, or None when the values are neither blocked nor allowed."""
    if mask.dtype == torch.bool and not additive:
        return mask
    m = mask.float()
    zero, blocked = m == 0, m <= -1e30
    if not bool((zero | blocked).all()):
        return None
    return zero


def causal_window(ev: Evaluator, n: torch.fx.Node, tmax: int, *, additive: bool, invert: bool = False) -> int:
    """The window (keys visible including the query's own; 0 = all) of the causal mask node `n`,
    proven by evaluating it at several lengths; a mask of any other form is an error.

    `additive`: the mask is added to the scores (0 / very negative); otherwise it is boolean, True
    where a key is visible, or blocked where `invert` (masked_fill's convention)."""
    where = f"fx node %{n.name}"

    def allowed_at(t: int) -> torch.Tensor:
        m = ev.value(n, t)
        if not isinstance(m, torch.Tensor) or m.dim() < 2 or tuple(m.shape[-2:]) != (t, t):
            raise MonologueError(f"the attention mask at {where} is not a (T, T) mask of the sequence")
        a = _allowed(m, additive)
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
