"""A model that returns logits for its last position only, made to return them for every position.

nanoGPT's forward, and code derived from it, saves work at inference with `lm_head(x[:, [-1], :])`.
The compiler needs every position's logits (prefill is checked position by position, and the graph
is the same one decode runs), so the selection is found and dropped:

- a candidate is an index, slice, select or narrow whose input has the traced length T on an axis
  and whose output keeps one position of it;
- it is a selection of the last position if, evaluated on real ids, its output equals its input's
  last position there;
- the graph without those selections must give, at its last position, the model's own output (the
  ops after a selection work position by position). Otherwise the model is refused by name.

The edited graph shares the model's parameters, so loading other weights into the model (R_q)
changes both.
"""

from __future__ import annotations

import torch

from ..errors import MonologueError
from .trace import source_line, trace

_SELECTIONS = {torch.ops.aten.index.Tensor, torch.ops.aten.slice.Tensor, torch.ops.aten.select.int,
               torch.ops.aten.narrow.default}


def every_position(wrapper, vocab: int) -> str | None:
    """Make `wrapper` (a CausalLMLogits) return logits for every position where its model returns
    them for the last one only; returns what was dropped ('fx node %index (model.py:115 ...)'), or
    None where the model already returns every position."""
    n = min(5, wrapper.sequence_len)
    ids = torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0))
    want = wrapper.logits(ids)
    if (want.dim() >= 3 and want.shape[1] == n) or n < 3:  # every position already (or too short to trace)
        return None
    gm = trace(wrapper, wrapper.sequence_len).module()
    dropped = _last_position_selections(gm, ids)
    if not dropped:
        raise MonologueError(f"the model returns logits of shape {tuple(want.shape)} for {n} tokens, not one row "
                             "per token, and no selection of the last position was found to drop")
    where = ", ".join(f"fx node %{node.name} ({source_line(node)})" for node in dropped)
    for node in dropped:
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    try:
        with torch.no_grad():
            got = gm(ids)
        ok = got.dim() >= 3 and got.shape[1] == n and torch.allclose(
            got[:, -1].reshape(want.shape), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    except RuntimeError:
        ok = False
    if not ok:
        raise MonologueError(f"the model returns logits for its last position only, and without the selection at "
                             f"{where} it does not give them for every position (what follows mixes positions)")
    object.__setattr__(wrapper, "every", gm)  # not a submodule: its parameters are the model's
    return where


def _last_position_selections(gm: torch.fx.GraphModule, ids: torch.Tensor) -> list[torch.fx.Node]:
    """Nodes that pick the last position of the traced length, proven on `ids`."""
    candidates = {node: axis for node in gm.graph.nodes if (axis := _picks_one_of_t(node)) is not None}
    if not candidates:
        return []
    seen: dict[torch.fx.Node, tuple] = {}

    class Record(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node in candidates:
                seen[node] = (self.env[node.args[0]], out)
            return out

    with torch.no_grad():
        Record(gm).run(ids)
    found = []
    for node, axis in candidates.items():
        x, out = seen.get(node, (None, None))
        if x is None:
            continue
        last = x.narrow(axis, x.shape[axis] - 1, 1)
        if node.target is torch.ops.aten.select.int:
            last = last.squeeze(axis)
        if out.shape == last.shape and torch.equal(out, last):
            found.append(node)
    return found


def _picks_one_of_t(node: torch.fx.Node) -> int | None:
    """The axis where `node` (a selection op) keeps one position of the traced length, else None."""
    if node.op != "call_function" or node.target not in _SELECTIONS or not node.args:
        return None
    x, out = node.args[0], node.meta.get("val")
    val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
    if not isinstance(val, torch.Tensor) or not isinstance(out, torch.Tensor):
        return None
    if node.target is torch.ops.aten.index.Tensor:
        axes = [a for a, i in enumerate(node.args[1]) if i is not None]
        if len(axes) != 1:
            return None
        axis = axes[0]
    else:
        axis = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(axis, int) or not -val.dim() <= axis < val.dim():
        return None
    axis %= val.dim()
    size = val.shape[axis]
    if not (isinstance(size, torch.SymInt) and size.node.expr.free_symbols):
        return None
    if node.target is torch.ops.aten.select.int:
        return axis if out.dim() == val.dim() - 1 else None
    return axis if out.dim() == val.dim() and out.shape[axis] == 1 else None
