"""int8 matrix-matrix (prefill) kernel against the numpy reference: tiles, partial chunks, fusions."""

import numpy as np
import pytest

from monologue_compile.wgsl import kernels
from wgsl_harness import chromium_session, gpu  # noqa: F401 (fixtures)
from wgsl_harness import reference as ref
from wgsl_harness.tolerances import ELEMENTWISE, MATRIX

CASES = [
    # T (rendered), n_tokens (this step), N, K, options
    (8, 8, 16, 32, {}),
    (40, 37, 70, 52, {"norm": True}),  # partial token tile, odd N, K not a multiple of 16
    (16, 5, 64, 256, {"group": 64, "act": "relu2", "tile_t": 16, "mt": 1}),
    (33, 33, 45, 320, {"group": 128, "norm": True, "bias": True, "act": "gelu", "residual": True}),
    (12, 12, 30, 96, {"act": "silu", "softcap": 3.0, "tile_t": 8, "tile_n": 32, "mt": 1, "mn": 2}),
]


@pytest.mark.parametrize("T,n_tokens,N,K,opts", CASES)
def test_matmul(T, n_tokens, N, K, opts, gpu):
    opts = dict(opts)
    group = opts.get("group", 0)
    rng = np.random.default_rng(T * 7 + N)
    q, scale = ref.quantize(rng.standard_normal((N, K)), group)
    x = (rng.standard_normal((T, K)) * 2).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if opts.get("bias") else None
    init = rng.standard_normal((T, N)).astype(np.float32)
    k = kernels.matmul_int8(T, N, K, covers=["test"], **opts)
    inputs = {"w": ref.pack_int8(q, group), "scale": scale, "x": x, "y": init}
    if bias is not None:
        inputs["bias"] = bias
    got = gpu.run(k, inputs, {"y": ((T, N), np.float32)}, n_tokens=n_tokens)["y"]
    want = init.astype(np.float64)
    want[:n_tokens] = ref.linear(x[:n_tokens], q, scale, group, opts.get("norm", False), bias,
                                 opts.get("act", "none"), opts.get("softcap", 0.0),
                                 init[:n_tokens] if opts.get("residual") else None)
    tol = ELEMENTWISE if opts.get("act", "none") != "none" else MATRIX
    np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("K,group", [(52, 0), (320, 64)])
def test_matmul_weighted_norm_prologue(K, group, gpu):
    """X' = rmsnorm(X) * nw rows (a norm folded into the prefill matmul), a partial token tile."""
    T, n, N = 40, 37, 70
    rng = np.random.default_rng(K)
    q, scale = ref.quantize(rng.standard_normal((N, K)), group)
    x = (rng.standard_normal((T, K)) * 2).astype(np.float32)
    nw = rng.uniform(0.25, 2.5, K).astype(np.float32)
    init = np.zeros((T, N), np.float32)
    k = kernels.matmul_int8(T, N, K, group=group, norm=True, norm_weight=True, covers=["test"])
    got = gpu.run(k, {"w": ref.pack_int8(q, group), "scale": scale, "x": x, "nw": nw, "y": init},
                  {"y": ((T, N), np.float32)}, n_tokens=n)["y"]
    want = init.astype(np.float64)
    want[:n] = ref.linear(x[:n], q, scale, group, True, nw=nw)
    np.testing.assert_allclose(got, want, **MATRIX)


def test_matmul_into_cache_rows(gpu):
    """A prefill chunk at pos > 0 written into rows pos..pos+n-1 of a [S, N] cache."""
    T, n, N, K, S, pos = 16, 9, 24, 64, 40, 13
    rng = np.random.default_rng(5)
    q, scale = ref.quantize(rng.standard_normal((N, K)))
    x = rng.standard_normal((T, K)).astype(np.float32)
    cache = np.full((S, N), 9.0, np.float32)
    k = kernels.matmul_int8(T, N, K, out_at_pos=True, covers=["test"])
    got = gpu.run(k, {"w": ref.pack_int8(q), "scale": scale, "x": x, "y": cache}, {"y": ((S, N), np.float32)},
              pos=pos, n_tokens=n)["y"]
    want = cache.astype(np.float64)
    want[pos : pos + n] = ref.linear(x[:n], q, scale)
    np.testing.assert_allclose(got, want, **MATRIX)
