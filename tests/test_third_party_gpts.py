"""Hand-written GPTs from other projects, their model file and ckpt.pt compiled unmodified with
`--model-code model.py:Name`.

MODEL_PY follows nanoGPT's model.py where the compiler meets it: `GPT(config)` takes a GPTConfig
dataclass (train.py builds `GPT(GPTConfig(**model_args))`), forward(idx, targets=None) returns
(logits, loss) with `lm_head(x[:, [-1], :])` (the last position only) when there are no targets,
and attention is SDPA or, without it, a `tril` buffer of block_size rows sliced to `[:T, :T]`.
ckpt.pt is train.py's: {"model" (torch.compile's `_orig_mod.` prefix), "model_args", "optimizer",
"iter_num", "best_val_loss", "config"}; its tokenizer, shakespeare_char's meta.pkl (a char vocabulary).

LLAMA2C_PY follows llama2.c's model.py likewise: `Transformer(params: ModelArgs)`, the length as
`max_seq_len`, RoPE on (real, imaginary) pairs split by reshape + unbind and put back by stack +
flatten, grouped KV heads by expand + reshape, and a forward that returns the last position's
logits alone (no tuple); its rotary tables are buffers the checkpoint does not hold.
"""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

MODEL_PY = '''
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


class LayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.flash = hasattr(torch.nn.functional, "scaled_dot_product_attention") and not config.slow
        if not self.flash:
            self.register_buffer("bias", torch.tril(torch.ones(config.block_size, config.block_size))
                                 .view(1, 1, config.block_size, config.block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                               dropout_p=self.dropout if self.training else 0, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    slow: bool = False


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.config.block_size, f"Cannot forward sequence of length {t}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])  # the last position only
            loss = None
        return logits, loss
'''


# the 65 chars of nanoGPT's shakespeare_char, whose meta.pkl is {"vocab_size", "itos", "stoi"}
SHAKESPEARE_CHARS = "\n !$&',-.3:;?" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz"
assert len(SHAKESPEARE_CHARS) == 65


def _model_file(tmp_path, source: str):
    """`source` written to tmp_path/model.py, and imported from there (a fresh import each time)."""
    import importlib

    (tmp_path / "model.py").write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.reload(importlib.import_module("model"))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("model", None)


def _nanogpt(tmp_path, slow: bool, seed: int = 0):
    """model.py and a trained-looking ckpt.pt (random weights, scaled so the logits are not flat)."""
    model_py = _model_file(tmp_path, MODEL_PY)
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, bias=True, vocab_size=65, dropout=0.0)
    if slow:
        args["slow"] = True
    torch.manual_seed(seed)
    model = model_py.GPT(model_py.GPTConfig(**args))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.5 if "wte" in name or "wpe" in name else 0.2)
    ckpt = {"model": {"_orig_mod." + k: v for k, v in model.state_dict().items()}, "model_args": args,
            "optimizer": torch.optim.AdamW(model.parameters()).state_dict(), "iter_num": 5000,
            "best_val_loss": torch.tensor(1.47), "config": {"dataset": "shakespeare_char", "batch_size": 64}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    return model


def _compile(tmp_path, *extra):
    return subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(tmp_path / "ckpt.pt"),
                           "-o", str(tmp_path / "dist"), "--model-code", f"{tmp_path / 'model.py'}:GPT", *extra],
                          capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("attention", ["sdpa", "tril_buffer"])
