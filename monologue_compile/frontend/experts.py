"""Mixture-of-experts layers, traced as a dense sum over every expert.

transformers' experts modules (the classes under `@use_experts_implementation`: Mixtral, Qwen2/3-MoE,
OLMoE, GraniteMoE, ~60 families) run each token through the k experts its router picked, by sorting,
grouping and gathering tokens: index arithmetic the length-generic graph cannot hold (`nonzero`,
data-dependent loops, `grouped_mm`). The same sum, written densely, traces into ops the compiler
has: every expert on every token, each output times the token's routing weight for it, which is 0
unless the router picked it:

    out = sum_e  (sum_j w[:, j] * (idx[:, j] == e)) * expert_e(x)

(the routing weights of all experts are one scatter of w at idx: topk's indices are distinct).

The router itself (softmax, `topk`, renormalization) is the model's own code, traced as written.
Evaluated as written, that is num_experts / k times the expert work a token needs; passes/gate.py
makes each expert's matmuls skip the rows whose routing weight is 0, which leaves the numbers as they are.
The implementation is chosen through transformers' own experts interface, for the trace only.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

DENSE = "monologue_dense"


def _linear(x, weight, bias, transposed: bool):
    y = x @ weight if transposed else F.linear(x, weight)
    return y if bias is None else y + bias


def dense_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> torch.Tensor:
    """transformers' `batched_mm_experts_forward`, summed over all experts instead of gathered."""
    if top_k_weights.shape != top_k_index.shape:  # the interface's contract; a family that breaks it fails by name
        raise ValueError(f"{type(self).__name__} got routing weights {tuple(top_k_weights.shape)} for indices "
                         f"{tuple(top_k_index.shape)}: no dense form")
    # each token's routing weight of every expert, 0 where not picked: topk's indices are distinct, so
    # scattering the weights is the sum over j; expert e's column is then a view, not a computation
    weights = torch.zeros(*top_k_index.shape[:-1], self.down_proj.shape[0], dtype=top_k_weights.dtype,
                          device=top_k_weights.device).scatter(-1, top_k_index, top_k_weights)
    out = None
    up = self.gate_up_proj if self.has_gate else self.up_proj
    up_bias = (self.gate_up_proj_bias if self.has_gate else self.up_proj_bias) if self.has_bias else None
    for e in range(self.down_proj.shape[0]):
        weight = weights[..., e:e + 1]  # (tokens, 1)
        y = _linear(hidden_states, up[e], None if up_bias is None else up_bias[e], self.is_transposed)
        y = self._apply_gate(y) if self.has_gate else self.act_fn(y)
        y = _linear(y, self.down_proj[e], self.down_proj_bias[e] if self.has_bias else None, self.is_transposed)
        if self.has_post_expert_norm:
            y = self.post_expert_norm(y)
        out = y * weight if out is None else out + y * weight
    return out.to(hidden_states.dtype)


@contextlib.contextmanager
def dense_experts(module: torch.nn.Module):
    """Within: every transformers experts module in `module` evaluates densely."""
    configs = {id(m.config): m.config for m in module.modules()
               if hasattr(m, "is_transposed") and hasattr(getattr(m, "config", None), "_experts_implementation")}
    if not configs:
        yield
        return
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(DENSE, dense_experts_forward)
    before = {k: c._experts_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._experts_implementation = DENSE
        yield
    finally:
        for k, c in configs.items():
            c._experts_implementation = before[k]
