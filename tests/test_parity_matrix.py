"""Every GPTConfig knob through the whole pipeline: interpreter vs R_q logits, 64 greedy tokens, cache == recompute."""

import pytest

from conftest import tiny_model
from monologue_compile.frontend.trace import trace
from monologue_compile.lower import lower
from monologue_compile.parity import TOLERANCES, run_parity
from monologue_compile.passes import run_pipeline

MATRIX = [
    # (config overrides, quantization)
    (dict(), "int8"),  # nanochat defaults: relu2, softcap 15, qk_norm, untied, GQA 4:2
    (dict(tie_embeddings=True, n_kv_head=1, activation="gelu", softcap=0.0), "int8"),  # tied, MQA, gelu, no cap
    (dict(activation="silu", qk_norm=False, rope_theta=100000.0, n_kv_head=4, mlp_ratio=2.5), "int8"),  # MHA, K=80
    (dict(n_embd=64, n_head=2, n_kv_head=1, n_layer=3), "int8-g64"),
    (dict(n_embd=64, n_head=4, n_kv_head=2, tie_embeddings=True), "int8-g128"),
    (dict(activation="gelu", n_kv_head=2), "none"),
    (dict(), "int4-g32"),  # 4-bit matmuls, int8 lm_head and tables
    (dict(tie_embeddings=True, n_kv_head=1, mlp_ratio=2.5), "int4-g64"),  # tied table stays int8; K=160
    (dict(tie_embeddings=True, n_kv_head=1), "int4-g32-all"),  # the tied table at 4 bits, both uses
    (dict(), "int4-g64-all"),  # lm_head and the untied table at 4 bits
]


@pytest.mark.parametrize("overrides,quant", MATRIX, ids=[f"{q}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}"
                                                         for o, q in MATRIX])
def test_interpreter_matches_rq(overrides, quant):
    model = tiny_model(seed=len(overrides), **overrides)
    g = lower(trace(model, model.config.sequence_len))
    g.meta.update(arch="gpt", config=model.config.to_dict())
    g, _ = run_pipeline(g, quant)
    # per-layer comparison re-traces the model: done for two configs, which is enough to test the harness
    per_layer = MATRIX.index((overrides, quant)) < 2
    report = run_parity(g, fp32_model=model, layers=per_layer)
    c = report["checks"]
    assert c["logits_vs_rq"]["ok"], c["logits_vs_rq"]
    assert c["decode_vs_prefill"]["ok"], c["decode_vs_prefill"]
    assert c["greedy_vs_rq"]["steps"] == TOLERANCES["greedy_steps"]
    assert c["greedy_vs_rq"]["mismatches"] == 0, c["greedy_vs_rq"]
    if per_layer:
        assert c["layers_vs_rq"]["ok"] and c["layers_vs_rq"]["compared"] >= 4 * model.config.n_layer, c["layers_vs_rq"]
    if quant == "none":  # no quantization: R_q is the fp32 model itself
        assert c["vs_fp32"]["top1_agreement"] == 1.0
    assert report["ok"]


def test_eval_accuracy_check_runs_both_models_on_the_same_problems(tiny_export):
    from conftest import byte_tokenizer_json, lowered
    from monologue_compile.parity import _eval_accuracy

    model, ep = tiny_export
    g, _ = run_pipeline(lowered(model, ep), "none")
    r = _eval_accuracy(g, model, byte_tokenizer_json(model.config.vocab_size), n_per_family=1)
    assert r["problems"] >= 4
    # quant none: the interpreter is fp32 itself, so every reply (right or wrong) is the same
    assert r["same_replies"] == 1.0
    assert r["compiled_accuracy"] == r["fp32_accuracy"] and r["well_formed_fp32"] == r["well_formed_compiled"]
    assert r["ok"]