def test_nanogpt_checkpoint_compiles_unmodified_and_matches_on_every_backend(tmp_path, attention):
    """GPT(GPTConfig(**model_args)) is built from the file's dataclass, the last-position selection is
    dropped (the summary names it), and every backend the dist ships matches the model's own logits."""
    model = _nanogpt(tmp_path, slow=attention == "tril_buffer").eval()
    itos = dict(enumerate(SHAKESPEARE_CHARS))
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 65, "itos": itos,
                                                      "stoi": {c: i for i, c in itos.items()}}))
    r = _compile(tmp_path, "--verify", "--tokenizer", str(tmp_path / "meta.pkl"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "last position only" in r.stderr and "model.py:" in r.stderr and "x[:, [-1], :]" in r.stderr
    report = json.loads((tmp_path / "dist" / "parity.json").read_text())
    assert report["ok"], {k: v for k, v in report["checks"].items() if not v["ok"]}
    assert {b for b, v in report["backends"].items() if v["status"] == "pass"} >= {"numpy", "native", "wgpu-cpu"}
    assert report["checks"]["greedy_vs_rq"]["steps"] > 40 and report["checks"]["vs_fp32"]["top1_agreement"] >= 0.9
    manifest = json.loads((tmp_path / "dist" / "model" / "manifest.json").read_text())
    assert "x[:, [-1], :]" in manifest["model"]["source"]["last_position_only"]
    assert manifest["chat"]["continues_text"] and manifest["chat"]["stop"] == []

    # the chat continues the text char by char, as the model's own greedy sampling does
    prompt = [SHAKESPEARE_CHARS.index(c) for c in "ROMEO:"]
    want: list[int] = []
    with torch.no_grad():
        for _ in range(12):
            want.append(int(model(torch.tensor([prompt + want]))[0][0, -1].argmax()))
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "chat", str(tmp_path / "dist"), "--backend",
                        "native", "--prompt", "ROMEO:", "--max-tokens", "12"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    shown = r.stdout.split("continued: ", 1)[1].split("(reached --max-tokens")[0]
    assert shown.strip() == "".join(SHAKESPEARE_CHARS[i] for i in want).strip()

    # `monologue verify` rebuilds the reference only with the model's code, and says how
    verify = [sys.executable, "-m", "monologue_compile", "verify", str(tmp_path / "dist")]
    r = subprocess.run(verify, capture_output=True, text=True, timeout=900)
    assert r.returncode == 2 and "--checkpoint ckpt.pt --model-code model.py:GPT" in r.stderr
    r = subprocess.run(verify + ["--checkpoint", str(tmp_path / "ckpt.pt"), "--model-code",
                                 f"{tmp_path / 'model.py'}:GPT"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "| native | native_greedy_vs_rq |" in r.stdout, r.stderr[-2000:]


def test_the_compiled_graph_gives_every_position_the_model_gives_the_last(tmp_path):
    """The Python API on the module itself: the graph's logits at each position equal the model's
    output for the prefix ending there."""
    import numpy as np

    from monologue_compile.frontend.module import from_module
    from monologue_compile.interpreter import Session
    from monologue_compile.lower import lower
    from monologue_compile.frontend.trace import trace

    model = _nanogpt(tmp_path, slow=False).eval()
    loaded = from_module(model)
    wrapper = loaded.build_module()
    g = lower(trace(wrapper, 64))
    ids = torch.randint(0, 65, (12,), generator=torch.Generator().manual_seed(3))
    got = Session(g).forward(ids.numpy())
    with torch.no_grad():
        want = np.stack([model(ids[None, : i + 1])[0][0, -1].numpy() for i in range(12)])
    assert got.shape == (12, 65)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


MIXING = MODEL_PY.replace("logits = self.lm_head(x[:, [-1], :])  # the last position only",
                          "logits = self.lm_head(x[:, [-1], :].cumsum(1))")


def test_a_last_position_selection_followed_by_mixing_positions_is_refused(tmp_path):
    """Dropping the selection must leave the model's output at the last position: here what follows
    sums along the sequence, so it would not, and the compile stops naming the node and line."""
    _nanogpt(tmp_path, slow=False)
    (tmp_path / "model.py").write_text(MIXING)
    r = _compile(tmp_path, "--no-wasm")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "last position only" in r.stderr and "mixes positions" in r.stderr and "model.py:" in r.stderr
    assert not (tmp_path / "dist").exists()


def test_a_config_object_no_class_in_the_file_takes_is_refused_by_name(tmp_path):
    _nanogpt(tmp_path, slow=False)
    (tmp_path / "model.py").write_text(MODEL_PY.replace("    slow: bool = False\n", "").replace(
        "and not config.slow", "and not getattr(config, 'slow', False)"))
    args = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    args["model_args"]["rope_theta"] = 10000.0
    torch.save(args, tmp_path / "ckpt.pt")
    r = _compile(tmp_path, "--no-wasm")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "GPT(config) takes a config object" in r.stderr and "rope_theta" in r.stderr and "none was found" in r.stderr


def test_model_code_imports_modules_beside_it(tmp_path):
    """`from model import GPT` in a file beside model.py works as `python file.py` would have it."""
    _nanogpt(tmp_path, slow=False)
    (tmp_path / "build.py").write_text("from model import GPT, GPTConfig\n\n\n"
                                       "def make(**args):\n    return GPT(GPTConfig(**args))\n")
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(tmp_path / "ckpt.pt"),
                        "-o", str(tmp_path / "dist"), "--model-code", f"{tmp_path / 'build.py'}:make", "--no-wasm"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]


LLAMA2C_PY = '''
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None
    vocab_size: int = 32000
    multiple_of: int = 256
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    dropout: float = 0.0


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def apply_rotary_emb(xq, xk, freqs_cos, freqs_sin):
    xq_r, xq_i = xq.float().reshape(xq.shape[:-1] + (-1, 2)).unbind(-1)
    xk_r, xk_i = xk.float().reshape(xk.shape[:-1] + (-1, 2)).unbind(-1)
    shape = [d if i == 1 or i == xq_r.ndim - 1 else 1 for i, d in enumerate(xq_r.shape)]
    freqs_cos, freqs_sin = freqs_cos.view(shape), freqs_sin.view(shape)
    xq_out = torch.stack([xq_r * freqs_cos - xq_i * freqs_sin, xq_r * freqs_sin + xq_i * freqs_cos], dim=-1).flatten(3)
    xk_out = torch.stack([xk_r * freqs_cos - xk_i * freqs_sin, xk_r * freqs_sin + xk_i * freqs_cos], dim=-1).flatten(3)
    return xq_out.type_as(xq), xk_out.type_as(xk)


def repeat_kv(x, n_rep):
    bs, slen, n_kv_heads, head_dim = x.shape
    if n_rep == 1:
        return x
    return x[:, :, :, None, :].expand(bs, slen, n_kv_heads, n_rep, head_dim).reshape(bs, slen, n_kv_heads * n_rep, head_dim)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_kv_heads = args.n_heads if args.n_kv_heads is None else args.n_kv_heads
        self.n_heads, self.n_rep, self.head_dim = args.n_heads, args.n_heads // self.n_kv_heads, args.dim // args.n_heads
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x, freqs_cos, freqs_sin):
        bsz, seqlen, _ = x.shape
        xq = self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim)
        xk = self.wk(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        xv = self.wv(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        xq, xk = apply_rotary_emb(xq, xk, freqs_cos, freqs_sin)
        xk, xv = repeat_kv(xk, self.n_rep), repeat_kv(xv, self.n_rep)
        out = F.scaled_dot_product_attention(xq.transpose(1, 2), xk.transpose(1, 2), xv.transpose(1, 2), is_causal=True)
        return self.wo(out.transpose(1, 2).contiguous().view(bsz, seqlen, -1))


class FeedForward(nn.Module):
    def __init__(self, dim, multiple_of):
        super().__init__()
        hidden_dim = multiple_of * ((int(2 * 4 * dim / 3) + multiple_of - 1) // multiple_of)
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, layer_id, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.multiple_of)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, freqs_cos, freqs_sin):
        h = x + self.attention(self.attention_norm(x), freqs_cos, freqs_sin)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, params: ModelArgs):
        super().__init__()
        self.params = params
        self.tok_embeddings = nn.Embedding(params.vocab_size, params.dim)
        self.layers = nn.ModuleList([TransformerBlock(i, params) for i in range(params.n_layers)])
        self.norm = RMSNorm(params.dim, eps=params.norm_eps)
        self.output = nn.Linear(params.dim, params.vocab_size, bias=False)
        self.tok_embeddings.weight = self.output.weight
        head = params.dim // params.n_heads
        freqs = 1.0 / (10000.0 ** (torch.arange(0, head, 2)[: head // 2].float() / head))
        freqs = torch.outer(torch.arange(params.max_seq_len), freqs).float()
        self.register_buffer("freqs_cos", torch.cos(freqs), persistent=False)
        self.register_buffer("freqs_sin", torch.sin(freqs), persistent=False)

    def forward(self, tokens, targets=None):
        _bsz, seqlen = tokens.shape
        h = self.tok_embeddings(tokens)
        freqs_cos, freqs_sin = self.freqs_cos[:seqlen], self.freqs_sin[:seqlen]
        for layer in self.layers:
            h = layer(h, freqs_cos, freqs_sin)
        h = self.norm(h)
        if targets is not None:
            return self.output(h)
        return self.output(h[:, [-1], :])
'''


def test_llama2c_checkpoint_compiles_unmodified_and_matches_on_every_backend(tmp_path):
    """Transformer(ModelArgs(**model_args)) through the parameter's annotation, max_seq_len read from
    model.params, and every backend the dist ships matches. With a SentencePiece
    tok.model trained as llama2.c trains one and no chat template, `monologue chat` continues the
    text (after `<s>`): PyTorch's greedy tokens."""
    from test_tokenizer_hf import train_sentencepiece

    from monologue_compile.tokenizer import Tokenizer

    stories = ["Once upon a time, there was a little girl named Lily. She liked to play in the sun with her dog 3 times.",
               "One day, a big bird came to the park. It said hello! Lily was happy and they played all day."] * 20
    sp_model = train_sentencepiece(tmp_path, stories, vocab_size=320)
    tok = Tokenizer.load(sp_model)

    model_py = _model_file(tmp_path, LLAMA2C_PY)
    args = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size, multiple_of=32, max_seq_len=64,
                dropout=0.0)
    torch.manual_seed(1)
    model = model_py.Transformer(model_py.ModelArgs(**args))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.5 if "emb" in name else 0.15)
    torch.save({"model": model.state_dict(), "model_args": args, "iter_num": 1, "best_val_loss": 2.0, "config": {}},
               tmp_path / "ckpt.pt")
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(tmp_path / "ckpt.pt"), "-o", str(dist),
                        "--model-code", f"{tmp_path / 'model.py'}:Transformer", "--verify", "--tokenizer", str(sp_model)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "self.output(h[:, [-1], :])" in r.stderr
    report = json.loads((dist / "parity.json").read_text())
    assert report["ok"], {k: v for k, v in report["checks"].items() if not v["ok"]}
    manifest = json.loads((dist / "model" / "manifest.json").read_text())
    assert manifest["model"]["config"]["sequence_len"] == 64
    assert manifest["chat"]["continues_text"] and "the model continues the text" in r.stderr

    prompt = tok.render_for_completion([{"role": "user", "content": "Once upon a time"}],
                                       template=manifest["chat"]["template"])
    assert prompt == [tok.special_tokens["<s>"]] + tok.encode("Once upon a time")
    want: list[int] = []
    with torch.no_grad():
        for _ in range(6):
            want.append(int(model(torch.tensor([prompt + want]))[0, -1].argmax()))
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "chat", str(dist), "--backend", "native",
                        "--prompt", "Once upon a time", "--max-tokens", "6"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "it continues your text" in r.stdout
    assert "continued: " + tok.decode(want).strip() in " ".join(r.stdout.split())


def test_a_checkpoint_that_does_not_fit_the_class_names_the_keys(tmp_path):
    _nanogpt(tmp_path, slow=False)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ckpt["model"]["extra.weight"] = ckpt["model"].pop("_orig_mod.transformer.ln_f.weight")
    torch.save(ckpt, tmp_path / "ckpt.pt")
    r = _compile(tmp_path, "--no-wasm")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "does not fit GPT: missing 1 (first: transformer.ln_f.weight); unexpected 1 (first: extra.weight)" in r.stderr


class InputIdsDictGPT(torch.nn.Module):
    """Hand-written code shaped like transformers': forward(input_ids) with no use_cache, a dict out,
    and its config a plain dict."""

    def __init__(self):
        super().__init__()
        self.config = {"vocab_size": 40, "max_seq_len": 24}
        self.wte, self.wpe = torch.nn.Embedding(40, 16), torch.nn.Embedding(24, 16)
        self.attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = torch.nn.Linear(16, 40)

    def forward(self, input_ids, attention_mask=None):
        t = input_ids.shape[1]
        x = self.wte(input_ids) + self.wpe(torch.arange(t))
        mask = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
        x = x + self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]
        return {"logits": self.head(torch.tanh(x))}


