"""Kernels at nanochat d20 sizes (C 1280, 10 heads of 128, MLP 5120, context 2048) against numpy.

wgpu-py only: moving a 20 MB KV cache through the Chromium test page takes ~20 s on this machine;
the same templates run in Chromium at small shapes in the other test files, and at these shapes
they compile under Tint in test_wgsl_compile."""

import numpy as np

from monologue_compile.wgsl import kernels
import pytest

from wgsl_harness import WgpuRunner
from wgsl_harness import reference as ref
from wgsl_harness.tolerances import ATTENTION, ELEMENTWISE


@pytest.fixture
def gpu():
    return WgpuRunner()


def test_d20_mlp_fc_decode(gpu):
    N, K = 5120, 1280
    rng = np.random.default_rng(20)
    q, scale = ref.quantize(rng.standard_normal((N, K)) * 0.02)
    x = rng.standard_normal(K).astype(np.float32) * 4
    k = kernels.matvec_int8(N, K, norm=True, act="relu2", covers=["transformer.h.0.mlp.c_fc", "relu", "square"])
    got = gpu.run(k, {"w": ref.pack_int8(q), "scale": scale, "x": x}, {"y": ((N,), np.float32)})["y"]
    np.testing.assert_allclose(got, ref.linear(x, q, scale, norm=True, act="relu2"), **ELEMENTWISE)


def test_d20_attention_decode_long_context(gpu):
    H, D, S, pos = 10, 128, 2048, 1700
    rng = np.random.default_rng(21)
    kc = rng.standard_normal((S, H, D)).astype(np.float32)
    vc = rng.standard_normal((S, H, D)).astype(np.float32)
    q = rng.standard_normal((1, H, D)).astype(np.float32)
    part, comb = kernels.attn_decode(H, H, D, S, covers=["transformer.h.0.attn.sdpa"])
    scratch = gpu.run(part, {"q": q, "k": kc, "v": vc},
                      {"ml": ((part.info["ml"],), np.float32), "o": ((part.info["o"],), np.float32)}, pos=pos)
    got = gpu.run(comb, scratch, {"out": ((H, D), np.float32)}, pos=pos)["out"]
    np.testing.assert_allclose(got, ref.attention(q, kc, vc, pos, H)[0], **ATTENTION)
