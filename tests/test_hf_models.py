"""Hugging Face causal LMs and hand-written GPTs compile unmodified: the numpy interpreter against the
model's own fp32 forward, for transformers' classes with tiny random configs (both attention
implementations) and two GPTs written here in the styles people write them.

Each cell: logits <= 1e-4 relative, chunked prefill and decode = one shot (past every sliding
window), 64 greedy tokens identical to the model's own (at --quant none the model is R_q).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from monologue_compile.errors import MonologueError  # noqa: E402
from monologue_compile.frontend.hf import CausalLMLogits  # noqa: E402
from monologue_compile.frontend.trace import trace  # noqa: E402
from monologue_compile.interpreter import Session  # noqa: E402
from monologue_compile.lower import lower  # noqa: E402
from monologue_compile.parity import rq_state_dict  # noqa: E402
from monologue_compile.passes import run_pipeline  # noqa: E402

V, S = 97, 80  # vocabulary, positions: 8 prompt tokens + 64 greedy ones fit
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=S, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def hf_configs() -> dict:
    from transformers import (ApertusConfig, BloomConfig, DeepseekV3Config, FalconConfig, Gemma2Config,
                              Gemma3TextConfig, Glm4MoeConfig, GlmConfig, GPT2Config, GPTBigCodeConfig, GPTJConfig,
                              GPTNeoConfig, GptOssConfig, GraniteMoeConfig, GraniteSWAConfig, HunYuanDenseV1Config,
                              Lfm2Config, Lfm2MoeConfig, LlamaConfig, Ministral3Config, MptConfig, NanoChatConfig,
                              Phi3Config, PhimoeConfig, Qwen2Config, Qwen2MoeConfig, Qwen3Config, Qwen3MoeConfig,
                              SmolLM3Config, XGLMConfig)

    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 16, "rope_theta": 500000.0}
    return {
        "gpt2": GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=S, bos_token_id=1, eos_token_id=2),
        "llama-llama3-tied": LlamaConfig(**SMALL, rope_parameters=llama3, tie_word_embeddings=True),
        "llama-untied": LlamaConfig(**SMALL, tie_word_embeddings=False),
        "qwen2": Qwen2Config(**SMALL),
        "qwen3": Qwen3Config(**SMALL, head_dim=8),
        "gemma3": Gemma3TextConfig(**SMALL, head_dim=8, sliding_window=5,
                                   layer_types=["sliding_attention", "full_attention"]),
        # tanh softcaps of the attention scores and of the logits, with weights large enough that both bite
        # (the logits differ by a third without the attention cap), and a sliding window on layer 0
        "gemma2": Gemma2Config(**SMALL, head_dim=8, sliding_window=5, attn_logit_softcapping=2.0,
                               final_logit_softcapping=3.0, initializer_range=0.3, query_pre_attn_scalar=8),
        "phi3": Phi3Config(**SMALL, partial_rotary_factor=0.5),
        "smollm3": SmolLM3Config(**SMALL, no_rope_layers=[1, 0]),
        "hunyuan": HunYuanDenseV1Config(**SMALL, head_dim=8),  # weighted q/k RMSNorm after the rotation
        # rotate_every_two (x[..., ::2]) on part of each head, attention and MLP side by side
        "gptj": GPTJConfig(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=S, rotary_dim=4, bos_token_id=1,
                           eos_token_id=2),
        "glm": GlmConfig(**SMALL, head_dim=8),  # interleaved partial rotary in (B, H, T, D)
        # bool tril buffers (with a window on the local layers) in torch.where, fill float32's lowest
        "gpt_neo": GPTNeoConfig(vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, window_size=5,
                                attention_types=[[["global", "local"], 1]], max_position_embeddings=S, bos_token_id=1,
                                eos_token_id=2),
        "gpt_bigcode": GPTBigCodeConfig(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=S, bos_token_id=1,
                                        eos_token_id=2),  # multi-query, a bool causal buffer
        # Falcon-7B's multi-query heads picked by index (`[..., [-2], :]`) and `mlp_output += attn`;
        # Falcon-40B's grouped layout (broadcast_to, flatten of two axes)
        "falcon": FalconConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, bos_token_id=1,
                               eos_token_id=2),
        "falcon-40b": FalconConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_kv_heads=2, new_decoder_architecture=True, bos_token_id=1, eos_token_id=2),
        # ALiBi: Bloom's (heads folded into the batch, alibi.baddbmm(q, k.T), a float32-lowest mask) and
        # MPT's (a bias built for max_seq_len and sliced, masked_fill; 6 heads: slopes of 8 interleaved)
        "bloom": BloomConfig(vocab_size=V, hidden_size=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2),
        "mpt": MptConfig(vocab_size=V, d_model=48, n_layers=2, n_heads=6, max_seq_len=S, expansion_ratio=2),
        # max(scores, float32's lowest) after the mask, sinusoidal positions, a scaled embedding
        "xglm": XGLMConfig(vocab_size=V, d_model=32, ffn_dim=48, num_layers=2, attention_heads=4,
                           max_position_embeddings=S, bos_token_id=1, eos_token_id=2),
        # Llama 4's attention temperature: q times a per-position scale after the rotation, biting past 8
        "ministral3": Ministral3Config(**SMALL, head_dim=8, rope_parameters={
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 10.0, "original_max_position_embeddings": 8,
            "llama_4_scaling_beta": 0.5}),
        # nanochat as transformers writes it (NanoChatForCausalLM): QK-norm, relu2, a logit softcap
        "nanochat": NanoChatConfig(**SMALL),
        # xIELU: softplus of parameters, 0-d buffers, torch.where(x > 0, ...), expm1, torch.min
        "apertus": ApertusConfig(**SMALL),
        # Falcon-RW's ALiBi: in the mask (finite where visible; sdpa's attn_mask), and in eager twice
        "falcon-rw": FalconConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, alibi=True,
                                  multi_query=False, parallel_attn=False, bias=True, bos_token_id=1, eos_token_id=2),
        # mixtures of experts, evaluated densely (frontend/experts.py), three routers: softmax, top 2 of 4,
        # renormalized (Qwen3-MoE, Mixtral); the same unnormalized beside a shared expert behind a sigmoid
        # gate (Qwen2-MoE); top 2 of the logits, then a softmax of those two (GraniteMoE)
        "qwen3_moe": Qwen3MoeConfig(**SMALL, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16),
        "qwen2_moe": Qwen2MoeConfig(**SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                    shared_expert_intermediate_size=24),
        "granitemoe": GraniteMoeConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2),
        # DeepSeek-V3's group-limited routing: sigmoid scores plus a bias, top 2 of each of 2 groups summed,
        # the best group kept (topk, scatter into zeros, masked_fill with -inf), then the weights gathered
        "glm4_moe": Glm4MoeConfig(**SMALL, head_dim=8, n_routed_experts=4, num_experts_per_tok=2, n_group=2,
                                  topk_group=1, moe_intermediate_size=16, first_k_dense_replace=1),
        # DeepSeek-V3: multi-head latent attention (k assembled by copies into new_empty, q/k heads 16 wide
        # and v 8: padded), group-limited routing (2 groups, the best one kept), a shared expert, a dense layer 0
        "deepseek_v3": DeepseekV3Config(**{**SMALL, "num_key_value_heads": 4}, n_routed_experts=4, num_experts_per_tok=2,
                                        n_group=2, topk_group=1, moe_intermediate_size=16, first_k_dense_replace=1,
                                        q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                        v_head_dim=8, n_shared_experts=1),
        # GPT-OSS: attention sinks (a learned logit per head as one more column of the softmax), a window on
        # every other layer, experts stored (E, K, N) and read as x @ W[e] with biases and interleaved gate|up
        "gpt_oss": GptOssConfig(**SMALL, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=5),
        # Granite-SWA's sinks, written as the output times sigmoid(logsumexp(scores) - sink)
        "granite_swa": GraniteSWAConfig(**SMALL, sliding_window=5),
        # PhiMoE's sparsemixer: max(dim), -inf into the first choice (scatter into scores), (T, 1) - (T, E)
        "phimoe": PhimoeConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2),
        # LFM2's short convolution (a causal depthwise conv1d over (B, C, T)) beside attention, and its MoE
        "lfm2": Lfm2Config(**SMALL, layer_types=["conv", "full_attention"]),
        "lfm2_moe": Lfm2MoeConfig(**SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                  num_dense_layers=1, layer_types=["conv", "full_attention"]),
    }


# the attention implementations a family's transformers class offers, when not both
# (transformers offers no sdpa for these: GPT-Neo, Bloom, MPT, XGLM, and Gemma 2, GPT-OSS and Granite-SWA, whose
# softcap and sinks sdpa cannot do)
IMPLS = {"gpt_neo": ("eager",), "gemma2": ("eager",), "bloom": ("eager",), "mpt": ("eager",), "xglm": ("eager",),
         "gpt_oss": ("eager",), "granite_swa": ("eager",)}


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """Norm weights and biases moved off their 1 and 0, so a dropped weight or `1 + w` shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