def test_forward_of_input_ids_returning_a_dict_with_a_dict_config():
    import numpy as np

    from monologue_compile.frontend.module import from_module
    from monologue_compile.interpreter import Session
    from monologue_compile.lower import lower
    from monologue_compile.frontend.trace import trace

    torch.manual_seed(2)
    model = InputIdsDictGPT().eval()
    loaded = from_module(model)
    assert loaded.config == {"sequence_len": 24, "vocab_size": 40}
    g = lower(trace(loaded.build_module(), 24))
    ids = torch.randint(0, 40, (1, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids)["logits"][0].numpy()
    got = Session(g).forward(ids[0].numpy())
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


class TorchBlocksGPT(torch.nn.Module):
    """The GPT of many tutorials: torch's own nn.TransformerEncoder layers (nn.MultiheadAttention
    with its packed in_proj, batch_first transposes and a square subsequent mask)."""

    def __init__(self, norm_first: bool, vocab=64, d=32, heads=4, layers=2, block_size=32):
        super().__init__()
        self.block_size = block_size
        self.tok, self.pos = torch.nn.Embedding(vocab, d), torch.nn.Embedding(block_size, d)
        layer = torch.nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=0.1, activation="gelu",
                                                 batch_first=True, norm_first=norm_first)
        self.blocks = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln, self.head = torch.nn.LayerNorm(d), torch.nn.Linear(d, vocab)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        mask = torch.nn.Transformer.generate_square_subsequent_mask(t, device=idx.device)
        return self.head(self.ln(self.blocks(x, mask=mask, is_causal=True)))


