"""Lowering: the ATen table's coverage of the GPT, and the sequence rules with their errors."""

from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import lowered, lowered_matches
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
        if self.how == "python_loop":  # litgpt's sliding-window mask, row by row
            mask = torch.full((T, T), float("-inf"))
            for i in range(T):
                mask[i, max(0, i - 3):i + 1] = 0.0
            return x + mask.sum(-1, keepdim=True)
        return x.flip(1)


LOOP_LINE = next(i for i, line in enumerate(Path(__file__).read_text().splitlines(), 1) if "for i in range(T):" in line)


def _lower(how):
    return lower(trace(Shift(how), 16))


def test_one_step_token_shift_becomes_carried_state():
    g = _lower("token_shift")
    assert [n.op for n in g.nodes if n.op == "token_shift"] == ["token_shift"]


@pytest.mark.parametrize("how,words", [
    ("two_step", "sequence-mixing the compiler does not understand"),  # x[:, :-2]: caught while tracing
    ("cumsum", "unsupported op aten.cumsum.default at fx node %cumsum"),
    ("python_loop", "turns the length into a Python number (int(T), range(T), a shape computed in Python) at "
                    f"test_lower.py:{LOOP_LINE} (for i in range(T):)"),
    ("flip", "unsupported op aten.flip.default at fx node %flip"),
])
def test_sequence_mixing_the_compiler_does_not_know_fails_by_name(how, words):
    with pytest.raises(MonologueError) as e:
        _lower(how)
    msg = str(e.value)
    assert words in msg and "\n" not in msg


def _matches(model: nn.Module):
    return lowered_matches(model, 16, 10)


class Guarded(nn.Module):
    """Shapes computed from the length in ways export's symbolic reasoning cannot prove constant
    over the traced range (as Llama 4's `T * min(32, 32 * T)` and `min(2048, T)` in other models),
    or that truly depend on it (chunks of 4, padded)."""

    def __init__(self, how):
        super().__init__()
        self.how, self.block_size = how, 16
        self.emb, self.head = nn.Embedding(10, 8), nn.Linear(8, 10)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.emb(idx)
        if self.how == "min_view":
            x = x.reshape(1, min(2048, T), 8)
        elif self.how == "min_product":
            x = x.reshape(1, T * min(4, 4 * T) // 4, 8)
        else:  # chunks
            x = nn.functional.pad(x, (0, 0, 0, (4 - T % 4) % 4)).view(1, -1, 4, 8).sum(2)
        return self.head(x)


@pytest.mark.parametrize("how", ["min_view", "min_product"])
def test_guards_export_cannot_prove_are_proven_by_evaluating_them_at_every_length(how):
    _matches(Guarded(how))


def test_a_guard_false_at_some_length_is_refused_naming_it_and_the_length():
    with pytest.raises(MonologueError, match=r"no single graph serves every length .*the guard .* fails at T = \d+$"):
        lower(trace(Guarded("chunks"), 16))


class Filled(nn.Module):
    """Sinusoidal positions written into the slices of a zeros tensor in forward, as tutorials do."""

    def __init__(self, read_first: bool = False):
        super().__init__()
        self.read_first, self.block_size = read_first, 16
        self.emb, self.head = nn.Embedding(10, 8), nn.Linear(8, 10)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.emb(idx)
        pos = torch.arange(T, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, 8, 2).float() * -0.5)
        pe = torch.zeros(T, 8)
        if self.read_first:  # all zeros here, the sines before the cosines' write
            x = x * (1 + pe.sum()) + pe[:, 1::2].sum(-1, keepdim=True)
        pe[:, 0::2] = torch.sin(pos * div)
        if self.read_first:
            x = x + pe.mean(-1, keepdim=True)
        pe[:, 1::2] = torch.cos(pos * div)
        return self.head(x + pe)


def test_a_position_table_filled_in_place_is_evaluated_with_its_writes():
    g = _matches(Filled())
    assert [n.op for n in g.nodes].count("positions") == 1


def test_a_value_read_between_in_place_writes_sees_the_writes_before_it_only():
    _matches(Filled(read_first=True))


class Padded(nn.Module):
    def __init__(self, pad: tuple = (0, 0, 1, -1)):
        super().__init__()
        self.pad, self.block_size = pad, 16
        self.emb, self.head = nn.Embedding(10, 8), nn.Linear(17, 10)

    def forward(self, idx):
        x = self.emb(idx)
        # the token before (a shift of zeros along T), beside x padded on its last axis
        return self.head(torch.cat([torch.nn.functional.pad(x, self.pad), torch.nn.functional.pad(x, (2, -1), value=0.5)], -1))


def test_a_pad_shifts_along_the_sequence_and_pads_or_cuts_other_axes():
    g = _matches(Padded())
    assert [n.op for n in g.nodes].count("token_shift") == 1


def test_a_pad_that_reads_later_positions_is_refused_by_name():
    with pytest.raises(MonologueError, match=r"a pad of \(-1, 1\) along the sequence axis .* at fx node %pad "):
        _matches(Padded((0, 0, -1, 1)))


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.head, self.block_size = nn.Embedding(10, 8), nn.Linear(8, 10), 16

    def forward(self, idx):
        x = self.emb(idx)
        return self.head(x / torch.linalg.vector_norm(x, ord=1, dim=-1, keepdim=True))


def test_a_norm_other_than_the_2_norm_is_refused_by_name():
    with pytest.raises(MonologueError, match=r"a vector norm other than the 2-norm over one axis \(ord=1"):
        _matches(Norms())


class CausalConv(nn.Module):
    """A causal depthwise convolution written the other way: K - 1 zeros padded in front, no padding."""

    def __init__(self, pad: int = 2):
        super().__init__()
        self.pad, self.block_size = pad, 16
        self.emb, self.head = nn.Embedding(10, 8), nn.Linear(8, 10)
        self.conv = nn.Conv1d(8, 8, 3, groups=8)

    def forward(self, idx):
        x = self.emb(idx).transpose(1, 2)
        y = self.conv(torch.nn.functional.pad(x, (self.pad, 0)))
        return self.head(y[..., -idx.shape[1]:].transpose(1, 2) if self.pad > 2 else y.transpose(1, 2))


def test_a_conv1d_after_k_minus_1_zeros_padded_in_front_is_a_causal_convolution():
    g = _matches(CausalConv())
    assert [n.op for n in g.nodes].count("token_shift") == 2


def test_more_zeros_in_front_than_the_kernel_needs_is_refused_by_name():
    with pytest.raises(MonologueError, match=r"a conv1d other than a causal depthwise one .* at fx node %conv1d "):
        _matches(CausalConv(pad=3))


class InPlace(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how, self.block_size = how, 16
        self.emb, self.head = nn.Embedding(10, 8), nn.Linear(8, 10)
        self.act = nn.ReLU(inplace=True)

    def forward(self, idx):
        x = self.emb(idx) * 1.0
        if self.how == "write_through_a_view":
            v = x[..., 4:]
            v += 1.0  # x changes too: PyTorch's head reads the sum
        else:
            x = self.act(x - 0.5).clamp_(max=1.0)
        return self.head(x)


def test_in_place_twins_of_covered_ops_lower_as_those_ops():
    _matches(InPlace("relu_clamp_"))


def test_a_write_through_a_view_that_the_base_is_read_after_is_refused_by_name():
    with pytest.raises(MonologueError, match=r"in-place add of a view of %mul, which %linear reads afterwards .* "
                                             r"at fx node %add_ \(test_lower.py:\d+ v \+= 1.0"):
        _matches(InPlace("write_through_a_view"))