# --- GPTs as people write them -------------------------------------------------------------------

class NanoGPT(nn.Module):
    """nanoGPT's model.py in miniature: fused c_attn split in three, a registered tril buffer with
    masked_fill, learned positions, LayerNorm with biases, GELU, tied embeddings."""

    def __init__(self, n_embd=32, n_head=4, n_layer=2, block_size=S, block=None):
        super().__init__()
        self.n_head, self.block_size = n_head, block_size
        self.wte, self.wpe = nn.Embedding(V, n_embd), nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList((block or NanoBlock)(n_embd, n_head, block_size) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, V, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        B, T = idx.size()
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.ln_f(x))


class NanoBlock(nn.Module):
    def __init__(self, C, n_head, block_size):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def attn(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


def assorted_activations(h):
    """Activations people write by hand, on the four quarters of the MLP's hidden row: comparisons and
    torch.where (tensors and scalars), clamp, relu6, minimum, elu, leaky_relu, softplus, mish,
    hardswish, expm1, log, comparisons used as floats and combined with logical and bitwise ops."""
    a, b, c, d = h.chunk(4, dim=-1)
    a = torch.where(a > 0, a * a, F.elu(a, 0.5)) + torch.logical_and(a > -1, a < 1).to(a.dtype) * 0.1
    b = F.mish(b).clamp(-0.2, 1.5) + F.hardswish(b) * (b <= 1.0).float()
    c = torch.minimum(F.leaky_relu(c, 0.1), F.softplus(c)) - F.relu6(c * 4)
    d = torch.where((d < 0.25) | ~(d < 2.0), torch.expm1(d.clamp(max=1.0)), torch.log(d.abs() + 1.0)) + \
        torch.where(d != 0, 0.0, d)
    return torch.cat([a, b, c, d], dim=-1)


class ActBlock(NanoBlock):
    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp_proj(assorted_activations(self.c_fc(self.ln_2(x))))


class CharGPT(nn.Module):
    """The character-level GPT of the seeds: LayerNorm, learned positions, heads as separate
    modules over (B, T, hs) with a tril buffer, ReLU MLP, SDPA nowhere."""

    def __init__(self, n_embd=24, n_head=3, n_layer=2, block_size=S):
        super().__init__()
        self.tok, self.pos = nn.Embedding(V, n_embd), nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[CharBlock(n_embd, n_head, block_size) for _ in range(n_layer)])
        self.ln_f, self.head = nn.LayerNorm(n_embd), nn.Linear(n_embd, V)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        return self.head(self.ln_f(self.blocks(x)))