@pytest.mark.parametrize("norm_first", [True, False])
def test_a_gpt_of_torch_transformer_encoder_layers_matches_on_every_backend(tmp_path, norm_first):
    import monologue_compile

    torch.manual_seed(0)
    model = TorchBlocksGPT(norm_first)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    monologue_compile.compile(model, None, tmp_path / "dist", verify=True)
    report = json.loads((tmp_path / "dist" / "parity.json").read_text())
    assert report["ok"], {k: v for k, v in report["checks"].items() if not v["ok"]}
    assert {b for b, v in report["backends"].items() if v["status"] == "pass"} >= {"numpy", "native", "wgpu-cpu"}


class NeedsStartPos(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block_size, self.e = 16, torch.nn.Embedding(20, 8)

    def forward(self, tokens, start_pos):  # Meta's reference Llama's signature
        return self.e(tokens)


class ReturnsIds(NeedsStartPos):
    def forward(self, tokens):
        return tokens


@pytest.mark.parametrize("model, says", [(NeedsStartPos, "NeedsStartPos: its forward, called with token ids of shape "
                                                          r"\(1, 1\), raised TypeError: .*start_pos"),
                                         (ReturnsIds, r"ReturnsIds: its forward returned Tensor\(1, 1\), not logits")])
@pytest.mark.parametrize("states_its_length", [True, False])
def test_a_forward_that_does_not_take_ids_and_return_logits_is_refused_in_one_line(model, says, states_its_length):
    from monologue_compile.errors import MonologueError
    from monologue_compile.frontend.module import from_module

    m = model()
    if not states_its_length:  # then its length is looked for by running it, which must not hide why it fails
        del m.block_size
    with pytest.raises(MonologueError, match=says):
        from_module(m)


def test_a_checkpoint_holding_the_files_own_config_dataclass_loads(tmp_path):
    """build-nanogpt's train_gpt2.py saves {"model", "config": GPTConfig(...), "step", "val_loss"} from a
    script, so the pickle names `__main__.GPTConfig`. weights_only=True refuses any class; with
    --model-code, the dataclasses of the user's own file (and only those) are allowed under the names
    the pickle gives them, and the saved config builds the model. Its forward returns every position."""
    import __main__

    model_py = _model_file(tmp_path, MODEL_PY.replace("logits = self.lm_head(x[:, [-1], :])  # the last position only",
                                                      "logits = self.lm_head(x)"))
    config = model_py.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=40)
    model = model_py.GPT(config)
    import dataclasses

    # the class as the training script's __main__ had it
    saved_as = dataclasses.make_dataclass("GPTConfig", [(f.name, f.type, f.default) for f in dataclasses.fields(config)])
    saved_as.__module__ = "__main__"
    __main__.GPTConfig = saved_as
    try:
        torch.save({"model": model.state_dict(), "config": saved_as(**dataclasses.asdict(config)), "step": 10,
                    "val_loss": 3.2}, tmp_path / "ckpt.pt")
    finally:
        del __main__.GPTConfig
    r = _compile(tmp_path, "--no-wasm", "--verify")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "last position" not in r.stderr and json.loads((tmp_path / "dist" / "parity.json").read_text())["ok"]

    # a class the user's file does not define stays refused
    __main__.Other = type("Other", (), {"__module__": "__main__"})
    try:
        torch.save({"model": model.state_dict(), "config": __main__.Other()}, tmp_path / "ckpt.pt")
    finally:
        del __main__.Other
    r = _compile(tmp_path, "--no-wasm", "--force")
    assert r.returncode == 2 and "__main__.Other" in r.stderr and "weights_only" in r.stderr


class LastBy(torch.nn.Module):
    """A last-position selection written three ways (dropping the axis, or keeping it), after a
    per-token op; `mixer` puts an op the compiler does not cover before it."""

    def __init__(self, how: str, mixer=None):
        super().__init__()
        self.how, self.mixer, self.block_size = how, mixer, 16
        self.e, self.p, self.h = torch.nn.Embedding(30, 8), torch.nn.Embedding(16, 8), torch.nn.Linear(8, 30)

    def forward(self, idx):
        x = torch.sigmoid(self.e(idx) + self.p(torch.arange(idx.shape[1])))
        if self.mixer is not None:
            x = self.mixer(x)
        if self.how == "select":
            x = x[:, -1, :]
        elif self.how == "slice":
            x = x[:, -1:, :]
        else:
            x = x.narrow(1, x.shape[1] - 1, 1)
        return self.h(x)


