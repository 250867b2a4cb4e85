"""Which transformers families compile: a tiny random config of each causal LM class below (more than
the test matrix holds), traced and compiled as a user's folder would be, then checked the way
tests/test_hf_models.py checks its cells (the interpreter against the model's own forward, chunked
decode against one shot) and, with --backends, as tests/test_hf_backends.py does (native, wasm and
WGSL against R_q, at int8 and int4-g32).

    python benchmarks/probe_hf_families.py [--families gptj,falcon] [--impl sdpa|eager] [--backends]

One line per family (with the other attention implementation where transformers offers only that
one): `ok` with the errors, `refused` with the compiler's one-line error (a
construct it does not cover, named), `no model` where transformers itself cannot build the config,
or `CRASH` with the exception (a bug: a refusal must be a MonologueError). Exits 1 on a crash or a
failed check. What this found is in issue 18's stop-33, 35 and 36 notes; the constructs that needed
a fix have tests of their own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_hf_models import SMALL, S, V, compiled, ids, randomized  # noqa: E402

from monologue_compile.errors import MonologueError  # noqa: E402
from monologue_compile.frontend.hf import CausalLMLogits  # noqa: E402
from monologue_compile.interpreter import Session  # noqa: E402

GPT2_LIKE = dict(vocab_size=V, bos_token_id=1, eos_token_id=2)
# multi-head latent attention (DeepSeek-V2 and its followers): as many kv heads as heads
MLA = dict(num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8)
# family -> (config class in transformers, its keyword arguments)
FAMILIES = {
    "mistral": ("MistralConfig", dict(SMALL, sliding_window=None)),
    "mistral-window": ("MistralConfig", dict(SMALL, sliding_window=5)),
    "gemma": ("GemmaConfig", dict(SMALL, head_dim=8)),
    "gemma2": ("Gemma2Config", dict(SMALL, head_dim=8, sliding_window=5, attn_logit_softcapping=2.0,
                                    final_logit_softcapping=3.0, initializer_range=0.3, query_pre_attn_scalar=8)),
    "olmo": ("OlmoConfig", SMALL),
    "olmo2": ("Olmo2Config", SMALL),
    "olmo3": ("Olmo3Config", SMALL),
    "granite": ("GraniteConfig", SMALL),
    "stablelm": ("StableLmConfig", SMALL),
    "starcoder2": ("Starcoder2Config", SMALL),
    "phi": ("PhiConfig", SMALL),
    "cohere": ("CohereConfig", SMALL),
    "helium": ("HeliumConfig", dict(SMALL, head_dim=8)),
    "glm": ("GlmConfig", dict(SMALL, head_dim=8)),
    "ernie4_5": ("Ernie4_5Config", dict(SMALL, head_dim=8)),
    "exaone4": ("Exaone4Config", SMALL),
    "seed_oss": ("SeedOssConfig", SMALL),
    "arcee": ("ArceeConfig", SMALL),
    "apertus": ("ApertusConfig", SMALL),
    "hunyuan": ("HunYuanDenseV1Config", dict(SMALL, head_dim=8)),
    "persimmon": ("PersimmonConfig", SMALL),
    "nemotron": ("NemotronConfig", dict(SMALL, head_dim=8)),
    "jais2": ("Jais2Config", SMALL),
    "lfm2": ("Lfm2Config", dict(SMALL, layer_types=["conv", "full_attention"])),
    "gpt_neox": ("GPTNeoXConfig", dict(GPT2_LIKE, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=S)),
    "gptj": ("GPTJConfig", dict(GPT2_LIKE, n_embd=32, n_layer=2, n_head=4, n_positions=S, rotary_dim=4)),
    "codegen": ("CodeGenConfig", dict(GPT2_LIKE, n_embd=32, n_layer=2, n_head=4, n_positions=S, rotary_dim=4)),
    "gpt_neo": ("GPTNeoConfig", dict(GPT2_LIKE, hidden_size=32, num_layers=2, num_heads=4, window_size=5,
                                     attention_types=[[["global", "local"], 1]], max_position_embeddings=S)),
    "gpt_bigcode": ("GPTBigCodeConfig", dict(GPT2_LIKE, n_embd=32, n_layer=2, n_head=4, n_positions=S)),
    "falcon": ("FalconConfig", dict(GPT2_LIKE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)),
    "falcon-40b": ("FalconConfig", dict(GPT2_LIKE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_kv_heads=2, new_decoder_architecture=True)),
    "falcon-rw": ("FalconConfig", dict(GPT2_LIKE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       alibi=True, multi_query=False, parallel_attn=False, bias=True)),
    "bloom": ("BloomConfig", dict(GPT2_LIKE, hidden_size=32, n_layer=2, n_head=4)),
    "opt": ("OPTConfig", dict(GPT2_LIKE, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
                              max_position_embeddings=S, word_embed_proj_dim=32, pad_token_id=0)),
    "mpt": ("MptConfig", dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=S)),
    "glm4": ("Glm4Config", dict(SMALL, head_dim=8)),
    "cohere2": ("Cohere2Config", dict(SMALL, sliding_window=5, layer_types=["sliding_attention", "full_attention"])),
    "xglm": ("XGLMConfig", dict(GPT2_LIKE, d_model=32, ffn_dim=48, num_layers=2, attention_heads=4,
                                max_position_embeddings=S)),
    "biogpt": ("BioGptConfig", dict(GPT2_LIKE, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=S)),
    "ctrl": ("CTRLConfig", dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, dff=48, n_positions=S)),
    "openai-gpt": ("OpenAIGPTConfig", dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=S)),
    "bitnet": ("BitNetConfig", SMALL),
    "vaultgemma": ("VaultGemmaConfig", dict(SMALL, head_dim=8, sliding_window=5)),
    # a query scale per position past 8 (Llama 4's attention temperature), which bites from position 8
    "ministral3": ("Ministral3Config", dict(SMALL, head_dim=8, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 10.0, "original_max_position_embeddings": 8,
        "llama_4_scaling_beta": 0.5})),
    "nanochat": ("NanoChatConfig", SMALL),
    "cwm": ("CwmConfig", dict(SMALL, head_dim=8, sliding_window=5)),
    "doge": ("DogeConfig", SMALL),
    "qwen3_moe": ("Qwen3MoeConfig", dict(SMALL, head_dim=8, num_experts=4, num_experts_per_tok=2,
                                         moe_intermediate_size=16)),
    "mixtral": ("MixtralConfig", dict(SMALL, num_local_experts=4, num_experts_per_tok=2)),
    "olmoe": ("OlmoeConfig", dict(SMALL, num_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                         shared_expert_intermediate_size=24)),
    "phimoe": ("PhimoeConfig", dict(SMALL, num_local_experts=4, num_experts_per_tok=2)),
    "granitemoe": ("GraniteMoeConfig", dict(SMALL, num_local_experts=4, num_experts_per_tok=2)),
    "granitemoeshared": ("GraniteMoeSharedConfig", dict(SMALL, num_local_experts=4, num_experts_per_tok=2,
                                                        shared_intermediate_size=24)),
    "deepseek_v3": ("DeepseekV3Config", dict(SMALL, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
                                             n_group=2, topk_group=1, moe_intermediate_size=16, first_k_dense_replace=1,
                                             q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8,
                                             qk_nope_head_dim=8, v_head_dim=8, n_shared_experts=1)),
    "ernie4_5_moe": ("Ernie4_5_MoeConfig", dict(SMALL, moe_num_experts=4, moe_k=2, moe_intermediate_size=16)),
    "hunyuan_v1_moe": ("HunYuanMoEV1Config", dict(SMALL, head_dim=8, num_experts=4, moe_topk=2)),
    "glm4_moe": ("Glm4MoeConfig", dict(SMALL, n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1,
                                       moe_intermediate_size=16, first_k_dense_replace=1, head_dim=8)),
    "dots1": ("Dots1Config", dict(SMALL, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
                                  moe_intermediate_size=16, first_k_dense_replace=1, head_dim=8, max_window_layers=2,
                                  n_shared_experts=1)),
    "lfm2_moe": ("Lfm2MoeConfig", dict(SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                       num_dense_layers=1, layer_types=["conv", "full_attention"])),
    "flex_olmo": ("FlexOlmoConfig", dict(SMALL, num_experts=4, num_experts_per_tok=2)),
    "minimax": ("MiniMaxConfig", dict(SMALL, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
                                      layer_types=["full_attention", "full_attention"])),
    "granite_swa": ("GraniteSWAConfig", dict(SMALL, sliding_window=5)),
    "gpt_oss": ("GptOssConfig", dict(SMALL, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=5)),
    # families of transformers 5.x (stop 36)
    "llama": ("LlamaConfig", SMALL),
    "gemma3_text": ("Gemma3TextConfig", dict(SMALL, head_dim=8, sliding_window=5)),
    "ministral": ("MinistralConfig", dict(SMALL, head_dim=8, sliding_window=5,
                                          layer_types=["sliding_attention", "full_attention"])),
    "hunyuan_v1_dense": ("HunYuanDenseV1Config", dict(SMALL, head_dim=8)),
    "apertus1p5_text": ("Apertus1p5TextConfig", SMALL),
    "exaone": ("ExaoneConfig", SMALL),
    "flint": ("FlintConfig", SMALL),
    "hyperclovax": ("HyperCLOVAXConfig", SMALL),
    "internlm3": ("InternLM3Config", SMALL),
    "iquestcoder": ("IQuestCoderConfig", SMALL),
    "lfm3": ("Lfm3Config", SMALL),
    "beam": ("BeamConfig", SMALL),
    "diffllama": ("DiffLlamaConfig", SMALL),
    # nGPT-style scales (sqk, s_gate) are parameters times 1 / initializer_range: the default 0.0177
    # turns random weights into scores so peaked that torch's own f32 and f64 differ by 2%
    "dory": ("DoryConfig", dict(SMALL, initializer_range=1.0)),
    "granitemoe_swa": ("GraniteMoeSWAConfig", dict(SMALL, num_local_experts=4, num_experts_per_tok=2, sliding_window=5)),
    "cohere2_moe": ("Cohere2MoeConfig", dict(SMALL, head_dim=8, num_experts=4, num_experts_per_tok=2)),
    "afmoe": ("AfmoeConfig", dict(SMALL, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                  num_shared_experts=1)),
    "exaone_moe": ("ExaoneMoeConfig", dict(SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)),
    "hy_v3": ("HYV3Config", dict(SMALL, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)),
    "laguna": ("LagunaConfig", dict(SMALL, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                    shared_expert_intermediate_size=16)),
    "mellum": ("MellumConfig", dict(SMALL, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
                                    moe_intermediate_size=16)),
    "minimax_m2": ("MiniMaxM2Config", dict(SMALL, head_dim=8, num_local_experts=4, num_experts_per_tok=2)),
    "sarvam_moe": ("SarvamMoEConfig", dict(SMALL, head_dim=8, n_routed_experts=4, num_experts_per_tok=2,
                                           moe_intermediate_size=16)),
    "solar_open": ("SolarOpenConfig", dict(SMALL, head_dim=8, n_routed_experts=4, num_experts_per_tok=2,
                                           moe_intermediate_size=16)),
    "minicpm3": ("MiniCPM3Config", dict(SMALL, **MLA)),
    "youtu": ("YoutuConfig", dict(SMALL, **MLA)),
    "deepseek_v2": ("DeepseekV2Config", dict(SMALL, **MLA, n_routed_experts=4, num_experts_per_tok=2,
                                             moe_intermediate_size=16)),
    "glm4_moe_lite": ("Glm4MoeLiteConfig", dict(SMALL, **MLA, n_routed_experts=4, num_experts_per_tok=2,
                                                moe_intermediate_size=16)),
    "sarvam_mla": ("SarvamMLAConfig", dict(SMALL, **MLA, n_routed_experts=4, num_experts_per_tok=2,
                                           moe_intermediate_size=16)),
    "axk1": ("AXK1Config", dict(SMALL, **MLA, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                n_group=1, topk_group=1)),
    "kolibri1": ("Kolibri1Config", dict(SMALL, head_dim=8, sliding_window=5, num_local_experts=4, num_experts_per_tok=2,
                                        moe_intermediate_size=16, shared_expert_intermediate_size=16)),
    "mimo_v2_flash": ("MiMoV2FlashConfig", dict(SMALL, head_dim=8, v_head_dim=8, sliding_window=5, n_routed_experts=4,
                                                num_experts_per_tok=2, moe_intermediate_size=16)),
    "gemma4_text": ("Gemma4TextConfig", dict(SMALL, head_dim=8, sliding_window=5, hidden_size_per_layer_input=8,
                                             vocab_size_per_layer_input=V)),
    # refused by name: linear attention or state-space layers (a scan over the sequence), an MoE with
    # index arithmetic of its own (JetMoE), Llama 4's experts over tokens tiled along the sequence
    "qwen3_5_text": ("Qwen3_5TextConfig", SMALL),
    "olmo_hybrid": ("OlmoHybridConfig", SMALL),
    "falcon_h1": ("FalconH1Config", SMALL),
    "jamba": ("JambaConfig", SMALL),
    "jetmoe": ("JetMoeConfig", SMALL),
    "llama4_text": ("Llama4TextConfig", SMALL),
    "qwen3_5_moe_text": ("Qwen3_5MoeTextConfig", dict(SMALL, head_dim=8, num_experts=4, num_experts_per_tok=2)),
    "lara_mini": ("LaraMiniConfig", SMALL),
    "bailing_hybrid": ("BailingHybridConfig", SMALL),
    "nemotron_h": ("NemotronHConfig", SMALL),
    "zaya": ("ZayaConfig", dict(SMALL, head_dim=8, num_experts=4, moe_intermediate_size=16)),  # F.pad of a convolution
    "deepseek_v4": ("DeepseekV4Config", SMALL),  # attention over compressed chunks of the sequence
    "hy_v4": ("HYV4Config", dict(SMALL, **MLA, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)),
    "axk2": ("AXK2Config", dict(SMALL, **MLA, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)),
}


def build(family: str, impl: str):
    """(the family's model wrapped as the compiler sees a folder's, the attention implementation it
    got: `impl`, else the other where transformers has only that one), or (None, transformers' reason)."""
    import transformers

    cls, kwargs = FAMILIES[family]
    why = ""
    for attn in (impl, {"sdpa": "eager", "eager": "sdpa"}[impl]):
        try:
            config = getattr(transformers, cls)(**kwargs)
            torch.manual_seed(1)
            model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
        except Exception as e:  # noqa: BLE001 - transformers' own refusal (an attention implementation it lacks)
            why = why or f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"
            continue
        return CausalLMLogits(randomized(model, 4), S), attn
    return None, why


def interpreter_errors(model, g) -> tuple[float, float]:
    """(logits vs the model's forward, chunked decode vs one shot), relative to the largest logit."""
    x = ids(24)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    whole = Session(g).forward(x)
    s = Session(g)
    parts = np.concatenate([s.forward(x[:7])] + [s.forward(x[i:i + 1]) for i in range(7, 24)])
    scale = np.abs(ref).max()
    return float(np.abs(whole - ref).max() / scale), float(np.abs(parts - whole).max() / scale)


def backend_failures(model) -> list[str]:
    """test_hf_backends' check of each backend at int8 and int4-g32; the failures, one line each."""
    import tempfile

    from test_hf_backends import check, session

    from monologue_compile.driver import build as build_graph
    from monologue_compile.frontend.module import from_module
    from monologue_compile.parity import rq_state_dict

    loaded = from_module(model.model, None, S)
    out = []
    for quant in ("int8", "int4-g32"):
        g = build_graph(loaded, quant).graph
        rq = loaded.build_module(rq_state_dict(g)).eval()
        for backend in ("native", "wasm", "wgsl"):
            try:
                check(session(g, backend, Path(tempfile.mkdtemp())), g, rq, g.meta["config"]["sequence_len"])
            except Exception as e:  # noqa: BLE001 - every failure is reported, the probe goes on
                out.append(f"{quant} {backend}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated, of: " + ", ".join(FAMILIES))
    ap.add_argument("--impl", default="sdpa", choices=["sdpa", "eager"], help="transformers' attention implementation")
    ap.add_argument("--backends", action="store_true", help="also native, wasm and WGSL against R_q (minutes)")
    a = ap.parse_args()
    bad = 0
    for family in a.families.split(","):
        if family not in FAMILIES:
            raise SystemExit(f"error: --families: no family {family!r} (known: {', '.join(FAMILIES)})")
        model, attn = build(family, a.impl)
        if model is None:
            print(f"{family:<22} no model   {attn}", flush=True)
            continue
        family += f" ({attn})" if attn != a.impl else ""
        try:
            g = compiled(model)
        except MonologueError as e:
            print(f"{family:<22} refused    {e}", flush=True)
            continue
        except Exception as e:  # noqa: BLE001 - a crash is the finding
            print(f"{family:<22} CRASH      {type(e).__name__}: {e}", flush=True)
            bad += 1
            continue
        err, chunked = interpreter_errors(model, g)
        failed = err > 1e-4 or chunked > 1e-5
        failures = backend_failures(model) if a.backends and not failed else []
        bad += failed or bool(failures)
        backends = f"; native, wasm, WGSL x int8, int4-g32: {6 - len(failures)} of 6" if a.backends and not failed else ""
        print(f"{family:<22} {'FAILED' if failed or failures else 'ok':<10} logits {err:.1e}, chunked {chunked:.1e}"
              + backends + "".join(f"\n{'':<33}{f}" for f in failures), flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
