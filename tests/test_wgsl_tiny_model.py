"""The WGSL kernels composed into a tiny nanochat GPT (2 layers, GQA, relu2, QK-norm, softcap) match
PyTorch with the same int8-dequantized weights (R_q): chunked prefill (second chunk at pos > 0), then
greedy decode with the GPU argmax."""

import numpy as np
import pytest

from wgsl_harness import device_or_skip
from wgsl_harness.tolerances import MODEL

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("group", [0, 64])
def test_tiny_model_prefill_then_decode(group):
    from monologue_compile.models.gpt import GPT, GPTConfig
    from wgsl_harness.tiny_model import TinyWgslModel, quantize_model

    dev = device_or_skip()
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=64, vocab_size=96, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    model = GPT(cfg).init_weights(zero_init_outputs=False).eval()
    packed = quantize_model(model, group)
    gpu = TinyWgslModel(cfg, packed, chunk=16, max_seq=64, dev=dev)

    prompt = list(np.random.default_rng(1).integers(0, cfg.vocab_size, 21))
    with torch.no_grad():
        want = model(torch.tensor([prompt]))[0].numpy()
    got = np.concatenate([gpu.prefill(prompt[:16], 0), gpu.prefill(prompt[16:], 16)])
    np.testing.assert_allclose(got, want, **MODEL)

    seq = list(prompt)
    token = int(np.argmax(got[-1]))
    for _ in range(6):
        seq.append(token)
        logits, am = gpu.decode(token, len(seq) - 1)
        with torch.no_grad():
            ref_logits = model(torch.tensor([seq]))[0, -1].numpy()
        np.testing.assert_allclose(logits, ref_logits, **MODEL)
        assert am == int(np.argmax(ref_logits))
        token = am