@pytest.mark.parametrize("how", ["select", "slice", "narrow"])
def test_each_way_of_selecting_the_last_position_is_dropped_and_errors_still_name_the_users_line(how):
    import numpy as np

    from monologue_compile.errors import MonologueError
    from monologue_compile.frontend.module import from_module
    from monologue_compile.frontend.trace import trace
    from monologue_compile.interpreter import Session
    from monologue_compile.lower import lower

    torch.manual_seed(0)
    model = LastBy(how).eval()
    loaded = from_module(model)
    assert "test_third_party_gpts.py:" in loaded.source["last_position_only"]
    g = lower(trace(loaded.build_module(), 16))
    ids = torch.randint(0, 30, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = np.stack([model(ids[:, : i + 1]).reshape(-1, 30)[-1].numpy() for i in range(9)])
    assert np.abs(Session(g).forward(ids[0].numpy()) - want).max() <= 1e-5

    # the graph is traced again through its edited copy: an error names the user's line, not the copy's
    with pytest.raises(MonologueError, match=r"aten.cumsum.default at fx node %cumsum \(test_third_party_gpts.py:\d+"):
        lower(trace(from_module(LastBy(how, mixer=lambda x: torch.cumsum(x, 1))).build_module(), 16))


# the "Let's build GPT" lecture's gpt.py: hyperparameters as module globals, a model built with no
# arguments, heads as separate modules concatenated, forward(idx, targets=None) -> (logits, loss);
# its weights saved as torch.save(model.state_dict(), ...)
LECTURE_PY = '''
import torch
import torch.nn as nn
from torch.nn import functional as F

vocab_size = 65
block_size = 32
n_embd = 32
n_head = 4
n_layer = 2
dropout = 0.2


class Head(nn.Module):
    def __init__(self, head_size):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer('tril', torch.tril(torch.ones(block_size, block_size)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        k = self.key(x)
        q = self.query(x)
        wei = q @ k.transpose(-2, -1) * k.shape[-1]**-0.5
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float('-inf'))
        wei = F.softmax(wei, dim=-1)
        wei = self.dropout(wei)
        return wei @ self.value(x)


class MultiHeadAttention(nn.Module):
    def __init__(self, num_heads, head_size):
        super().__init__()
        self.heads = nn.ModuleList([Head(head_size) for _ in range(num_heads)])
        self.proj = nn.Linear(head_size * num_heads, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        out = torch.cat([h(x) for h in self.heads], dim=-1)
        return self.dropout(self.proj(out))


class FeedFoward(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.ReLU(), nn.Linear(4 * n_embd, n_embd),
                                 nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.sa = MultiHeadAttention(n_head, n_embd // n_head)
        self.ffwd = FeedFoward(n_embd)
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)

    def forward(self, x):
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class GPTLanguageModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.token_embedding_table = nn.Embedding(vocab_size, n_embd)
        self.position_embedding_table = nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[Block(n_embd, n_head=n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        tok_emb = self.token_embedding_table(idx)
        pos_emb = self.position_embedding_table(torch.arange(T, device=idx.device))
        x = tok_emb + pos_emb
        x = self.blocks(x)
        x = self.ln_f(x)
        logits = self.lm_head(x)
        if targets is None:
            loss = None
        else:
            B, T, C = logits.shape
            loss = F.cross_entropy(logits.view(B * T, C), targets.view(B * T))
        return logits, loss
'''


def test_the_lecture_gpt_compiles_from_its_state_dict_with_the_files_block_size(tmp_path):
    """GPTLanguageModel() takes no arguments and has no config: its length is the file's block_size."""
    lecture = _model_file(tmp_path, LECTURE_PY)
    torch.manual_seed(3)
    model = lecture.GPTLanguageModel()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(tmp_path / "model.pth"), "-o",
                        str(tmp_path / "dist"), "--model-code", f"{tmp_path / 'model.py'}:GPTLanguageModel",
                        "--quant", "none", "--no-wasm", "--verify"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((tmp_path / "dist" / "model" / "manifest.json").read_text())
    # block_size, less the last length where `tril[:T, :T]` of a block_size buffer makes export specialize it
    assert manifest["model"]["config"]["sequence_len"] in (31, 32)
    report = json.loads((tmp_path / "dist" / "parity.json").read_text())
    assert report["ok"], {k: v for k, v in report["checks"].items() if not v["ok"]}


# x-transformers' decoder as its README builds them: a library's GPT, not written here, unmodified
X_TRANSFORMERS = {
    "default": {},
    "llama-like": dict(rotary_pos_emb=True, use_rmsnorm=True, ff_swish=True, ff_glu=True, attn_kv_heads=2),
    "mqa-qk-norm": dict(attn_kv_heads=1, attn_qk_norm=True, rotary_pos_emb=True),
    "shift-tokens-relu2-scalenorm": dict(shift_tokens=1, ff_relu_squared=True, use_scalenorm=True),
    "macaron-sandwich": dict(macaron=True, sandwich_norm=True),
}


@pytest.mark.parametrize("name", X_TRANSFORMERS)
def test_x_transformers_decoders_lower_and_match_their_own_forward(name):
    x_transformers = pytest.importorskip("x_transformers")
    from conftest import lowered_matches

    torch.manual_seed(0)
    model = x_transformers.TransformerWrapper(num_tokens=64, max_seq_len=32, attn_layers=x_transformers.Decoder(
        dim=32, depth=2, heads=4, **X_TRANSFORMERS[name])).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    g = lowered_matches(model, 32, 64, T=11)
    assert [n.op for n in g.nodes].count("attention") == 2


def test_an_x_transformers_llama_matches_on_every_backend(tmp_path):
    x_transformers = pytest.importorskip("x_transformers")
    import monologue_compile

    torch.manual_seed(0)
    model = x_transformers.TransformerWrapper(num_tokens=64, max_seq_len=32, attn_layers=x_transformers.Decoder(
        dim=32, depth=2, heads=4, **X_TRANSFORMERS["llama-like"])).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    monologue_compile.compile(model, None, tmp_path / "dist", verify=True)
    report = json.loads((tmp_path / "dist" / "parity.json").read_text())
    assert report["ok"], {k: v for k, v in report["checks"].items() if not v["ok"]}
    assert {b for b, v in report["backends"].items() if v["status"] == "pass"} >= {"numpy", "native", "wgpu-cpu"}


# GPTs written from scratch as tutorials write them: each spelling below is one way a model states an
# op the compiler has under another name (a LayerNorm through var or std, GELU through erf, softmax
# written out, a mask added or subtracted as a large number, the embedding as indexing, positions
# counted from ones_like(ids), log-probs out, logits without their batch axis)
def _layer_norm_var(m, x):
    return m.g * (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5) + m.b


def _layer_norm_std(m, x):
    return m.g * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5) + m.b


