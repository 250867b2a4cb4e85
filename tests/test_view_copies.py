"""Views that move data become one `copy` kernel (passes/views.py); views that move none stay free.

The kernels themselves are held to the interpreter on every backend by test_conformance.py (its
permute/slice/expand/concat cells); here: which views the pass copies, that chains compose into one
copy, that weights are folded instead, and that what the runtimes cannot run is refused by name.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from monologue_compile.backends.rust_crate import CodegenError, generate
from monologue_compile.backends.wgsl_plan import build_plan
from monologue_compile.errors import MonologueError
from monologue_compile.frontend.trace import trace
from monologue_compile.interpreter import Session
from monologue_compile.ir import Graph, Node, TensorType, Weight, merge_dims, verify
from monologue_compile.lower import lower
from monologue_compile.passes import run_pipeline
from monologue_compile.passes.plan import memory_plan, schedule
from monologue_compile.passes.views import _reshape_strides, materialize_views

V, S, C, H = 40, 16, 24, 4
D = C // H
R = 2  # rotary dims of each head


def compiled(model: nn.Module, quant: str = "none"):
    g = lower(trace(model.eval(), S))
    g.meta["config"] = {"sequence_len": S, "vocab_size": V}
    return run_pipeline(g, quant)[0]


class Views(nn.Module):
    """Every kind of view over (1, T, H, D) heads: q/k split of one projection (free slices), a partial
    rotary slice x[..., :R] (moves data), heads reordered with T kept on axis 1, a head broadcast,
    a slice then reshape then transpose (one copy), and a view of a weight that moves data."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(V, C)
        self.qk = nn.Linear(C, 2 * C)
        self.table = nn.Parameter(torch.randn(D, H))
        self.out = nn.Linear(C, V)

    def forward(self, idx):
        T = idx.shape[1]
        q, k = self.qk(self.emb(idx)).split(C, dim=-1)
        q = q.view(1, T, H, D)
        k = k.view(1, T, H, D)
        rot = torch.cat([torch.tanh(q[..., :R]), q[..., R:]], dim=-1)
        swapped = k.transpose(2, 3).reshape(1, T, C)
        first = q[:, :, :1].expand(1, T, H, D)
        pairs = k[..., 2:].reshape(1, T, H, 2, 2).transpose(3, 4).reshape(1, T, H, 4)
        mixed = torch.cat([rot.reshape(1, T, C) + swapped, (first + self.table.transpose(0, 1)).reshape(1, T, C)], dim=-1)
        return self.out(mixed[..., :C] * pairs.reshape(1, T, H * 4).mean(-1, keepdim=True))


def test_views_that_move_data_become_copies_and_chains_compose():
    model = Views()
    g = compiled(model)
    copies = [n for n in g.nodes if n.op == "copy"]
    # q[..., :R], the transpose, the broadcast, and the slice-reshape-transpose chain: one copy each;
    # q[..., R:] is read by the concat itself
    assert len(copies) == 4, g.dump()
    cat = next(n for n in g.nodes if n.op == "concat" and n.attrs.get("reads"))
    assert cat.attrs["reads"] == [None, {"shape": [1, "T", H, D - R], "strides": [D, 1], "offset": R}]
    assert not [n for n in g.nodes if n.op in ("permute", "expand")]
    # the copies read the projection itself (through the q/k split); mixed[..., :C] is one block per token: free
    assert {n.inputs[0] for n in copies} == {cat.inputs[1]} == {next(n.name for n in g.nodes if n.op == "matmul")}
    assert [n.attrs for n in g.nodes if n.op == "slice"] == [{"axis": 2, "start": 0, "end": C}]
    # a transposed weight is folded once, not copied per token
    assert any(k.endswith(".value") and w.role == "derived" for k, w in g.weights.items())
    x = np.random.default_rng(0).integers(0, V, 9)
    with torch.no_grad():
        want = model(torch.from_numpy(x)[None])[0].numpy()
    assert np.abs(Session(g).forward(x) - want).max() <= 1e-5 * np.abs(want).max()


