"""The layout pass: every activation (1, T, ...), GQA repeats folded into attention, head transposes
sunk into attention's layout, and a permute that cannot be sunk refused by name in the backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monologue_compile.backends.rust_crate import CodegenError, generate
from monologue_compile.frontend.trace import trace
from monologue_compile.interpreter import Session
from monologue_compile.lower import lower
from monologue_compile.passes import run_pipeline

V, S, C, H, HKV = 50, 16, 16, 4, 2
D = C // H


def compiled(model: nn.Module, quant: str = "none"):
    g = lower(trace(model.eval(), S))
    g.meta["config"] = {"sequence_len": S, "vocab_size": V}
    return run_pipeline(g, quant)[0]


def logits_match(model, g):
    x = np.random.default_rng(0).integers(0, V, 11)
    with torch.no_grad():
        want = model(torch.from_numpy(x)[None])[0].numpy()
    got = Session(g).forward(x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


class HeadsFirst(nn.Module):
    """Attention the way Hugging Face writes it: heads transposed in front of T, an elementwise op
    with a (1, 1, T, D) position table, a norm over the head dim, repeat_kv, transposed back."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(V, C)
        self.q, self.k, self.v = nn.Linear(C, C), nn.Linear(C, HKV * D), nn.Linear(C, HKV * D)
        self.norm = nn.LayerNorm(D)
        self.pos = nn.Parameter(torch.randn(S, D))
        self.out = nn.Linear(C, V)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.emb(idx)
        table = self.pos[:T][None, None]  # (1, 1, T, D)
        q = self.norm(self.q(x).view(1, T, H, D).transpose(1, 2)) * table
        k = self.k(x).view(1, T, HKV, D).transpose(1, 2) + table
        v = self.v(x).view(1, T, HKV, D).transpose(1, 2)
        k = k[:, :, None].expand(1, HKV, H // HKV, T, D).reshape(1, H, T, D)
        v = v[:, :, None].expand(1, HKV, H // HKV, T, D).reshape(1, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(1, T, C))


def test_head_transposes_sink_into_attention_and_repeat_kv_becomes_gqa():
    model = HeadsFirst()
    g = compiled(model)
    att = [n for n in g.nodes if n.op == "attention"]
    assert [(n.attrs["layout"], n.attrs["n_kv_head"]) for n in att] == [("BTHD", HKV)]
    assert not [n for n in g.nodes if n.op in ("permute", "expand")]
    assert all(n.type.shape[:2] == (1, "T") for n in g.nodes if "T" in n.type.shape)
    logits_match(model, g)


class TiledKV(HeadsFirst):
    """KV heads repeated as a block, not head by head: query head h reads KV head h % hkv."""

    def __init__(self, how: str, heads: int = H):
        super().__init__()
        self.how, self.heads = how, heads
        self.k, self.v = nn.Linear(C, HKV * C // heads), nn.Linear(C, HKV * C // heads)

    def forward(self, idx):
        T, h, d = idx.shape[1], self.heads, C // self.heads
        x = self.emb(idx)
        q = self.q(x).view(1, T, h, d).transpose(1, 2)
        k = self.k(x).view(1, T, HKV, d).transpose(1, 2)
        v = self.v(x).view(1, T, HKV, d).transpose(1, 2)
        if self.how == "repeat":
            k, v = k.repeat(1, h // HKV, 1, 1), v.repeat(1, h // HKV, 1, 1)
        else:  # einops' repeat(k, 'b h n d -> b (r h) n d')
            k = k[:, None].expand(1, h // HKV, HKV, T, d).reshape(1, h, T, d)
            v = v[:, None].expand(1, h // HKV, HKV, T, d).reshape(1, h, T, d)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(1, T, C))


@pytest.mark.parametrize("how,heads", [("repeat", H), ("expand", H), ("expand", 8)])
def test_kv_heads_repeated_as_a_block_are_gqa_with_the_query_heads_regrouped(how, heads):
    model = TiledKV(how, heads)
    g = compiled(model)
    att = [n for n in g.nodes if n.op == "attention"]
    assert [(n.attrs["layout"], n.attrs["n_kv_head"]) for n in att] == [("BTHD", HKV)]
    assert not [n for n in g.nodes if n.op in ("permute", "expand")]
    logits_match(model, g)
    generate(g)  # the Rust runtime places every node


class FlatRows(nn.Module):
    """GPT-2's Conv1D: view(-1, C), addmm, view back; learned positions looked up as (T, C)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.emb, self.wpe = nn.Embedding(V, C), nn.Embedding(S, C)
        self.w, self.b = nn.Parameter(torch.randn(C, 3 * C) / 4), nn.Parameter(torch.randn(3 * C))
        self.out = nn.Linear(3 * C, V)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.emb(idx) + self.wpe(torch.arange(T))
        h = torch.addmm(self.b, x.view(-1, C), self.w).view(1, T, 3 * C)
        return self.out(torch.tanh(h))


def test_sequence_first_values_get_the_batch_axis():
    model = FlatRows()
    g = compiled(model)
    assert all(n.type.shape[:2] == (1, "T") for n in g.nodes if "T" in n.type.shape)
    assert not [n for n in g.nodes if n.op == "reshape"]  # (T, C) <-> (1, T, C) were free views
    logits_match(model, g)


class PairsAfterTranspose(nn.Module):
    """An interleaved-pairs view of the heads after the transpose (rotate_every_two's split of head_dim
    into (D / 2, 2)): a reshape of the axes the permute leaves in place, which it sinks through."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.emb, self.out = nn.Embedding(V, C), nn.Linear(C, V)
        self.pair = nn.Parameter(torch.tensor([0.5, -2.0]))

    def forward(self, idx):
        T = idx.shape[1]
        q = self.emb(idx).view(1, T, H, D).transpose(1, 2)
        pairs = q.reshape(1, H, T, D // 2, 2) * self.pair
        return self.out(pairs.reshape(1, H, T, D).transpose(1, 2).reshape(1, T, C))


class GroupedQueryAttention(nn.Module):
    """GQA whose KV heads reach the attention through `keys` (then repeat_interleave, where `keys` does
    not repeat them itself)."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.out = nn.Embedding(V, C), nn.Linear(C, V)
        self.q, self.k, self.v = nn.Linear(C, C), nn.Linear(C, HKV * D), nn.Linear(C, HKV * D)
        self.pos = nn.Parameter(torch.randn(S, D))

    def forward(self, idx):
        T = idx.shape[1]
        x = self.emb(idx)
        q, k, v = (p(x).view(1, T, -1, D).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, self.keys(k, T), v.repeat_interleave(H // HKV, dim=1), is_causal=True)
        return self.out(y.transpose(1, 2).reshape(1, T, C))


class PairsThenRepeatedHeads(GroupedQueryAttention):
    """An interleaved rotary in (B, H, T, D) (pairs split, rotated, merged back) then GQA by
    repeat_interleave: the pairs' merge and the repeat's unsqueeze fold into one reshape, which is
    taken apart again so that the repeat is the attention's KV grouping and the transpose sinks."""

    def keys(self, k, T):
        angle = torch.arange(T, dtype=torch.float32)[:, None] / 10 ** torch.arange(D // 2, dtype=torch.float32)
        a, b = k[..., ::2], k[..., 1::2]
        k = torch.stack([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()], -1).flatten(-2)
        return k.repeat_interleave(H // HKV, dim=1)


class RepeatedThenScaled(GroupedQueryAttention):
    """repeat_kv first, then per-element ops on the repeated keys (a scale, a position table added):
    they commute with the repeat, so the repeat is still the attention's KV grouping."""

    def keys(self, k, T):
        return torch.tanh(k.repeat_interleave(H // HKV, dim=1) * 0.7 + self.pos[:T])


@pytest.mark.parametrize("model", [PairsThenRepeatedHeads(3), RepeatedThenScaled(4)], ids=lambda m: type(m).__name__)
def test_a_kv_repeat_behind_a_rotary_or_per_element_ops_is_still_gqa(model):
    """Both were refused by native, wasm and WGSL: "cannot move it past %repeat_interleave (reshape)"."""
    logits_match(model, compiled(model))
    g = compiled(model, "int8")
    assert [n.attrs["n_kv_head"] for n in g.nodes if n.op == "attention"] == [HKV]
    assert not [n for n in g.nodes if n.op == "permute"]
    generate(g)


class HeadGroupsAfterTranspose(nn.Module):
    """The heads split into two groups after the transpose: a reshape of an axis the permute moves,
    which no permute passes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.emb, self.out = nn.Embedding(V, C), nn.Linear(C, V)
        self.group = nn.Parameter(torch.tensor([0.5, -2.0]).view(1, 2, 1, 1, 1))

    def forward(self, idx):
        T = idx.shape[1]
        q = self.emb(idx).view(1, T, H, D).transpose(1, 2)
        groups = q.reshape(1, 2, H // 2, T, D) * self.group
        return self.out(groups.reshape(1, H, T, D).transpose(1, 2).reshape(1, T, C))


def test_a_permute_sinks_through_a_reshape_of_the_axes_it_keeps():
    model = PairsAfterTranspose()
    g = compiled(model, "int8")
    assert not [n for n in g.nodes if n.op == "permute"]  # met its inverse on the way down
    logits_match(model, compiled(model))
    generate(g)  # the Rust backend takes it (it refused the permute before)


def test_a_permute_that_cannot_sink_is_refused_by_name():
    model = HeadGroupsAfterTranspose()
    logits_match(model, compiled(model))  # the interpreter runs any layout
    g = compiled(model, "int8")
    with pytest.raises(CodegenError, match=r"%\w+: permute \[0, 2, 1, 3\] .* moves data \(T leaves axis 1; the "
                                           r"layout pass cannot move it past %\w+ \(reshape\)\) at fx:"):
        generate(g)
