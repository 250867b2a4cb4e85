"""The WGSL plan's dispatch fusions (backends/wgsl_fuse.py, the norm prologues of wgsl_plan.py): fewer
dispatches per token, the same values as the unfused plan, which stays complete and valid.

On a Llama-style Hugging Face model (tests/test_hf_models.py's tiny llama-untied: weighted RMSNorms,
merged q|k|v and gate|up, GQA), this project's GPT (QK-norm, relu2, merged q|k|v) and the newest
nanochat architecture (value embeddings, smear, backout, per-layer lambdas):
the decode dispatch counts, the fused plan against the unfused one through wgpu-py (both profiles:
prefill logits, decode logits, 8 greedy tokens, every value a dispatch writes), and the fusion pass
declining what it cannot merge.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from wgsl_harness import device_or_skip  # noqa: E402

from monologue_compile.backends.wgsl_fuse import fuse_dispatches  # noqa: E402
from monologue_compile.backends.wgsl_plan import _Pending, build_plan  # noqa: E402
from monologue_compile.driver import build  # noqa: E402
from monologue_compile.parity import TOLERANCES, metrics  # noqa: E402


@pytest.fixture(scope="module")
def llama():
    from test_hf_models import build_model

    from monologue_compile.frontend.module import from_module

    return build(from_module(build_model("llama-untied", "sdpa").model, None, 80), "int8").graph


@pytest.fixture(scope="module")
def qwen2():
    """Qwen2: Llama's layout with a bias on each of q, k and v."""
    from test_hf_models import build_model

    from monologue_compile.frontend.module import from_module

    return build(from_module(build_model("qwen2", "sdpa").model, None, 80), "int8").graph


@pytest.fixture(scope="module")
def actgpt():
    """Hand-written activations: elementwise chains whose operands are chains of their own (minimum of
    leaky_relu(x) and softplus(x), then relu6(4x) subtracted from it), which the plan computes inside
    the kernel that reads them one level deep only."""
    from test_hf_models import build_model

    from monologue_compile.frontend.module import from_module

    return build(from_module(build_model("actgpt", "-").model, None, 80), "int8").graph


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    from conftest import tiny_model, write_checkpoint

    d = tmp_path_factory.mktemp("gpt")
    return build(write_checkpoint(d / "gpt.pt", tiny_model(seed=3, n_kv_head=2))).graph


@pytest.fixture(scope="module")
def nanochat(tmp_path_factory):
    """The newest nanochat architecture (value embeddings, smear, backout, per-layer lambdas)."""
    from test_nanochat import LATER, SIZES, _random_later, write_nanochat_dir

    features, pattern = LATER["mar2026b-smear-backout"]
    d = tmp_path_factory.mktemp("nanochat")
    write_nanochat_dir(d, _random_later(features, pattern).state_dict(), {**SIZES, "window_pattern": pattern}, prefix="")
    return build(d).graph


def _counts(g, fuse: bool) -> tuple[int, int, int]:
    plan = build_plan(g, fuse=fuse).plan
    cpu = plan["profiles"]["cpu"]["dispatch"]
    return len(plan["dispatch"]["decode"]), len(cpu.get("decode", plan["dispatch"]["decode"])), len(plan["dispatch"]["prefill"])


def test_decode_dispatches_per_token_llama(llama):
    """Per layer: the q|k|v matvec (the input norm as its prologue), one rope dispatch for q, k and
    v's cache copy, attention (2; 1 on the cpu profile), o_proj, gate|up (the post-attention norm as
    its prologue), down_proj (silu(gate) * up as its prologue; prefill keeps that dispatch); then
    lm_head with the final norm. Unfused: two norms, the GLU and two more rope/kv_write dispatches."""
    layers = 2
    assert _counts(llama, fuse=True) == (1 + 7 * layers + 1, 1 + 6 * layers + 1, 1 + 7 * layers + 1)
    assert _counts(llama, fuse=False) == (1 + 12 * layers + 2, 1 + 11 * layers + 2, 1 + 11 * layers + 2)


def test_q_k_v_biases_join_the_merged_projection(qwen2):
    """The three biases are one concatenated bias in the merged q|k|v matmul's epilogue (R_q splits
    it back by name), so a Qwen2 layer runs the dispatches of a Llama layer: no add per part, and
    the rope parts read the biased rows in place (H200: 292 -> 172 dispatches a token on
    Qwen2.5-0.5B, decode 111 -> 134 tok/s, benchmarks/bench_wgsl_gpu.py)."""
    from monologue_compile.parity import rq_state_dict

    qkv = [n for n in qwen2.nodes if n.op == "matmul" and "q_proj+k_proj+v_proj" in n.inputs[1]]
    assert len(qkv) == 2
    for n in qkv:
        bias = n.inputs[2]
        assert bias.endswith("q_proj+k_proj+v_proj.bias") and n.attrs["epilogue"] == [{"fn": "add", "operand": 0}]
        assert [p for p, _ in qwen2.meta["merged_weights"][bias]] == [bias.replace("q_proj+k_proj+v_proj", p)
                                                                      for p in ("q_proj", "k_proj", "v_proj")]
    assert not [n.name for n in qwen2.nodes if n not in qkv and any(i.endswith(".bias") for i in n.inputs)]
    sd = rq_state_dict(qwen2)
    assert sd["model.model.layers.0.self_attn.k_proj.bias"].shape == (16,)
    assert _counts(qwen2, fuse=True) == (1 + 7 * 2 + 1, 1 + 6 * 2 + 1, 1 + 7 * 2 + 1)