def _layer_norm_var_mean(m, x):
    var, mean = torch.var_mean(x, -1, keepdim=True, correction=0)
    return m.g * (x - mean) * torch.rsqrt(var + 1e-5) + m.b


def _rms_norm_reciprocal(m, x):
    return m.g * x * (1.0 / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


SCRATCH_SPELLINGS = {
    "layer_norm_var": dict(norm=_layer_norm_var),
    "layer_norm_std": dict(norm=_layer_norm_std),
    "layer_norm_var_mean": dict(norm=_layer_norm_var_mean),
    "rms_norm_reciprocal": dict(norm=_rms_norm_reciprocal),
    "gelu_erf": dict(act=lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))),
    "silu_reciprocal": dict(act=lambda x: x * (1 / (1 + torch.exp(-x)))),
    "selu": dict(act=torch.nn.functional.selu),
    "celu": dict(act=lambda x: torch.nn.functional.celu(x, 0.7)),
    "hardsigmoid_gate": dict(act=lambda x: x * torch.nn.functional.hardsigmoid(x)),
    "log_sigmoid": dict(act=lambda x: torch.nn.functional.logsigmoid(x) + x),
    "sign_sqrt": dict(act=lambda x: torch.sign(x) * (x.abs() + 1e-3).sqrt()),
    "prelu": dict(act=torch.nn.PReLU(init=0.1)),
    "softmax_written": dict(softmax=lambda s: (e := (s - s.amax(-1, keepdim=True)).exp()) / e.sum(-1, keepdim=True)),
    "mask_added_1e9": dict(mask=lambda s, tril: s + (tril - 1) * 1e9),
    "mask_subtracted_1e10": dict(mask=lambda s, tril: s * tril - 1e10 * (1 - tril)),
    "embedding_indexed": dict(embed=lambda w, idx: w[idx]),
    "embedding_index_select": dict(embed=lambda w, idx: w.index_select(0, idx.view(-1)).view(*idx.shape, -1)),
    "embedding_one_hot": dict(embed=lambda w, idx: F.one_hot(idx, w.shape[0]).float() @ w),
    "embedding_one_hot_linear": dict(embed=lambda w, idx: F.linear(F.one_hot(idx, w.shape[0]).to(w.dtype), w.T)),
    "log_softmax_out": dict(out=lambda logits: torch.log_softmax(logits, -1)),
    "logits_flattened": dict(out=lambda logits: logits.view(-1, logits.size(-1))),
    "logits_squeezed": dict(out=lambda logits: logits.squeeze(0)),
    "positions_by_cumsum": dict(positions=lambda idx: torch.ones_like(idx).cumsum(1) - 1),
    "positions_by_new_ones": dict(positions=lambda idx: idx.new_ones(idx.shape).cumsum(-1) - 1),
}


class ScratchNorm(nn.Module):
    def __init__(self, d, norm):
        super().__init__()
        self.g, self.b, self.norm = nn.Parameter(torch.rand(d) + 0.5), nn.Parameter(torch.randn(d) * 0.1), norm

    def forward(self, x):
        return self.norm(self, x)


class ScratchGPTSpelled(nn.Module):
    def __init__(self, vocab=48, d=32, heads=4, layers=2, block_size=16, *, norm=_layer_norm_var, act=F.gelu,
                 softmax=lambda s: F.softmax(s, -1), mask=lambda s, tril: s.masked_fill(tril == 0, float("-inf")),
                 embed=lambda w, idx: F.embedding(idx, w), out=lambda logits: logits,
                 positions=lambda idx: torch.arange(idx.shape[1], device=idx.device)):
        super().__init__()
        self.block_size, self.heads, self.act, self.softmax, self.mask, self.embed, self.out, self.positions = (
            block_size, heads, act, softmax, mask, embed, out, positions)
        self.tok, self.pos = nn.Parameter(torch.randn(vocab, d)), nn.Embedding(block_size, d)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))
        self.layers = nn.ModuleList(nn.ModuleDict(dict(
            n1=ScratchNorm(d, norm), qkv=nn.Linear(d, 3 * d), proj=nn.Linear(d, d), n2=ScratchNorm(d, norm),
            up=nn.Linear(d, 4 * d), down=nn.Linear(4 * d, d))) for _ in range(layers))
        self.norm, self.head = ScratchNorm(d, norm), nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        B, T = idx.shape
        x = self.embed(self.tok, idx) + self.pos(self.positions(idx))
        for layer in self.layers:
            q, k, v = layer["qkv"](layer["n1"](x)).split(x.shape[-1], -1)
            q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in (q, k, v))
            att = self.mask(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), self.tril[:T, :T])
            x = x + layer["proj"]((self.softmax(att) @ v).transpose(1, 2).reshape(B, T, -1))
            x = x + layer["down"](self.act(layer["up"](layer["n2"](x))))
        return self.out(self.head(self.norm(x)))


