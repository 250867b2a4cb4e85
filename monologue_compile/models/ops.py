"""Custom ATen ops a reference model can call so that torch.export keeps a sequence-mixing step whole.

`monologue::causal_attention(q, k, v, window)`: causal attention over (B, T, H, D) operands in which
each query sees at most `window` keys (itself included; 0 = all), with grouped KV heads. Written
as an explicit mask it would trace into arange/compare ops that no rule can tell apart from any
other position mixing; as one op it lowers straight to the IR's windowed `attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("monologue::causal_attention", mutates_args=())
def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    T = q.size(1)
    pos = torch.arange(T, device=q.device)
    mask = pos[None, :] <= pos[:, None]
    if window > 0:
        mask &= pos[None, :] > pos[:, None] - window
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                       enable_gqa=q.size(2) != k.size(2))
    return y.transpose(1, 2).contiguous()


@causal_attention.register_fake
def _(q, k, v, window):
    return torch.empty_like(q)
