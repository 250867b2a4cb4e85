"""Fold a norm's weight into the matmuls that read it: `linear(norm(x) * w, W) = linear(norm(x), W diag(w))`.

The norm becomes weightless, which is what the fuser turns into a matmul prologue, and one
multiply per element is gone. Exact only when every user of the norm is a `linear` reading it as
its input, each of those weights belongs to that linear alone (a tied lm_head would change the
embedding too), and the norm weight is a parameter nothing else reads. A norm with a bias is left
alone: `(n w + b) W^T` needs a bias on the matmul, which `linear` does not have. A derived weight
(a `(1 + w)` folded at compile time) is left alone too, because R_q could not express the folded
model with the original parameters (see below).

Only for weights kept in f32 (`--quant none`): quantizing W diag(w) instead of W rounds every row
to the step of its largest scaled column, and on a Llama whose norm weights spread over [0.25, 2.5]
that made int8 logits measurably further from fp32 (benchmarks/bench_fold_norm.py: KL 1.6x, top-1
agreement 0.98x), so under int8/int4 the weight stays in the norm.

R_q (parity.rq_state_dict) is the model with the compiled graph's weights: the folded linears'
weights as compiled, and each folded norm weight set to ones (g.meta["folded_norm_weights"]).
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Weight


def _norm_weight(n) -> str | None:
    """The weight input of norm n when it has one and no bias."""
    if n.op == "rms_norm":
        return n.inputs[1] if len(n.inputs) == 2 else None
    if n.op == "layer_norm" and n.attrs.get("weight") and not n.attrs.get("bias"):
        return n.inputs[1]
    return None


def fold_norm_weights(g: Graph, quant: str) -> Graph:
    if quant != "none":
        return g
    users = g.users()
    for n in g.nodes:
        w_name = _norm_weight(n)
        if w_name is None or n.name in g.outputs:
            continue
        w = g.weights.get(w_name)
        if w is None or w.dtype != "f32" or w.role != "param" or [u.name for u in users[w_name]] != [n.name]:
            continue
        us = users.get(n.name, [])
        if not us or not all(u.op == "linear" and u.inputs[0] == n.name and _own_f32_param(g, users, u) for u in us):
            continue
        scale = np.asarray(w.data, dtype=np.float32).reshape(-1)
        for u in us:
            lw = g.weights[u.inputs[1]]
            folded = np.ascontiguousarray(np.asarray(lw.data, dtype=np.float32) * scale[None, :])
            g.weights[u.inputs[1]] = Weight(lw.shape, "f32", folded, None, lw.role)
        n.inputs = [n.inputs[0]]
        if n.op == "layer_norm":
            n.attrs = {**n.attrs, "weight": False}
        g.meta.setdefault("folded_norm_weights", {})[w_name] = list(w.shape)
        del g.weights[w_name]
    return g


def _own_f32_param(g: Graph, users: dict, linear) -> bool:
    name = linear.inputs[1]
    lw = g.weights.get(name)
    return (lw is not None and lw.dtype == "f32" and lw.role == "param" and len(lw.shape) == 2
            and [u.name for u in users[name]] == [linear.name])
