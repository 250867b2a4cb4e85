"""Every GPTConfig knob, checked against an independent, loop-by-loop reference forward."""

import math

import pytest
import torch

from monologue_compile.models.gpt import GPT, GPTConfig

EPS = torch.finfo(torch.float32).eps


# Tiny models run fastest on one thread, and much faster when other jobs share the cores.
pytestmark = pytest.mark.usefixtures("torch_single_thread")


def reference_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The nanochat forward written out by hand: one head at a time, explicit RoPE and softmax."""
    cfg = model.config
    sd = model.state_dict()
    D = cfg.head_dim

    def rms(x):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS)

    def act(x):
        return {"relu2": torch.relu(x) ** 2, "gelu": torch.nn.functional.gelu(x), "silu": x * torch.sigmoid(x)}[cfg.activation]

    def rope(x, t):  # x: (D,) at absolute position t; rotation by -theta, half-split
        half = D // 2
        out = torch.empty_like(x)
        for i in range(half):
            theta = t / cfg.rope_theta ** (2 * i / D)
            c, s = math.cos(theta), math.sin(theta)
            out[i] = x[i] * c + x[i + half] * s
            out[i + half] = -x[i] * s + x[i + half] * c
        return out

    T = idx.size(1)
    x = rms(sd["transformer.wte.weight"][idx[0]])
    group = cfg.n_head // cfg.n_kv_head
    for layer in range(cfg.n_layer):
        p = f"transformer.h.{layer}."
        h = rms(x)
        q = (h @ sd[p + "attn.c_q.weight"].T).view(T, cfg.n_head, D)
        k = (h @ sd[p + "attn.c_k.weight"].T).view(T, cfg.n_kv_head, D)
        v = (h @ sd[p + "attn.c_v.weight"].T).view(T, cfg.n_kv_head, D)
        heads = []
        for head in range(cfg.n_head):
            kv = head // group  # GQA: query head h reads KV head h // (n_head / n_kv_head)
            qs = torch.stack([rope(q[t, head], t) for t in range(T)])
            ks = torch.stack([rope(k[t, kv], t) for t in range(T)])
            if cfg.qk_norm:
                qs, ks = rms(qs), rms(ks)
            scores = qs @ ks.T / math.sqrt(D)
            scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
            heads.append(torch.softmax(scores, -1) @ v[:, kv])
        x = x + torch.cat(heads, -1) @ sd[p + "attn.c_proj.weight"].T
        x = x + act(rms(x) @ sd[p + "mlp.c_fc.weight"].T) @ sd[p + "mlp.c_proj.weight"].T
    logits = rms(x) @ sd["lm_head.weight"].T
    if cfg.softcap:
        logits = cfg.softcap * torch.tanh(logits / cfg.softcap)
    return logits[None]


BASE = dict(sequence_len=32, vocab_size=64, n_layer=2, n_head=4, n_kv_head=4, n_embd=32)
KNOBS = {
    "default": {},
    "tie_embeddings": {"tie_embeddings": True},
    "gqa": {"n_kv_head": 2},
    "mqa": {"n_kv_head": 1},
    "mlp_ratio": {"mlp_ratio": 2.5},
    "gelu": {"activation": "gelu"},
    "silu": {"activation": "silu"},
    "softcap_off": {"softcap": 0.0},
    "softcap_small": {"softcap": 2.0},
    "rope_theta": {"rope_theta": 500.0},
    "no_qk_norm": {"qk_norm": False},
    "sequence_len": {"sequence_len": 9},
}


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**BASE, **overrides})).init_weights(zero_init_outputs=False)
    return model.eval()


@pytest.mark.parametrize("knob", KNOBS)
def test_forward_matches_reference(knob):
    model = make_model(**KNOBS[knob])
    T = min(9, model.config.sequence_len)
    idx = torch.randint(0, model.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference_logits(model, idx), atol=2e-5, rtol=1e-4)


def test_tie_embeddings_shares_one_tensor():
    tied, untied = make_model(tie_embeddings=True), make_model()
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.num_params() - tied.num_params() == BASE["vocab_size"] * BASE["n_embd"]


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_n_kv_head_sets_kv_projection_width(n_kv_head):
    model = make_model(n_kv_head=n_kv_head)
    head_dim = BASE["n_embd"] // BASE["n_head"]
    assert model.transformer.h[0].attn.c_k.weight.shape == (n_kv_head * head_dim, BASE["n_embd"])
    assert model.transformer.h[0].attn.c_v.weight.shape == (n_kv_head * head_dim, BASE["n_embd"])


def test_mlp_ratio_sets_hidden_width():
    assert make_model(mlp_ratio=2.5).transformer.h[0].mlp.c_fc.weight.shape == (80, 32)


def test_softcap_bounds_logits_only_when_on():
    idx = torch.randint(0, 64, (1, 8))
    for softcap in (0.0, 2.0):
        model = make_model(softcap=softcap)
        with torch.no_grad():
            model.lm_head.weight.mul_(50)  # push raw logits far past the cap
            peak = model(idx).abs().max().item()
        assert (peak <= 2.0) if softcap else (peak > 2.0)


def test_rope_theta_and_qk_norm_change_the_function():
    idx = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        base = make_model()(idx)
        assert not torch.allclose(base, make_model(rope_theta=500.0)(idx))
        assert not torch.allclose(base, make_model(qk_norm=False)(idx))


def test_sequence_len_is_the_context_limit():
    model = make_model(sequence_len=9)
    assert model.cos.shape[1] == 9
    with pytest.raises(ValueError, match="sequence_len"):
        model.generate(list(range(9)), 1)


@pytest.mark.parametrize("bad", [dict(n_kv_head=3), dict(activation="tanh"), dict(softcap=-1.0), dict(n_embd=30)])
def test_invalid_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        GPTConfig(**{**BASE, **bad})


def test_config_round_trips_through_dict():
    cfg = GPTConfig(**{**BASE, "activation": "silu", "tie_embeddings": True})
    assert GPTConfig.from_dict({**cfg.to_dict(), "unknown_future_field": 1}) == cfg


def test_state_dict_uses_nanochat_names():
    names = set(make_model(n_layer=1).state_dict())
    assert names == {
        "transformer.wte.weight", "lm_head.weight",
        *(f"transformer.h.0.attn.{n}.weight" for n in ("c_q", "c_k", "c_v", "c_proj")),
        "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight",
    }