@pytest.mark.parametrize("spelling", SCRATCH_SPELLINGS)
def test_a_gpt_written_from_scratch_lowers_and_matches_however_it_spells_an_op(spelling):
    from conftest import lowered_matches

    torch.manual_seed(0)
    g = lowered_matches(ScratchGPTSpelled(**SCRATCH_SPELLINGS[spelling]).eval(), 16, 48, rtol=1e-5)
    assert [n.op for n in g.nodes].count("attention") == 2


def test_a_gpt_of_tutorial_spellings_matches_on_every_backend(tmp_path):
    import monologue_compile

    torch.manual_seed(0)
    model = ScratchGPTSpelled(**{k: v for s in ("layer_norm_var", "gelu_erf", "softmax_written", "mask_added_1e9",
                                                "embedding_indexed", "log_softmax_out")
                                 for k, v in SCRATCH_SPELLINGS[s].items()}).eval()
    monologue_compile.compile(model, None, tmp_path / "dist", verify=True)
    report = json.loads((tmp_path / "dist" / "parity.json").read_text())
    assert report["ok"], {k: v for k, v in report["checks"].items() if not v["ok"]}
    assert {b for b, v in report["backends"].items() if v["status"] == "pass"} >= {"numpy", "native", "wgpu-cpu"}


# minGPT's layouts: model.py inside its package `mingpt/` importing `mingpt.utils` (or `.utils`), and
# the config object built by the class's own `GPT.get_default_config()` then set from the user's JSON;
# its first version instead had `GPTConfig(vocab_size, block_size, **kwargs)` with a GPT1Config subclass
MINGPT_UTILS_PY = '''
class CfgNode:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
'''

MINGPT_PY = '''
import math

import torch
import torch.nn as nn
from torch.nn import functional as F
{config_import}


class GPTConfig:
    embd_pdrop = 0.1

    def __init__(self, vocab_size, block_size, **kwargs):
        self.vocab_size, self.block_size = vocab_size, block_size
        for k, v in kwargs.items():
            setattr(self, k, v)


class GPT1Config(GPTConfig):
    n_layer, n_head, n_embd = 12, 12, 768


class NewGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(config.n_embd), nn.LayerNorm(config.n_embd)
        self.c_attn, self.c_proj = nn.Linear(config.n_embd, 3 * config.n_embd), nn.Linear(config.n_embd, config.n_embd)
        self.register_buffer("bias", torch.tril(torch.ones(config.block_size, config.block_size))
                             .view(1, 1, config.block_size, config.block_size))
        self.n_head = config.n_head
        self.mlp = nn.Sequential(nn.Linear(config.n_embd, 4 * config.n_embd), NewGELU(),
                                 nn.Linear(4 * config.n_embd, config.n_embd))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = F.softmax(att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf")), dim=-1)
        x = x + self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    @staticmethod
    def get_default_config():
        return CN(model_type="gpt", n_layer=None, n_head=None, n_embd=None, vocab_size=None, block_size=None)

    def __init__(self, config):
        super().__init__()
        assert config.model_type is None  # the sizes come from the user's config here
        self.block_size = config.block_size
        self.wte, self.wpe = nn.Embedding(config.vocab_size, config.n_embd), nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f, self.lm_head = nn.LayerNorm(config.n_embd), nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, idx, targets=None):
        pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device).unsqueeze(0)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss
'''


@pytest.mark.parametrize("layout", ["package", "relative_import", "namespace_package", "kwargs_config"])
def test_a_mingpt_layout_compiles_from_its_package_with_its_config_convention(tmp_path, layout):
    package = tmp_path / "repo" / "mingpt"
    package.mkdir(parents=True)
    if layout != "namespace_package":
        (package / "__init__.py").write_text("")
    (package / "utils.py").write_text(MINGPT_UTILS_PY)
    config_import = {"relative_import": "from .utils import CfgNode as CN"}.get(
        layout, "from mingpt.utils import CfgNode as CN")
    source = MINGPT_PY.format(config_import=config_import)
    config = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=40, block_size=16)
    if layout == "kwargs_config":  # GPT(GPTConfig(vocab_size, block_size, n_layer=..., ...)): no defaults
        source = source.replace("        assert config.model_type is None  # the sizes come from the user's config here\n", "")
        source = source.replace("    @staticmethod\n    def get_default_config():", "    def unused_defaults():")
    else:
        config["model_type"] = None
    (package / "model.py").write_text(source)
    (tmp_path / "config.json").write_text(json.dumps(config))
    sys.path.insert(0, str(tmp_path / "repo"))
    try:
        from importlib import import_module

        torch.manual_seed(0)
        model_module = import_module("mingpt.model")
        cfg = model_module.GPTConfig(**config) if layout == "kwargs_config" else model_module.CN(**config)
        torch.save(model_module.GPT(cfg).state_dict(), tmp_path / "model.pt")
    finally:
        sys.path.remove(str(tmp_path / "repo"))
        for name in [m for m in sys.modules if m == "mingpt" or m.startswith("mingpt.")]:
            del sys.modules[name]
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(tmp_path / "model.pt"), "-o",
                        str(tmp_path / "dist"), "--model-code", f"{package / 'model.py'}:GPT", "--config",
                        str(tmp_path / "config.json"), "--quant", "none", "--no-wasm", "--verify"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "dist" / "parity.json").read_text())
    assert report["ok"], {k: v for k, v in report["checks"].items() if not v["ok"]}


