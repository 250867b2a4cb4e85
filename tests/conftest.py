"""Shared fixtures: tiny GPTs with non-trivial random weights, and checkpoints of them on disk.

`tiny_model(**overrides)` builds a seeded monologue_compile.models.gpt.GPT small enough to trace in
about a second; `write_checkpoint(path, model)` writes this project's checkpoint.pt format around it
with a minimal valid tokenizer.json (256 byte tokens, some two-byte tokens, and Monologue's specials).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from monologue_compile.models.gpt import GPT, GPTConfig  # noqa: E402
from monologue_compile.tokenizer import SPECIAL_TOKENS  # noqa: E402

SPECIALS = list(SPECIAL_TOKENS)  # Monologue's: nanochat's nine plus <think> and </think>
PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""

TINY = dict(sequence_len=96, vocab_size=288, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)


def byte_tokenizer_json(vocab_size: int = 288) -> str:
    """A valid monologue-tokenizer: ids 0..255 are bytes, the specials take the last ids."""
    ranks = [base64.b64encode(bytes([i])).decode() for i in range(256)]
    first_special = vocab_size - len(SPECIALS)
    # ids between the bytes and the specials: distinct letter pairs, then "t<number>", so every id is unique
    # and decodes to something
    extra = [bytes([97 + i % 26, 97 + i // 26]) for i in range(min(first_special - 256, 26 * 26))]
    extra += [f"t{i}".encode() for i in range(first_special - 256 - len(extra))]
    ranks += [base64.b64encode(b).decode() for b in extra]
    return json.dumps({"format": "monologue-tokenizer", "version": 1, "pattern": PATTERN, "ranks": ranks,
                       "special_tokens": {s: first_special + i for i, s in enumerate(SPECIALS)}})


def tiny_config(**overrides) -> GPTConfig:
    return GPTConfig(**{**TINY, **overrides})


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).init_weights(zero_init_outputs=False).eval()


def write_checkpoint(path: Path, model: GPT, tokenizer: str | None = None, meta: dict | None = None) -> Path:
    sd = {k: v for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    torch.save({"model_config": model.config.to_dict(), "model": sd,
                "tokenizer": byte_tokenizer_json(model.config.vocab_size) if tokenizer is None else tokenizer,
                "meta": meta or {}}, path)
    return path


@pytest.fixture(scope="module")
def torch_single_thread():
    """torch on one thread for a module of tiny-model tests (use with pytest.mark.usefixtures)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    return write_checkpoint(tmp_path / "checkpoint.pt", tiny_model())


@pytest.fixture(scope="session")
def tiny_export():
    """(model, ExportedProgram) of the default tiny model, traced once per test session."""
    from monologue_compile.frontend.trace import trace

    model = tiny_model()
    return model, trace(model, model.config.sequence_len)


def lowered(model, ep):
    """A fresh IR graph (lowering is cheap; passes mutate it) with the meta the driver sets."""
    from monologue_compile.lower import lower

    g = lower(ep)
    g.meta.update(arch="gpt", config=model.config.to_dict())
    return g


def lowered_matches(model, sequence_len: int, vocab: int, T: int = 9, rtol: float = 1e-5):
    """`model` (an nn.Module taking ids) traced and lowered; the interpreter's logits for T random ids
    within rtol of the model's own. The graph, for further checks."""
    import numpy as np

    from monologue_compile.frontend.hf import CausalLMLogits
    from monologue_compile.frontend.module import from_module
    from monologue_compile.frontend.trace import trace
    from monologue_compile.interpreter import Session
    from monologue_compile.lower import lower

    g = lower(trace(from_module(model.eval(), None, sequence_len).build_module(), sequence_len))
    ids = torch.randint(0, vocab, (1, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the logits as the compiler reads them from whatever the forward returns
        want = CausalLMLogits(model, sequence_len)(ids)[0].float().numpy()
    assert np.abs(Session(g).forward(ids[0].numpy()) - want).max() <= rtol * np.abs(want).max()
    return g