def test_decode_dispatches_per_token_gpt(gpt):
    """Per layer: q|k|v, one rope dispatch (q, k into its cache, v's cache copy), attention (2 / 1),
    proj, fc, proj; unfused two more (k's rope and v's kv_write apart)."""
    layers = gpt.meta["config"]["n_layer"]
    assert _counts(gpt, fuse=True) == (2 + 7 * layers, 2 + 6 * layers, 2 + 6 * layers)
    assert _counts(gpt, fuse=False) == (2 + 9 * layers, 2 + 8 * layers, 2 + 8 * layers)


def test_decode_dispatches_per_token_nanochat(nanochat):
    """Besides the rope parts: the strided smear-gate and value-embedding-gate inputs read in place
    (no packing copies), the backout subtraction as lm_head's map prologue, and each `lambda_r * x`
    computed inside the `+ lambda_0 * x0` kernel after it."""
    assert _counts(nanochat, fuse=True) == (39, 36, 40)
    assert _counts(nanochat, fuse=False) == (50, 47, 47)


@pytest.mark.parametrize("which", ["llama", "gpt", "nanochat", "actgpt"])
@pytest.mark.parametrize("profile", [None, "cpu"])
def test_fused_plan_matches_the_unfused_plan_on_wgpu(which, profile, request):
    from monologue_compile.backends.wgpu_executor import WgpuSession

    device_or_skip()
    g = request.getfixturevalue(which)
    fused = WgpuSession.from_graph(g, profile=profile)
    plain = WgpuSession.from_graph(g, profile=profile, fuse=False)
    prompt = [int(t) for t in np.random.default_rng(5).integers(3, 90, 9)]
    for s in (fused, plain):
        s.reset()
    a, b = fused.forward(prompt), plain.forward(prompt)
    assert metrics(a, b)["rel"] <= TOLERANCES["decode_vs_prefill_rel"]
    got, want = [], []
    ta = tb = int(np.argmax(a[-1]))
    for _ in range(8):
        ta, tb = fused.decode_greedy(ta), plain.decode_greedy(tb)
        got.append(ta)
        want.append(tb)
        assert metrics(fused.logits(1), plain.logits(1))["rel"] <= TOLERANCES["decode_vs_prefill_rel"]
    assert got == want
    # every value the fused plan's dispatches write (the parts of a fused dispatch too), prefill and decode
    for ids in (prompt[:5], prompt[5:6]):
        pa, pb = fused.probe(ids), plain.probe(ids)
        # the values fused into a matmul's prologue (norms, the GLU) never reach a buffer
        assert set(pa) <= set(pb) and all(g.node(n).op in ("rms_norm", "elementwise") for n in set(pb) - set(pa))
        for name, v in pa.items():
            assert metrics(v, pb[name])["rel"] <= TOLERANCES["layer_rel_vs_rq"], name


def _rope(node, x, y, H=4, D=8, off=0, tables=("cos", "sin")):
    return _Pending("rope_qknorm", (1, H, D), dict(inplace=False, in_offset=off, in_row_stride=64, out_at_pos=False),
                    {"x": x, "cos": tables[0], "sin": tables[1], "y": y, "step": "step"}, node)


def _kv(node, src, cache, W=16, off=48):
    return _Pending("kv_write", (1, W), dict(src_offset=off, src_row_stride=64), {"src": src, "cache": cache, "step": "step"}, node)


def test_rope_parts_merge_q_k_and_v():
    lst = [_rope("q", "qkv", "qbuf"), _rope("k", "qkv", "kcache", H=2, off=32), _kv("att", "qkv", "vcache")]
    (m,) = fuse_dispatches(lst)
    assert m.family == "rope_parts" and m.nodes == ["q", "k", "att"]
    assert [p["heads"] for p in m.args[2]] == [4, 2, 2] and m.args[2][2]["rope"] is False
    assert {k: m.buffers[k] for k in ("x", "y0", "y1", "y2")} == {"x": "qkv", "y0": "qbuf", "y1": "kcache", "y2": "vcache"}


@pytest.mark.parametrize("lst", [
    [_rope("q", "qkv", "qbuf"), _rope("k", "qkv", "qbuf", H=2, off=32)],  # one output buffer for two parts
    [_rope("q", "qkv", "qbuf"), _rope("k", "qbuf", "kcache", H=2)],  # k reads what q writes
    [_rope("q", "qkv", "qbuf"), _rope("k", "qkv", "kcache", tables=("cos2", "sin2"))],  # other tables
    [_rope("q", "qkv", "qbuf"), _rope("k", "qkv", "kcache", D=16, H=1)],  # other head_dim
    [_kv("a", "qkv", "vcache"), _kv("b", "qkv", "vcache2")],  # no rotated part
])
def test_rope_parts_decline_what_one_dispatch_cannot_do(lst):
    assert fuse_dispatches(lst) == lst
