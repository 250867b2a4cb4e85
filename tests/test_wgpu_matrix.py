"""Acceptance for the WGSL backend on wgpu-py: every GPTConfig knob compiled to dist/ (plan.json +
kernels + shards, read back as the browser reads them), WGSL logits within tolerance of R_q and 64
greedy tokens (GPU argmax) identical to R_q's, prefill of a prompt longer than one chunk then decode;
every kernel file of every compiled plan compiles under naga and under Tint."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_model, write_checkpoint
from wgsl_harness import device_or_skip

from monologue_compile.driver import compile_to
from monologue_compile.parity import TOLERANCES, _torch_logits, metrics

# (config overrides, quantization): the compiler's parity matrix (tests/test_parity_matrix.py) with a
# longer sequence_len, so a 72-token prompt (two prefill chunks of 64) plus 64 greedy steps fit.
MATRIX = [
    (dict(), "int8"),  # nanochat defaults: relu2, softcap 15, qk_norm, untied, GQA 4:2
    (dict(tie_embeddings=True, n_kv_head=1, activation="gelu", softcap=0.0), "int8"),  # tied, MQA, gelu, no cap
    (dict(activation="silu", qk_norm=False, rope_theta=100000.0, n_kv_head=4, mlp_ratio=2.5), "int8"),  # MHA, K=80
    (dict(n_embd=64, n_head=2, n_kv_head=1, n_layer=3), "int8-g64"),
    # a tied table quantized the matmul way, in groups of 128 over C = 64: rows stored 128 wide
    (dict(n_embd=64, n_head=4, n_kv_head=2, tie_embeddings=True), "int8-g128"),
    (dict(n_embd=64, n_head=2, n_kv_head=1, tie_embeddings=True), "int4-g32-all"),  # the tied table at 4 bits
    (dict(tie_embeddings=True, n_kv_head=1, mlp_ratio=2.5), "int4-g32"),  # int4 matmuls, K=160, int8 tied table
]
IDS = [f"{q}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for o, q in MATRIX]
SEQ = 160
PROMPT = 72


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{index: (dist, model)} compiled once per module, on first use."""
    cache = {}

    def get(i):
        if i not in cache:
            overrides, quant = MATRIX[i]
            model = tiny_model(seed=len(overrides), sequence_len=SEQ, **overrides)
            d = tmp_path_factory.mktemp(f"wgpu{i}")
            compile_to(write_checkpoint(d / "checkpoint.pt", model), d / "dist", quant=quant)
            cache[i] = (d / "dist", model)
        return cache[i]

    return get


def _rq(dist: Path):
    from monologue_compile.artifact import load_model
    from monologue_compile.frontend.load import build_module
    from monologue_compile.parity import rq_state_dict

    g, _, _ = load_model(dist)
    return build_module(g.meta["arch"], g.meta["config"], rq_state_dict(g))


@pytest.mark.parametrize("profile", [None, "cpu"], ids=["default", "cpu_profile"])
@pytest.mark.parametrize("i", range(len(MATRIX)), ids=IDS)
def test_wgsl_matches_rq(compiled, i, profile):
    """Both the default dispatch lists (GPUs) and the `cpu` profile's (barrier-free kernels)."""
    device_or_skip()
    from monologue_compile.backends.wgpu_executor import WgpuSession

    dist, model = compiled(i)
    rq = _rq(dist)
    s = WgpuSession.from_dist(dist, profile=profile)
    assert profile is None or s.lists["decode"] != s.plan["dispatch"]["decode"]
    assert s.chunk < PROMPT
    prompt = np.random.default_rng(i).integers(0, model.config.vocab_size, PROMPT).tolist()

    # prefill (two chunks), then 64 greedy steps that each read back the GPU argmax's id (and, for
    # the check, the logits row the same decode step wrote)
    rows = [s.forward(prompt)]
    ours = [int(np.argmax(rows[0][-1]))]
    while len(ours) < TOLERANCES["greedy_steps"]:
        ours.append(s.decode_greedy(ours[-1]))
        rows.append(s.logits(1))
        assert ours[-1] == int(np.argmax(rows[-1][0]))
    assert ours == rq.generate(prompt, TOLERANCES["greedy_steps"], temperature=0.0)
    m = metrics(np.concatenate(rows), _torch_logits(rq, prompt + ours[:-1]))
    assert m["rel"] <= TOLERANCES["logits_rel_vs_rq"] and m["cosine"] >= TOLERANCES["logits_cosine_vs_rq"], m
    assert s.submits == 2 + TOLERANCES["greedy_steps"] - 1  # one submit per step


