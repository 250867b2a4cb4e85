"""The numpy interpreter: primitives equal PyTorch, and every way of feeding tokens gives the same logits."""

import numpy as np
import pytest
import torch

from conftest import lowered
from monologue_compile.models import ops  # noqa: F401
from monologue_compile.interpreter import Session, _attention
from monologue_compile.ir import Node, TensorType
from monologue_compile.passes import run_pipeline


def test_lowered_graph_equals_pytorch_fp32(tiny_export):
    model, ep = tiny_export
    ids = torch.randint(0, model.config.vocab_size, (1, 33), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids)[0].numpy()
    out = Session(lowered(model, ep)).forward(ids[0].tolist())
    assert np.abs(out - ref).max() <= 2e-5 * np.abs(ref).max()


def test_chunked_prefill_and_decode_equal_full_sequence(tiny_export):
    g, _ = run_pipeline(lowered(*tiny_export), "int8")
    ids = list(np.random.default_rng(0).integers(0, 280, size=40))
    full = Session(g).forward(ids)
    s = Session(g)
    chunks = [s.forward(ids[i:i + 7]) for i in range(0, 21, 7)] + [s.forward([t]) for t in ids[21:]]
    got = np.concatenate(chunks)
    assert s.pos == 40
    assert np.abs(got - full).max() <= 1e-4 * np.abs(full).max()
    s.reset()
    assert np.array_equal(s.forward(ids), full)


def test_sequence_longer_than_the_model_is_refused(tiny_export):
    g, _ = run_pipeline(lowered(*tiny_export), "none")
    s = Session(g)
    s.forward(list(range(90)))
    with pytest.raises(ValueError, match="sequence_len"):
        s.forward(list(range(10)))


@pytest.mark.parametrize("window", [0, 1, 5])
def test_windowed_gqa_attention_over_the_cache_matches_torch(window):
    rng = np.random.default_rng(window)
    q = rng.standard_normal((1, 12, 4, 8)).astype(np.float32)
    k = rng.standard_normal((1, 12, 2, 8)).astype(np.float32)
    v = rng.standard_normal((1, 12, 2, 8)).astype(np.float32)
    ref = torch.ops.monologue.causal_attention(*(torch.from_numpy(a) for a in (q, k, v)), window).numpy()
    node = Node("a", "attention", ["q", "k", "v"], {"layout": "BTHD", "n_head": 4, "n_kv_head": 2, "head_dim": 8,
                                                     "scale": 8 ** -0.5, "window": window}, TensorType((1, "T", 4, 8)))

    class S:  # the session state _attention uses
        kv = {}

    full = _attention(S, node, [q, k, v])
    S.kv = {}
    steps = [_attention(S, node, [q[:, :5], k[:, :5], v[:, :5]])]
    steps += [_attention(S, node, [q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1]]) for t in range(5, 12)]
    assert np.abs(full - ref).max() < 1e-5
    assert np.abs(np.concatenate(steps, axis=1) - ref).max() < 1e-5