class CharHead(nn.Module):
    def __init__(self, C, hs, block_size):
        super().__init__()
        self.key, self.query, self.value = (nn.Linear(C, hs, bias=False) for _ in range(3))
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))

    def forward(self, x):
        T = x.shape[1]
        k, q = self.key(x), self.query(x)
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        return F.softmax(wei, dim=-1) @ self.value(x)


class CharBlock(nn.Module):
    def __init__(self, C, n_head, block_size):
        super().__init__()
        self.heads = nn.ModuleList(CharHead(C, C // n_head, block_size) for _ in range(n_head))
        self.proj = nn.Linear(C, C)
        self.ffwd = nn.Sequential(nn.Linear(C, 4 * C), nn.ReLU(), nn.Linear(4 * C, C))
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)

    def forward(self, x):
        x = x + self.proj(torch.cat([h(self.ln1(x)) for h in self.heads], dim=-1))
        return x + self.ffwd(self.ln2(x))


class ScratchGPT(nn.Module):
    """What from-scratch GPTs write that the others do not (x-transformers, tutorials): sinusoidal
    positions filled in by slice assignment in forward; rotary from an einsum outer product in a
    disabled autocast region; q, k, v and the output projection as einsums with (heads, head_dim)
    parameters; grouped KV heads by repeat_interleave; qk-norm and RMSNorm by F.normalize; scores
    and values by einsum under a triu mask filled in place with -1e9; a token shift by F.pad and a
    causal convolution after F.pad's zeros in front; a GLU MLP; a tied head by einsum."""

    def __init__(self, D=32, H=4, kv=2, n_layer=2):
        super().__init__()
        self.H, self.kv, self.hd, self.block_size = H, kv, D // H, S
        self.wte = nn.Embedding(V, D)
        self.qkv = nn.ParameterList(nn.Parameter(torch.randn(D, H + 2 * kv, self.hd) / D ** 0.5) for _ in range(n_layer))
        self.out = nn.ParameterList(nn.Parameter(torch.randn(H, self.hd, D) / D ** 0.5) for _ in range(n_layer))
        self.ffn = nn.ModuleList(nn.Sequential(nn.Linear(D, 4 * D), nn.GLU(), nn.Linear(2 * D, D)) for _ in range(n_layer))
        self.g = nn.Parameter(1 + 0.2 * torch.randn(2 * n_layer + 1, D))
        self.conv = nn.ModuleList(nn.Conv1d(D, D, 3, groups=D) for _ in range(n_layer))
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, self.hd, 2).float() / self.hd))

    def norm(self, x, i):
        return F.normalize(x, dim=-1) * x.shape[-1] ** 0.5 * self.g[i]

    def rotate(self, x, cos, sin):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def forward(self, idx):
        T, D = idx.shape[1], self.wte.embedding_dim
        pos = torch.arange(T, dtype=torch.float32)[:, None]
        pe = torch.zeros(T, D)
        pe[:, 0::2] = torch.sin(pos * self.inv_freq.repeat(D // self.hd))
        pe[:, 1::2] = torch.cos(pos * self.inv_freq.repeat(D // self.hd))
        with torch.autocast("cpu", enabled=False):
            freqs = torch.einsum("i,j->ij", torch.arange(T, dtype=torch.float32), self.inv_freq)
            cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
        x = self.wte(idx) + 0.1 * pe
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)
        for i in range(len(self.out)):
            qkv = torch.einsum("btd,dhe->bthe", self.norm(x, 2 * i), self.qkv[i]).transpose(1, 2)
            q, k, v = qkv.split([self.H, self.kv, self.kv], dim=1)
            q, k = self.rotate(F.normalize(q, dim=-1), cos, sin) * 3, self.rotate(F.normalize(k, dim=-1), cos, sin)
            k, v = k.repeat_interleave(self.H // self.kv, dim=1), v.repeat_interleave(self.H // self.kv, dim=1)
            att = torch.einsum("bhqd,bhkd->bhqk", q, k)
            att.masked_fill_(causal, -1e9)  # in place, with the tutorials' fill
            att = att.softmax(-1)
            x = x + torch.einsum("bhte,hed->btd", torch.einsum("bhqk,bhkd->bhqd", att, v), self.out[i])
            h = self.norm(x, 2 * i + 1)
            half = D // 2
            h = torch.cat([F.pad(h[..., :half], (0, 0, 1, -1)), h[..., half:]], dim=-1)  # the previous token's half
            h = h + self.conv[i](F.pad(h.transpose(1, 2), (2, 0))).transpose(1, 2)  # a causal depthwise conv
            x = x + self.ffn[i](h)
        return torch.einsum("btd,vd->btv", self.norm(x, -1), self.wte.weight)


# --- the matrix ----------------------------------------------------------------------------------

CELLS = [(f, impl) for f in ["gpt2", "llama-llama3-tied", "llama-untied", "qwen2", "qwen3", "gemma2", "gemma3", "phi3",
                             "smollm3", "hunyuan", "gptj", "glm", "gpt_neo", "gpt_bigcode", "falcon", "falcon-40b", "bloom",
                             "mpt", "falcon-rw", "apertus", "xglm", "nanochat", "ministral3", "qwen3_moe",
                             "qwen2_moe", "granitemoe", "glm4_moe", "phimoe", "deepseek_v3", "gpt_oss", "granite_swa", "lfm2",
                             "lfm2_moe"]
         for impl in IMPLS.get(f, ("eager", "sdpa"))] + [("nanogpt", "-"), ("chargpt", "-"), ("actgpt", "-"),
                                                         ("scratchgpt", "-")]


def build_model(family: str, impl: str) -> CausalLMLogits:
    torch.manual_seed(1)
    if family == "nanogpt":
        return CausalLMLogits(randomized(NanoGPT(), 2), S)
    if family == "chargpt":
        return CausalLMLogits(randomized(CharGPT(), 3), S)
    if family == "actgpt":
        return CausalLMLogits(randomized(NanoGPT(block=ActBlock), 5), S)
    if family == "scratchgpt":
        return CausalLMLogits(randomized(ScratchGPT(), 6), S)
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_config(hf_configs()[family], attn_implementation=impl, dtype=torch.float32)
    return CausalLMLogits(randomized(m, 4), S)


def compiled(model: nn.Module, quant: str = "none"):
    ep = trace(model, S)
    g = lower(ep)
    g.meta["config"] = {"sequence_len": int(ep.range_constraints[next(iter(ep.range_constraints))].upper),
                        "vocab_size": V}
    return run_pipeline(g, quant)[0]


@pytest.fixture(scope="module", params=CELLS, ids=[f"{f}-{i}" for f, i in CELLS])
def cell(request):
    model = build_model(*request.param)
    return request.param, model, compiled(model)


def ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, V, n)


def test_logits_match_the_models_own_forward(cell):
    _, model, g = cell
    x = ids(24)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    out = Session(g).forward(x)
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-4


def test_chunked_prefill_and_decode_equal_one_shot_past_the_window(cell):
    (family, impl), _, g = cell
    if family in ("gemma2", "gemma3"):
        assert sorted(n.attrs["window"] for n in g.nodes if n.op == "attention") == [0, 5]
    if family == "gemma2":
        assert [n.attrs.get("softcap") for n in g.nodes if n.op == "attention"] == [2.0, 2.0]
    if family in ("bloom", "mpt", "falcon-rw"):  # ALiBi's slopes, as the paper's geometric sequence per head count
        want = [2.0 ** -k for k in (2, 4, 6, 8, 1, 3)] if family == "mpt" else \
            [2.0 ** -(2 * h + 2) for h in range(4)]  # MPT's 6 of 8: the odd ones, then the even ones
        if family == "falcon-rw":  # 1/sqrt(head_dim) in the mask; eager adds alibi * 1/sqrt(8) once more
            want = [m / math.sqrt(8) * (2 if impl == "eager" else 1) for m in want]
        assert all(np.allclose(n.attrs["alibi"], want, rtol=1e-6) for n in g.nodes if n.op == "attention")
    x = ids(24, 1)
    whole = Session(g).forward(x)
    s = Session(g)
    parts = [s.forward(x[:7]), s.forward(x[7:8]), s.forward(x[8:15])] + [s.forward(x[i:i + 1]) for i in range(15, 24)]
    assert np.abs(np.concatenate(parts) - whole).max() <= 1e-5 * np.abs(whole).max()


def test_64_greedy_tokens_identical_to_the_model(cell):
    (family, impl), model, g = cell
    if impl == "eager" and "sdpa" in IMPLS.get(family, ("sdpa",)):
        pytest.skip("eager and sdpa differ in attention only, which the logits and chunked checks cover; the "
                    "64-step reference decode (full recompute) is the slowest check, so it runs once per family")
    prompt = [int(t) for t in ids(8, 2)]
    want = model.generate(prompt, 64)
    s = Session(g)
    logits, got = s.forward(prompt)[-1], []
    for _ in range(64):
        got.append(int(np.argmax(logits)))
        logits = s.forward([got[-1]])[-1]
    assert got == want


def test_hf_position_tables_and_masks_are_evaluated_not_lowered():
    """RoPE cos/sin become `positions` tables and the masks are gone into the attention ops."""
    g = compiled(build_model("llama-llama3-tied", "sdpa"))
    tables = [g.weights[n.inputs[0]] for n in g.nodes if n.op == "positions"]
    assert tables and all(t.role == "table" and S in t.shape for t in tables)
    assert all(w.shape.count(S) < 2 for w in g.weights.values())  # no (T, T) mask survives as a weight


# --- folders and the CLI -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    d = tmp_path_factory.mktemp("hf") / "qwen3"
    torch.manual_seed(5)
    m = randomized(AutoModelForCausalLM.from_config(hf_configs()["qwen3"], dtype=torch.float32), 6)
    m.save_pretrained(d, max_shard_size="40KB")  # sharded, with model.safetensors.index.json
    return d, m


def test_cli_compiles_a_sharded_save_pretrained_folder(qwen3_folder, tmp_path):
    d, m = qwen3_folder
    assert (d / "model.safetensors.index.json").exists()
    out = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(d), "-o", str(out), "--quant",
                        "none", "--no-wasm"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["model"]["source"]["kind"] == "huggingface"
    from monologue_compile.artifact import load_model

    g, _, _ = load_model(out)
    x = ids(12)
    with torch.no_grad():
        ref = m(input_ids=torch.from_numpy(x)[None]).logits[0].numpy()
    assert np.abs(Session(g).forward(x) - ref).max() / np.abs(ref).max() <= 1e-4


def test_cli_compiles_a_moe_checkpoint_stored_one_tensor_per_expert(tmp_path):
    """The Hub's MoE checkpoints hold `experts.3.gate_proj.weight` per expert; transformers' own
    conversion stacks them into the model class's `experts.gate_up_proj` (as from_pretrained does)."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    d, out = tmp_path / "qwen3_moe", tmp_path / "dist"
    torch.manual_seed(5)
    m = randomized(AutoModelForCausalLM.from_config(hf_configs()["qwen3_moe"], dtype=torch.float32), 6)
    m.save_pretrained(d)
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        assert "model.layers.0.mlp.experts.3.gate_proj.weight" in f.keys()
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(d), "-o", str(out), "--quant",
                        "none", "--no-wasm"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    # 2 layers of 4 experts, each a gate|up and a down matmul
    assert "experts: 4 in each of 4 stacked tensors, 16 matmuls skipping the tokens" in r.stdout + r.stderr
    from monologue_compile.artifact import load_model

    g, _, _ = load_model(out)
    x = ids(12)
    with torch.no_grad():
        ref = m(input_ids=torch.from_numpy(x)[None]).logits[0].numpy()
    assert np.abs(Session(g).forward(x) - ref).max() / np.abs(ref).max() <= 1e-4

    # one expert of another width, or an embedding: one line naming the tensor, nothing written
    from safetensors.torch import load_file, save_file

    sd = load_file(str(d / "model.safetensors"))
    for key, cut, says in [("model.layers.1.mlp.experts.2.down_proj.weight", 5,
                            r"model.layers.1.mlp.experts.down_proj: RuntimeError: stack expects each tensor"),
                           ("model.embed_tokens.weight", 5, rf"model.embed_tokens.weight is \({V}, 5\) in the "
                                                            rf"checkpoint, \({V}, 32\) in the model")]:
        bad = dict(sd, **{key: sd[key][:, :cut].contiguous()})
        save_file(bad, str(d / "model.safetensors"), metadata={"format": "pt"})
        r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(d), "-o", str(tmp_path / "bad")],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode != 0 and not (tmp_path / "bad").exists()
        assert re.search(r"^error: weights do not fit the qwen3_moe model of config.json: " + says, r.stderr, re.M), \
            r.stderr
        assert "Traceback" not in r.stderr


def test_folder_builds_with_bf16_weights_in_f32(qwen3_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    from monologue_compile.frontend.load import load

    d, m = qwen3_folder
    bf = tmp_path / "bf16"
    bf.mkdir()
    (bf / "config.json").write_text((d / "config.json").read_text())
    sd = {}
    for f in d.glob("*.safetensors"):
        sd.update(load_file(f))
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, bf / "model.safetensors")
    loaded = load(bf)
    assert all(v.dtype == torch.float32 for v in loaded.state_dict.values())
    model = loaded.build_module()
    x = torch.from_numpy(ids(10))[None]
    with torch.no_grad():
        want = m(input_ids=x).logits
    assert torch.allclose(model(x), want, atol=0.05 * want.abs().max().item())  # bf16 rounding of the weights


def test_missing_and_corrupt_shards_are_named(qwen3_folder, tmp_path):
    import shutil

    from monologue_compile.frontend.load import load

    d, _ = qwen3_folder
    broken = tmp_path / "broken"
    shutil.copytree(d, broken)
    shards = sorted(broken.glob("model-*.safetensors"))
    shards[1].write_bytes(shards[1].read_bytes()[:100])
    with pytest.raises(MonologueError, match=shards[1].name + ".*not a readable safetensors"):
        load(broken)
    shards[1].unlink()
    with pytest.raises(MonologueError, match=shards[1].name + ".*missing"):
        load(broken)
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(broken), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and shards[1].name in r.stderr
    assert not (tmp_path / "o").exists()


def test_a_quantized_checkpoint_is_refused_not_read_as_floats(qwen3_folder, tmp_path):
    """GPTQ, AWQ, bitsandbytes, FP8 or MXFP4 folders hold packed integers and scales: read as f32
    they would be garbage, so the compile refuses them, naming the method or the tensor."""
    import shutil

    from safetensors.torch import load_file, save_file

    from monologue_compile.frontend.load import load

    d, _ = qwen3_folder
    quantized = tmp_path / "gptq"
    shutil.copytree(d, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(MonologueError, match=r"config.json: the weights are quantized \(gptq, its quantization_config"):
        load(quantized).build_module()
    integer = tmp_path / "int8"
    shutil.copytree(d, integer)
    shard = sorted(integer.glob("model-*.safetensors"))[0]
    tensors = load_file(shard)
    name = next(k for k in sorted(tensors) if k.endswith("proj.weight"))
    save_file({**tensors, name: (tensors[name] * 100).to(torch.int8)}, shard)
    with pytest.raises(MonologueError, match=f"the weights have {name} as int8, not floating point"):
        load(integer).build_module()


# --- refusals ------------------------------------------------------------------------------------

def test_products_with_a_transposed_weight_are_linears():
    """`x @ W.t()` and `x @ W.T` (a hand-written projection, a tied head, Falcon's Linear) are
    `linear` on W itself, not a product of two activations."""

    class Transposed(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(V, 16)
            self.proj = nn.Parameter(torch.randn(24, 16) / 4)

        def forward(self, idx):
            return F.gelu(self.wte(idx) @ self.proj.t())[..., :16] @ self.wte.weight.T

    torch.manual_seed(5)
    model = CausalLMLogits(Transposed().eval(), S)
    g = compiled(model)
    assert sorted(n.inputs[1] for n in g.nodes if n.op == "matmul") == ["model.proj", "model.wte.weight"]
    x = ids(12)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    assert np.abs(Session(g).forward(x) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_in_place_arithmetic_on_a_value_read_again_is_refused():
    """`y += 1` is `y + 1` only when nothing reads y afterwards: a view of y taken before it sees the
    sum in PyTorch, so it is refused by name (Falcon's `mlp_output += attention_output` compiles)."""

    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(V, 16)
            self.head = nn.Linear(16, V)

        def forward(self, idx):
            y = self.wte(idx) * 2
            v = y[..., :16]
            y += 1
            return self.head(v + y)

    with pytest.raises(MonologueError, match=r"in-place add of a value read again afterwards \(%alias, a view.* "
                                             r"at fx node %add_"):
        compiled(CausalLMLogits(Aliased().eval(), S))


class OneLayer(nn.Module):
    """An embedding for a refusal's one construct to act on."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 8)


class NotCausal(OneLayer):
    def forward(self, idx):
        x = self.emb(idx)[:, None]
        T = idx.shape[1]
        band = torch.ones(T, T).tril(1).bool()  # sees one future token
        return F.scaled_dot_product_attention(x, x, x, attn_mask=band)[:, 0]


class SparseMoE(OneLayer):
    """A hand-written mixture of experts that runs each expert on the rows routed to it: the rows are
    found with torch.where, a data-dependent shape no length-generic graph holds."""

    def __init__(self):
        super().__init__()
        self.router, self.head = nn.Linear(8, 4), nn.Linear(8, V)
        self.experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))

    def forward(self, idx):
        x = self.emb(idx)[0]
        top = self.router(x).topk(2).indices
        out = x * 0
        for e, expert in enumerate(self.experts):
            rows, _ = torch.where(top == e)
            out = out.index_add(0, rows, expert(x[rows]))
        return self.head(out)[None]


class SmallestK(OneLayer):
    def forward(self, idx):
        return self.emb(idx).topk(2, largest=False).values @ self.emb.weight[:, :2].T


def test_moe_without_a_dense_form_and_bottom_k_are_refused_by_name():
    with pytest.raises(MonologueError, match=r"unsupported op aten.where.default at fx node %where "
                                             r"\(test_hf_models.py:\d+ rows, _ = torch.where\(top == e\)\)"):
        compiled(CausalLMLogits(SparseMoE().eval(), S))
    with pytest.raises(MonologueError, match=r"topk of the smallest values .* at fx node %topk \(test_hf_models.py"):
        compiled(CausalLMLogits(SmallestK().eval(), S))


class Conv(OneLayer):
    """A depthwise conv1d over the sequence: `padding` and which T outputs are kept decide whether it
    looks ahead."""

    def __init__(self, padding: int, keep: slice):
        super().__init__()
        self.conv, self.keep = nn.Conv1d(8, 8, 3, padding=padding, groups=8), keep

    def forward(self, idx):
        return self.conv(self.emb(idx).transpose(1, 2))[..., self.keep].transpose(1, 2) @ self.emb.weight.T


def test_a_convolution_that_sees_later_tokens_is_refused_by_name():
    """Only conv1d(padding K - 1)[..., :T] is causal; a centered conv or the last T outputs read ahead."""
    model = CausalLMLogits(Conv(2, slice(None, -2)).eval(), S)  # causal: compiles, and matches
    x = ids(12)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    assert np.abs(Session(compiled(model)).forward(x) - ref).max() < 1e-5
    with pytest.raises(MonologueError, match=r"a conv1d other than a causal depthwise one .* at fx node %conv1d "):
        compiled(CausalLMLogits(Conv(1, slice(None)).eval(), S))
    with pytest.raises(MonologueError, match=r"a slice of conv1d's output other than its first T positions"):
        compiled(CausalLMLogits(Conv(2, slice(2, None)).eval(), S))


class HalfWritten(OneLayer):
    """A buffer from new_empty read with only part of it written (the rest is whatever memory held)."""

    def forward(self, idx):
        x = self.emb(idx)
        buf = x.new_empty(*x.shape[:-1], 16)
        buf[..., :8].copy_(x)
        return buf[..., :8] @ self.emb.weight.T


def test_a_new_empty_tensor_read_before_it_is_written_whole_is_refused_by_name():
    with pytest.raises(MonologueError, match=r"%new_empty \(new_empty\) is read before copies into it cover it once"):
        compiled(CausalLMLogits(HalfWritten().eval(), S))


class Tiled(OneLayer):
    """DiffLlama's `v.repeat(1, 2, 1, 1)` and its `exp(sum(lambda_q * lambda_k))` of parameters alone
    (folded at compile time), Beam's `view_as`, DeepSeek-V4's `unbind`, Zaya's mean over an inner axis
    without keepdim and a mean over two axes."""

    def __init__(self):
        super().__init__()
        self.lam = nn.Parameter(torch.randn(2, 8) / 4)
        self.scales = nn.Parameter(torch.rand(3, 8) + 0.5)

    def forward(self, idx):
        x = self.emb(idx)  # (B, T, 8)
        heads = x.view(*x.shape[:2], 2, 4)
        tiled = heads.repeat(1, 1, 2, 1)  # (B, T, 4, 4)
        lam = torch.exp(torch.sum(self.lam[0] * self.lam[1], dim=-1))
        pre, post, comb = self.scales.unbind(0)
        mixed = tiled.mean(dim=-2) * lam + heads.mean(dim=(-2, -1), keepdim=True).view(*x.shape[:2], 1)
        y = torch.cat([mixed, mixed], dim=-1).view_as(x) * pre + x * post
        return (y * comb) @ self.emb.weight.T


def test_repeat_unbind_view_as_and_means_over_axes_lower_and_match():
    model = CausalLMLogits(Tiled().eval(), S)
    g = compiled(model)
    # exp of a sum (a view) of parameters is folded at compile time: the runtimes run no op on weights alone
    assert not any("exp" in str(n.attrs) for n in g.nodes)
    x = ids(12)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    assert np.abs(Session(g).forward(x) - ref).max() / np.abs(ref).max() <= 1e-5


class TiledAlongT(OneLayer):
    def forward(self, idx):
        return self.emb(idx).repeat(1, 2, 1)[:, ::2] @ self.emb.weight.T


def test_a_repeat_along_the_sequence_is_refused_by_name():
    with pytest.raises(MonologueError, match=r"a repeat along the sequence axis .* at fx node %repeat \(test_hf_models"):
        compiled(CausalLMLogits(TiledAlongT().eval(), S))


class TimesMask(OneLayer):
    """Attention masked the way GPT-1 and ports of OpenAI's GPT-2 code do: scores times a tril buffer,
    plus a large negative fill where it is 0; k.T made by one permute of (B, T, H, D)."""

    def __init__(self, fill: float | None):
        super().__init__()
        self.fill = fill
        self.register_buffer("bias", torch.tril(torch.ones(S, S)).view(1, 1, S, S))

    def forward(self, idx):
        x = self.emb(idx)
        B, T, C = x.shape
        q, k = x.view(B, T, 2, 4).permute(0, 2, 1, 3), x.view(B, T, 2, 4).permute(0, 2, 3, 1)
        b = self.bias[:, :, :T, :T]
        w = (q @ k) / 2.0 * b
        if self.fill is not None:
            w = w + self.fill * (1 - b)
        y = F.softmax(w, dim=-1) @ q
        return y.transpose(1, 2).reshape(B, T, C) @ self.emb.weight.T


@pytest.mark.parametrize("fill", [-1e4, -1e10])
def test_scores_times_a_causal_mask_plus_a_fill_are_causal_attention(fill):
    model = CausalLMLogits(TimesMask(fill).eval(), S)
    g = compiled(model)
    assert [n.attrs["window"] for n in g.nodes if n.op == "attention"] == [0]
    x = ids(12)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    assert np.abs(Session(g).forward(x) - ref).max() / np.abs(ref).max() <= 1e-5


def test_scores_times_a_mask_with_no_fill_are_refused_by_name():
    with pytest.raises(MonologueError, match="multiplied by a mask with no fill added"):
        compiled(CausalLMLogits(TimesMask(None).eval(), S))


def _gates(g) -> dict[str, str | None]:
    """Each matmul's weight -> the value its gate reads (None: every row computed)."""
    return {n.inputs[1]: None if n.attrs.get("gate") is None else n.inputs[2 + n.attrs["gate"]]
            for n in g.nodes if n.op == "matmul"}


def test_each_expert_skips_the_tokens_its_router_did_not_pick():
    """An expert's matmuls take its routing weight as their gate (a row whose weight is 0 is not
    computed); the router and attention run on every row, and experts no longer merge."""
    model = build_model("qwen3_moe", "sdpa")
    g = compiled(model)
    gates = _gates(g)
    experts = {w: gate for w, gate in gates.items() if ".experts." in w}
    assert len(experts) == 2 * 2 * 4  # gate_up and down of 4 experts in 2 layers, none merged
    for layer in range(2):
        for e in range(4):
            up, down = (f"model.model.layers.{layer}.mlp.experts.{p}[{e}]" for p in ("gate_up_proj", "down_proj"))
            assert experts[up] is not None and experts[up] == experts[down]
    assert len(set(experts.values())) == 2 * 4  # one routing weight per expert and layer
    assert all(gate is None for w, gate in gates.items() if ".experts." not in w)
    x = ids(24)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    s = Session(g)
    assert np.abs(s.forward(x) - ref).max() / np.abs(ref).max() <= 1e-5


class GatedByHand(OneLayer):
    """Outputs times one value per token: an MLP (gated), one divided by its own rows, one through
    attention (neither gated: 0 in a row would divide by 0; a row is not its own), and one times a
    value of the position alone (Llama 4's query temperature: a table, no expert's weight)."""

    def __init__(self):
        super().__init__()
        self.up, self.down, self.div, self.mix, self.temp = (nn.Linear(8, 8) for _ in range(5))

    def forward(self, idx):
        x = self.emb(idx)
        w = torch.relu(x[..., :1])  # 0 on about half the tokens
        mlp = self.down(F.silu(self.up(x))) * w
        divided = x / (self.div(x).abs() + 1) * w
        h = self.mix(x)[:, None]
        mixed = F.scaled_dot_product_attention(h, h, h, is_causal=True)[:, 0] * w
        scale = torch.log1p(torch.arange(idx.shape[1], device=idx.device) + 1.0)[None, :, None]
        tempered = self.temp(x) * scale + self.temp(x.relu()) * scale  # the second after the table's lookup
        return (x + mlp + divided + mixed + tempered) @ self.emb.weight.T


def test_only_per_token_finite_work_on_the_way_to_a_gate_is_skipped():
    model = CausalLMLogits(GatedByHand().eval(), S)
    g = compiled(model)
    gated = {w.split(".")[1] for w, gate in _gates(g).items() if gate is not None}
    assert gated == {"up", "down"}
    x = ids(12)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    assert np.abs(Session(g).forward(x) - ref).max() / np.abs(ref).max() <= 1e-5


def test_expert_weights_cut_from_stacked_parameters_are_put_back_for_r_q():
    """Each expert's W[e] is a weight of its own in the IR (quantized on its own); R_q's stacked
    (E, N, K) parameters are those quantized slices put back, so parity measures the IR's weights."""
    model = build_model("qwen3_moe", "sdpa")
    g = compiled(model, "int8")
    views = g.meta["weight_views"]
    stacked = {v["of"] for v in views.values()}
    assert len(views) == 2 * 2 * 4 and len(stacked) == 2 * 2  # gate_up and down of 4 experts, 2 layers
    sd = rq_state_dict(g)
    params = dict(model.named_parameters())
    for name in stacked:
        original = params[name].detach()
        assert sd[name].shape == original.shape
        err = (sd[name] - original).abs().max() / original.abs().max()
        assert 0 < err < 0.02, f"{name}: R_q's experts are not the int8 ones ({err})"
    assert not set(views) & set(sd)


class StackedTransposed(OneLayer):
    """Experts stored (E, K, N) and applied as x @ W[e] (GPT-OSS's layout), the scatter_ of a router."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 8, 8) / 3)

    def forward(self, idx):
        x = self.emb(idx)
        pick = torch.zeros_like(x).scatter_(-1, x.topk(2).indices, 1.0)  # the mask, read after scatter_
        return (x @ self.w[0] + (x * pick) @ self.w[1] + x @ self.w[2]) @ self.emb.weight.T


def test_a_product_with_one_slice_of_a_stacked_parameter_is_a_linear_and_r_q_gets_it_back():
    model = CausalLMLogits(StackedTransposed().eval(), S)
    g = compiled(model, "int8")
    assert {k: (v["of"], v["offset"], v["strides"]) for k, v in g.meta["weight_views"].items()} == {
        f"model.w[{e}].T": ("model.w", 64 * e, [1, 8]) for e in range(3)}  # each slice, read transposed
    sd = rq_state_dict(g)
    err = (sd["model.w"] - model.model.w.detach()).abs().max() / model.model.w.abs().max()
    assert 0 < err < 0.02  # the int8 slices, put back transposed
    x = ids(12)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    g32 = compiled(model)
    assert np.abs(Session(g32).forward(x) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_a_mask_that_is_not_causal_is_refused_with_its_node():
    with pytest.raises(MonologueError, match=r"attention mask at fx node %\w+ is not causal"):
        lower(trace(NotCausal(), S))


class CappedAfterTheMask(OneLayer):
    """Gemma 2's softcap written after the mask: tanh(-inf) = -1 lets every future key back in."""

    def forward(self, idx):
        x = self.emb(idx)[:, None]
        T = idx.shape[1]
        s = (x @ x.transpose(-2, -1)).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        return (torch.tanh(s / 2.0) * 2.0).softmax(-1) @ x


class LearnedBias(OneLayer):
    """A learned (T, T) bias on the scores (T5-style relative positions would be one): not ALiBi."""

    def __init__(self):
        super().__init__()
        self.register_buffer("bias", torch.randn(S, S))

    def forward(self, idx):
        x = self.emb(idx)[:, None]
        T = idx.shape[1]
        s = x @ x.transpose(-2, -1) + self.bias[:T, :T]
        return s.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1) @ x


class Branchy(OneLayer):
    """A branch on a value computed from the tokens: what no single traced graph can hold."""

    def forward(self, idx):
        x = self.emb(idx)
        if x.sum() > 0:
            return x * 2
        return x


def test_an_untraceable_branch_is_one_line_naming_its_source_line(capfd):
    """torch.export prints the partial graph of a failed trace to stderr itself (a hundred lines on a
    real model): it is held back, and the error names the line of the model's code."""
    with pytest.raises(MonologueError, match=r"torch.export could not trace the model: .*\(at test_hf_models.py:\d+: "
                                             r"if x.sum\(\) > 0:\)"):
        trace(Branchy(), S)
    assert "def forward" not in capfd.readouterr().err


class WindowedAlibi(OneLayer):
    """ALiBi and a sliding window in one -inf mask given to SDPA (the window's -inf in the last row too)."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, idx):
        T = idx.shape[1]
        q, k, v = (t.view(1, T, 2, 4).transpose(1, 2) for t in self.qkv(self.emb(idx)).split(8, dim=-1))
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        bias = torch.tensor([0.5, 0.25])[:, None, None] * j.float()
        bias = bias.masked_fill(~((j <= i) & (j > i - 5)), float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None]).transpose(1, 2).reshape(1, T, 8)


def test_alibi_and_a_window_in_one_mask_are_both_proven():
    torch.manual_seed(6)
    model = CausalLMLogits(WindowedAlibi().eval(), S)
    g = compiled(model)
    assert [(n.attrs["alibi"], n.attrs["window"]) for n in g.nodes if n.op == "attention"] == [([0.5, 0.25], 5)]
    x = ids(20)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    assert np.abs(Session(g).forward(x) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_a_bias_that_is_not_alibi_is_refused_with_its_node():
    with pytest.raises(MonologueError, match=r"attention bias at fx node %\w+ is not linear in the key position"):
        lower(trace(LearnedBias(), S))


def test_a_softcap_after_the_mask_is_refused_with_its_node():
    with pytest.raises(MonologueError, match=r"tanh of attention scores after a mask.* at fx node %tanh"):
        lower(trace(CappedAfterTheMask(), S))


# --- the Python API ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["nanogpt", "qwen3"])
def test_python_api_compiles_a_module_at_int8_within_parity_of_r_q(family, tmp_path):
    """`monologue_compile.compile(model, tokenizer, out_dir)` with --verify's checks: int8 logits and
    greedy tokens vs R_q (the model with the dequantized weights), decode vs prefill."""
    import monologue_compile

    model = build_model(family, "sdpa").model
    out = tmp_path / "dist"
    manifest = monologue_compile.compile(model, None, out, verify=True)
    report = json.loads((out / "parity.json").read_text())
    assert report["ok"], {k: v for k, v in report["checks"].items() if not v["ok"]}
    assert manifest["model"]["quant"] == "int8" and manifest["model"]["source"]["kind"] == "module"


def test_cli_model_code_builds_the_users_class_and_verifies_against_it(tmp_path):
    """`--model-code file.py:Name`: nanoGPT's ckpt.pt layout ({"model", "model_args"}) with the user's
    class; --verify compares the compiled model with that class's forward."""
    from pathlib import Path

    code = tmp_path / "mymodel.py"
    code.write_text(f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                    "from test_hf_models import NanoGPT\n")
    model = randomized(NanoGPT(n_embd=16, n_head=2, n_layer=1), 7)
    torch.save({"model": model.state_dict(), "model_args": {"n_embd": 16, "n_head": 2, "n_layer": 1}},
               tmp_path / "ckpt.pt")
    out = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(tmp_path / "ckpt.pt"), "-o", str(out),
                        "--model-code", f"{code}:NanoGPT", "--verify", "--no-wasm"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "parity.json").read_text())
    assert report["ok"] and report["checks"]["vs_fp32"]["top1_agreement"] >= 0.9