def test_the_copies_lower_to_both_runtimes():
    g = compiled(Views(), "int8")
    code = generate(g)
    assert code.count("k::strided_copy(") == 4 + 4  # the copies, and each input of the two concats
    plan = build_plan(g).plan
    copies = [p for p in plan["pipelines"] if p["name"] == "strided_copy"]
    assert copies and all(p["kernel"].endswith("strided_copy.wgsl") for p in copies)


def _graph(nodes: list[Node], out: str) -> Graph:
    g = Graph({"ids": TensorType((1, "T"), "i32")},
              {"table": Weight((V, C), "f32", np.random.default_rng(0).normal(size=(V, C)).astype(np.float32))},
              nodes, [out], {"config": {"sequence_len": S, "vocab_size": C}})
    return schedule(memory_plan(materialize_views(verify(g))))


def test_a_cast_that_changes_the_dtype_is_refused_by_name():
    act = TensorType((1, "T", C))
    g = _graph([Node("x", "embedding", ["table", "ids"], {"epilogue": []}, act, "emb"),
                Node("as_int", "cast", ["x"], {"dtype": "i32"}, TensorType((1, "T", C), "i32"), "fx:to @ m.py:3 x.long()"),
                Node("back", "cast", ["as_int"], {"dtype": "f32"}, act, "fx:to_1 @ m.py:3 x.long().float()"),
                Node("y", "elementwise", ["back"], {"steps": [{"fn": "neg"}]}, act, "neg")], "y")
    with pytest.raises(CodegenError, match=r"%as_int: cast f32 -> i32 at fx:to @ m.py:3 x.long\(\): the runtimes hold "
                                           r"activations as f32"):
        generate(g)
    with pytest.raises(MonologueError, match=r"%as_int \(cast, fx:to @ m.py:3 x.long\(\)\): cast f32 -> i32 at"):
        build_plan(g)


def test_a_permute_moving_t_is_not_copied_and_wgsl_names_it():
    act = TensorType((1, "T", H, D))
    g = _graph([Node("x", "embedding", ["table", "ids"], {"epilogue": []}, TensorType((1, "T", C)), "emb"),
                Node("heads", "reshape", ["x"], {"shape": [1, "T", H, D]}, act, "view"),
                Node("bhtd", "permute", ["heads"], {"perm": [0, 2, 1, 3]}, TensorType((1, H, "T", D)), "fx:transpose @ m.py:9"),
                Node("back", "permute", ["bhtd"], {"perm": [0, 2, 1, 3]}, act, "fx:transpose_1 @ m.py:10"),
                Node("y", "reshape", ["back"], {"shape": [1, "T", C]}, TensorType((1, "T", C)), "view")], "y")
    assert [n.op for n in g.nodes].count("permute") == 2
    with pytest.raises(MonologueError, match=r"%bhtd \(permute, fx:transpose @ m.py:9\): permute \[0, 2, 1, 3\] .* moves data"):
        build_plan(g)


@pytest.mark.parametrize("dims, strides, new, want", [
    ((4, 4), [6, 1], (4, 2, 2), [6, 2, 1]),  # split a contiguous dim
    ((2, 6), [6, 1], (3, 4), [4, 1]),  # merge a contiguous run, then split it differently
    ((4, 3), [1, 4], (12,), None),  # a transposed pair is not one strided dim
    ((4, 4), [8, 1], (2, 8), None),  # rows of a slice are not contiguous with each other
    ((3, 1, 5), [5, 0, 1], (1, 15, 1), [0, 1, 0]),
])
def test_reshape_of_a_strided_block(dims, strides, new, want):
    assert _reshape_strides(dims, strides, new) == want


def test_merge_dims_walks_the_same_elements_with_fewer_dims():
    assert merge_dims([2, 1, 3, 4], [12, 0, 4, 1], [12, 99, 4, 1]) == ([24], [[1], [1]])
    assert merge_dims([4, 5], [5, 1], [1, 4]) == ([4, 5], [[5, 1], [1, 4]])
    assert merge_dims([1, 1], [3, 1]) == ([1], [[0]])