@pytest.mark.parametrize("i", [0, len(MATRIX) - 1], ids=[IDS[0], IDS[-1]])
def test_chat_session_from_a_loaded_graph_equals_the_dists(compiled, i):
    """`monologue chat --backend wgpu` builds its plan in memory from the loaded graph
    (graph_session); its buffers must hold the bytes the dist's shards do: int4 packed two to a
    byte (an int4 model read its unpacked values as packed bytes before)."""
    device_or_skip()
    from monologue_compile.artifact import load_model
    from monologue_compile.backends.wgpu_executor import WgpuSession, graph_session

    dist, model = compiled(i)
    prompt = np.random.default_rng(i).integers(0, model.config.vocab_size, 12).tolist()
    want = WgpuSession.from_dist(dist).forward(prompt)
    np.testing.assert_array_equal(graph_session(load_model(dist)[0]).forward(prompt), want)


def test_top_k_readback_is_the_logits_top_k(compiled):
    device_or_skip()
    from monologue_compile.backends.wgpu_executor import WgpuSession

    dist, _ = compiled(0)
    s = WgpuSession.from_dist(dist)
    s.forward([1, 2, 3])
    vals, ids = s.decode_topk(4)
    s.reset()
    s.forward([1, 2, 3])
    logits = s.forward([4])[0]
    assert len(vals) == s.plan["io"]["topk"]["k"] == 64
    np.testing.assert_array_equal(vals, logits[ids])
    assert np.all(np.diff(vals) <= 0) and vals[-1] >= np.sort(logits)[-64]


def _kernel_views(dist: Path):
    plan = json.loads((dist / "model" / "plan.json").read_text())
    kinds = {"read-only-storage": "read", "storage": "read_write", "uniform": "uniform"}
    for p in plan["pipelines"]:
        wgsl = (dist / "model" / p["kernel"]).read_text()
        binds = [types.SimpleNamespace(name=b["name"], kind=kinds[b["type"]]) for b in p["bindings"]]
        yield p, types.SimpleNamespace(name=p["name"], wgsl=wgsl, bindings=binds)


def test_every_plan_kernel_compiles_under_naga_and_tint(compiled):
    """naga: wgpu-py builds every pipeline of every matrix plan; Tint: headless Chromium does too."""
    import wgpu

    from wgsl_harness.browser import Browser

    dev = device_or_skip()
    browser, why = Browser.open()
    try:
        n = 0
        for i in range(len(MATRIX)):
            dist, _ = compiled(i)
            for p, k in _kernel_views(dist):
                assert k.wgsl.startswith("// ") and "covers: %" in k.wgsl.split("\n\n")[0], p["kernel"]
                mod = dev.create_shader_module(code=k.wgsl)
                entries = [{"binding": j, "visibility": wgpu.ShaderStage.COMPUTE, "buffer": {"type": b["type"]}}
                           for j, b in enumerate(p["bindings"])]
                layout = dev.create_pipeline_layout(bind_group_layouts=[dev.create_bind_group_layout(entries=entries)])
                dev.create_compute_pipeline(layout=layout, compute={"module": mod, "entry_point": p["entry_point"]})
                if browser is not None:
                    res = browser.compile(k, p["features"])
                    assert res.get("errors") == [], (p["kernel"], res)
                n += 1
        assert n >= 5 * 10
    finally:
        if browser is not None:
            browser.close()
    if browser is None:
        pytest.skip(f"naga checked; Tint unavailable: {why}")


DEMO = Path(__file__).resolve().parent.parent / "runs" / "demo" / "checkpoint.pt"


@pytest.mark.skipif(not DEMO.exists(), reason="runs/demo/checkpoint.pt not trained yet (monologue train --preset demo)")
def test_demo_model_matches_rq(tmp_path):
    device_or_skip()
    from monologue_compile.artifact import load_model
    from monologue_compile.backends.wgpu_executor import WgpuSession
    from monologue_compile.parity import held_out_sequences

    compile_to(DEMO, tmp_path / "dist")
    g, _, tok = load_model(tmp_path / "dist")
    rq = _rq(tmp_path / "dist")
    s = WgpuSession.from_dist(tmp_path / "dist")
    cfg = g.meta["config"]
    text = [t for seq in held_out_sequences(tok, cfg["vocab_size"], cfg["sequence_len"]) for t in seq]
    prompt = text[: s.chunk + 8]  # real text, longer than one prefill chunk
    steps = min(TOLERANCES["greedy_steps"], cfg["sequence_len"] - len(prompt))
    ours = [int(np.argmax(s.forward(prompt)[-1]))]
    while len(ours) < steps:
        ours.append(s.decode_greedy(ours[-1]))
    assert ours == rq.generate(prompt, steps, temperature=0.0)
    s.reset()
    rows = np.concatenate([s.forward(prompt)] + [s.forward([t]) for t in ours[:8]])
    m = metrics(rows, _torch_logits(rq, prompt + ours[:8]))
    assert m["rel"] <= TOLERANCES["logits_rel_vs_rq"] and m["cosine"] >= TOLERANCES["logits_cosine_vs_rq"], m
