"""Passes: what fusion produces for the GPT, that it keeps the numbers, the memory plan, determinism."""

import json
from collections import Counter

import numpy as np

from conftest import lowered
from monologue_compile.interpreter import Session
from monologue_compile.ir import OPS
from monologue_compile.passes import kernels_per_layer, run_pipeline
from monologue_compile.passes.canonicalize import canonicalize
from monologue_compile.passes.layout import layout


def test_attention_transposes_fold_into_its_layout(tiny_export):
    g = layout(canonicalize(lowered(*tiny_export)))
    assert {n.attrs["layout"] for n in g.nodes if n.op == "attention"} == {"BTHD"}
    assert not [n for n in g.nodes if n.op == "permute"]


def test_fused_gpt_is_seven_kernels_per_layer(tiny_export):
    model, _ = tiny_export
    g, records = run_pipeline(lowered(*tiny_export), "none")
    c = model.config
    per_layer = kernels_per_layer(g)
    assert all(per_layer[f"layer {i}"] == 7 for i in range(c.n_layer))
    mm = [n for n in g.nodes if n.op == "matmul"]
    qkv = [n for n in mm if "c_q+c_k+c_v" in n.inputs[1]]
    assert len(qkv) == c.n_layer
    assert g.weights[qkv[0].inputs[1]].shape == (c.n_embd + 2 * c.n_kv_head * c.head_dim, c.n_embd)
    assert all(n.attrs["prologue"] for n in qkv)  # the pre-attention norm runs inside the matmul
    fc = [n for n in mm if "mlp.c_fc" in n.inputs[1]]
    assert all([s["fn"] for s in n.attrs["epilogue"]] == ["relu", "square"] and n.attrs["prologue"] for n in fc)
    residual = [n for n in mm if n.attrs["epilogue"] == [{"fn": "add", "operand": 0}]]
    assert len(residual) == 2 * c.n_layer  # attn c_proj and mlp c_proj add into the stream
    head = g.node(g.outputs[0])
    assert head.op == "matmul" and [s["fn"] for s in head.attrs["epilogue"]] == ["div", "tanh", "mul"]
    ropes = [n for n in g.nodes if n.op == "rope"]
    assert len(ropes) == 2 * c.n_layer and all(r.attrs["epilogue"][0]["fn"] == "rms_norm" for r in ropes)
    fuse = next(r for r in records if r.name == "fuse")
    assert fuse.kernels_after < fuse.kernels_before / 3


def test_fusion_keeps_the_numbers(tiny_export):
    ids = [5, 9, 250, 3, 3, 77, 1, 0, 200]
    plain = Session(lowered(*tiny_export)).forward(ids)
    fused, _ = run_pipeline(lowered(*tiny_export), "none")
    out = Session(fused).forward(ids)
    assert np.abs(out - plain).max() <= 1e-5 * np.abs(plain).max()


def test_memory_plan_reuses_buffers_without_overlap(tiny_export):
    g, _ = run_pipeline(lowered(*tiny_export), "int8")
    mp = g.meta["memory_plan"]
    assert sum(b["per_token"] for b in mp["f32_buffers"]) < mp["naive_per_token"]
    # no two values live at the same time may share a buffer
    kernels = [n for n in g.nodes if OPS[n.op].kernel]
    pos = {n.name: i for i, n in enumerate(g.nodes)}
    root = {}
    for n in g.nodes:
        root[n.name] = n.name if OPS[n.op].kernel else root.get(n.inputs[0], n.inputs[0])
    last = {}
    for n in g.nodes:
        for i in n.inputs:
            if i in root:
                last[root[i]] = pos[n.name]
    for o in g.outputs:
        last[root[o]] = len(g.nodes)
    for a in kernels:
        for b in kernels:
            if a is not b and mp["assign"][a.name] is not None and mp["assign"][a.name] == mp["assign"][b.name]:
                in_place = any(root.get(mp["in_place"].get(y.name)) == x.name and last[x.name] == pos[y.name]
                               for x, y in ((a, b), (b, a)))
                assert in_place or last.get(a.name, pos[a.name]) < pos[b.name] or last.get(b.name, pos[b.name]) < pos[a.name]
    # the residual adds run in place, rope's k goes straight into each layer's KV cache
    assert len(mp["in_place"]) >= 2 * tiny_export[0].config.n_layer
    assert sorted(v["part"] for v in mp["kv_write"].values()) == ["k"] * tiny_export[0].config.n_layer
    assert len(mp["kv_cache"]) == tiny_export[0].config.n_layer
    assert g.meta["schedule"]["kernels"] == [n.name for n in kernels]


def test_pipeline_is_deterministic(tiny_export):
    a, _ = run_pipeline(lowered(*tiny_export), "int8-g64")
    b, _ = run_pipeline(lowered(*tiny_export), "int8-g64")
    assert json.dumps(a.to_json(), sort_keys=True) == json.dumps(b.to_json(), sort_keys=True)
    assert Counter(n.op for n in a.nodes) == Counter(n.op for n in b.nodes)