# How training scripts save a model, beside nanoGPT's ckpt.pt: a bare state dict holding the model's
# own bool mask buffer, PyTorch's tutorial's {"epoch", "model_state_dict", "optimizer_state_dict"},
# Lightning's {"state_dict" with the LightningModule's "model." prefix, "hyper_parameters"}, DDP's
# "module." prefix; and torch.save(model), which only running code could load
SAVED_PY = '''
import math
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class Config:
    vocab_size: int = 40
    block_size: int = 16
    n_embd: int = 32
    n_head: int = 2


class GPT(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.tok, self.pos = nn.Embedding(config.vocab_size, config.n_embd), nn.Embedding(config.block_size, config.n_embd)
        self.qkv, self.proj = nn.Linear(config.n_embd, 3 * config.n_embd), nn.Linear(config.n_embd, config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size)
        self.register_buffer("mask", torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool)))

    def forward(self, idx):
        B, T = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        q, k, v = (t.view(B, T, self.config.n_head, -1).transpose(1, 2) for t in self.qkv(x).split(x.shape[-1], 2))
        att = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~self.mask[:T, :T], float("-inf"))
        return self.head(x + self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)))
'''

SAVED_AS = {
    "state_dict_with_a_bool_buffer": lambda m: m.state_dict(),
    "tutorial_checkpoint": lambda m: {"epoch": 3, "model_state_dict": m.state_dict(), "loss": 1.5,
                                      "optimizer_state_dict": torch.optim.AdamW(m.parameters()).state_dict()},
    "lightning_checkpoint": lambda m: {"epoch": 2, "global_step": 10, "hyper_parameters": {"lr": 1e-3},
                                       "state_dict": {"model." + k: v for k, v in m.state_dict().items()}},
    "ddp_state_dict": lambda m: {"module." + k: v for k, v in m.state_dict().items()},
}


def _saved_gpt(tmp_path, save):
    """SAVED_PY's GPT, saved by `save(model, path)` while its module is importable (a pickled object
    names its class by module), to tmp_path / "model.pt"."""
    (tmp_path / "model.py").write_text(SAVED_PY)
    sys.path.insert(0, str(tmp_path))
    try:
        import model as saved

        torch.manual_seed(0)
        model = saved.GPT(saved.Config()).eval()
        save(model, tmp_path / "model.pt")
        return model
    finally:
        sys.path.remove(str(tmp_path))
        del sys.modules["model"]


@pytest.mark.parametrize("saved_as", SAVED_AS)
def test_each_way_training_scripts_save_a_model_loads_with_model_code(tmp_path, saved_as):
    from monologue_compile.frontend.module import from_model_code

    model = _saved_gpt(tmp_path, lambda m, path: torch.save(SAVED_AS[saved_as](m), path))
    loaded = from_model_code(f"{tmp_path / 'model.py'}:GPT", tmp_path / "model.pt")  # no config: Config()
    ids = torch.randint(0, 40, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded.build_module()(ids), model(ids))


def test_a_pickled_model_object_is_refused_with_what_to_save_instead(tmp_path):
    _saved_gpt(tmp_path, torch.save)
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(tmp_path / "model.pt"), "-o",
                        str(tmp_path / "dist"), "--model-code", f"{tmp_path / 'model.py'}:GPT"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "model.pt: refused: it pickles the object model.GPT" in r.stderr and "state_dict()" in r.stderr
    assert not (tmp_path / "dist").exists()


class Unstated(nn.Module):
    """A GPT that states its longest sequence nowhere: only its position table's rows (or a mask
    buffer's, or nothing at all) limit it."""

    def __init__(self, limit: str):
        super().__init__()
        self.limit = limit
        self.tok, self.pos, self.head = nn.Embedding(30, 16), nn.Embedding(24, 16), nn.Linear(16, 30)
        self.register_buffer("tril", torch.tril(torch.ones(20, 20)))

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok(idx)
        if self.limit == "position_table":
            x = x + self.pos(torch.arange(t, device=idx.device))
        q = x.view(1, t, 2, 8).transpose(1, 2)
        if self.limit == "mask_buffer":
            att = (q @ q.transpose(-2, -1)).masked_fill(self.tril[:t, :t] == 0, float("-inf")).softmax(-1) @ q
        else:
            att = F.scaled_dot_product_attention(q, q, q, is_causal=True)
        return self.head(x + att.transpose(1, 2).reshape(1, t, 16))


@pytest.mark.parametrize("limit, length", [("position_table", 24), ("mask_buffer", 20), ("none", 1024)])
def test_a_model_stating_no_length_is_compiled_for_the_longest_its_forward_runs_on(limit, length, capsys):
    from monologue_compile.frontend.module import from_module

    loaded = from_module(Unstated(limit))
    assert loaded.config["sequence_len"] == length
    said = capsys.readouterr().err
    assert f"Unstated states no longest sequence; compiling for {length}" in said and "--set sequence_len=N" in said
    assert ("runs at every length up to 1024" in said) == (limit == "none")


def test_a_bf16_model_is_compiled_and_checked_as_an_f32_copy_leaving_it_as_it_was(tmp_path, capsys):
    import monologue_compile

    torch.manual_seed(0)
    model = ScratchGPTSpelled().to(torch.bfloat16).eval()
    monologue_compile.compile(model, None, tmp_path / "dist", verify=True)
    report = json.loads((tmp_path / "dist" / "parity.json").read_text())
    assert report["ok"], {k: v for k, v in report["checks"].items() if not v["ok"]}
    assert "holds bfloat16 weights; compiling a copy in float32" in capsys.readouterr().err
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
