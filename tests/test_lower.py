"""Lowering: the ATen table's coverage of the GPT, and the sequence rules with their errors."""

from collections import Counter

import pytest
import torch
import torch.nn as nn

from conftest import lowered
from monologue_compile.errors import MonologueError
from monologue_compile.frontend.trace import trace
from monologue_compile.lower import CONVERTERS, lower


def test_gpt_lowers_to_known_ops(tiny_export):
    model, ep = tiny_export
    targets = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    assert targets <= set(CONVERTERS)
    g = lowered(model, ep)
    ops = Counter(n.op for n in g.nodes)
    L = model.config.n_layer
    assert ops["attention"] == L and ops["linear"] == 6 * L + 1 and ops["positions"] == 2
    assert ops["embedding"] == 1 and ops["rms_norm"] == 2 + 4 * L  # after wte and before lm_head; per block attn, mlp, q, k
    # position tables are the only weights indexed by position
    assert {g.weights[n.inputs[0]].role for n in g.nodes if n.op == "positions"} == {"table"}
    assert all(n.source.startswith("fx:") for n in g.nodes)


class Shift(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.how = how

    def forward(self, idx):
        x = self.emb(idx)
        B, T, C = x.shape
        if self.how == "token_shift":
            return x + torch.cat([x.new_zeros(B, 1, C), x[:, :-1]], dim=1)
        if self.how == "two_step":
            return x + torch.cat([x.new_zeros(B, 2, C), x[:, :-2]], dim=1)
        if self.how == "cumsum":
            return x.cumsum(1)
        return x.flip(1)


def _lower(how):
    return lower(trace(Shift(how), 16))


def test_one_step_token_shift_becomes_carried_state():
    g = _lower("token_shift")
    assert [n.op for n in g.nodes if n.op == "token_shift"] == ["token_shift"]


@pytest.mark.parametrize("how,words", [
    ("two_step", "sequence-mixing the compiler does not understand"),  # x[:, :-2]: caught while tracing
    ("cumsum", "unsupported op aten.cumsum.default at fx node %cumsum"),
    ("flip", "unsupported op aten.flip.default at fx node %flip"),
])
def test_sequence_mixing_the_compiler_does_not_know_fails_by_name(how, words):
    with pytest.raises(MonologueError) as e:
        _lower(how)
    msg = str(e.value)
    assert words in msg and "\n" not in msg
