"""int8 matrix-vector (decode) kernel against the numpy reference, over shapes and every fusion."""

import numpy as np
import pytest

from monologue_compile.wgsl import kernels
from wgsl_harness import chromium_session, gpu  # noqa: F401 (fixtures)
from wgsl_harness import reference as ref
from wgsl_harness.tolerances import ELEMENTWISE, MATRIX

CASES = [
    # N, K, options
    (1, 16, {}),
    (37, 52, {"norm": True}),  # odd N, K not a multiple of 16
    (64, 256, {"group": 64, "act": "relu2"}),
    (33, 320, {"group": 128, "norm": True, "bias": True, "act": "gelu", "residual": True}),
    (50, 128, {"act": "silu", "rows": 1, "wg": 32}),
    (70, 96, {"act": "gelu_tanh", "softcap": 15.0, "rows": 8, "wg": 128}),
    (40, 64, {"softcap": 2.0, "norm": True, "rows": 3}),  # softcap saturates: clamp before tanh
]


def _data(N, K, group, seed):
    rng = np.random.default_rng(seed)
    q, scale = ref.quantize(rng.standard_normal((N, K)), group)
    return q, scale, rng.standard_normal(K).astype(np.float32) * 3


# The barrier-free kernel (each invocation computes `rows` whole rows; the plan's `cpu` profile) at
# the same shapes, with its own rows / wg: row counts that leave the last invocation partial.
VARIANTS = {"cooperative": {"subgroups": "off"}, "cooperative_subgroups": {"subgroups": "naga"},
            "per_invocation": {"cooperative": False, "rows": 8, "wg": 16}, "per_invocation_3x8": {"cooperative": False, "rows": 3, "wg": 8}}


@pytest.mark.parametrize("N,K,opts", CASES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_matvec(N, K, opts, variant, gpu):
    opts = dict(opts)
    if not VARIANTS[variant].get("cooperative", True):
        opts.pop("rows", None)
        opts.pop("wg", None)
    opts.update(VARIANTS[variant])
    group = opts.get("group", 0)
    q, scale, x = _data(N, K, group, N * 1000 + K)
    rng = np.random.default_rng(1)
    bias = rng.standard_normal(N).astype(np.float32) if opts.get("bias") else None
    res = rng.standard_normal(N).astype(np.float32) if opts.get("residual") else None
    k = kernels.matvec_int8(N, K, covers=["test"], **opts)
    inputs = {"w": ref.pack_int8(q, group), "scale": scale, "x": x}
    if bias is not None:
        inputs["bias"] = bias
    if res is not None:
        inputs["y"] = res
    got = gpu.run(k, inputs, {"y": ((N,), np.float32)})["y"]
    want = ref.linear(x, q, scale, group, opts.get("norm", False), bias, opts.get("act", "none"),
                      opts.get("softcap", 0.0), res)
    tol = ELEMENTWISE if opts.get("act", "none") != "none" or opts.get("softcap") else MATRIX
    np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("N,K,group", [(37, 52, 0), (33, 320, 128)])
@pytest.mark.parametrize("variant", ["cooperative", "per_invocation"])
def test_matvec_weighted_norm_prologue_on_a_slice_of_x(N, K, group, variant, gpu):
    """x' = rmsnorm(x) * nw read from element 12 of a wider row (a norm folded into the matvec by the
    plan's fusion, x a slice of a merged row): the same as normalizing and packing first."""
    q, scale, x = _data(N, K, group, 11)
    nw = np.random.default_rng(2).uniform(0.25, 2.5, K).astype(np.float32)
    row = np.concatenate([np.full(12, 9.0, np.float32), x, np.full(8, -9.0, np.float32)])
    k = kernels.matvec_int8(N, K, group=group, norm=True, norm_weight=True, x_offset=12, act="relu2", covers=["test"],
                            **VARIANTS[variant])
    assert [b.name for b in k.bindings] == ["w", "scale", "x", "nw", "y"]
    got = gpu.run(k, {"w": ref.pack_int8(q, group), "scale": scale, "x": row, "nw": nw}, {"y": ((N,), np.float32)})["y"]
    np.testing.assert_allclose(got, ref.linear(x, q, scale, group, True, act="relu2", nw=nw), **ELEMENTWISE)


@pytest.mark.parametrize("K", [52, 128])
@pytest.mark.parametrize("variant", ["cooperative", "per_invocation"])
def test_matvec_gated_prologue_from_merged_rows(K, variant, gpu):
    """x'[k] = silu(gate[k]) * up[k] with gate and up two halves of one merged row (a SwiGLU folded
    into the down projection by the plan's fusion), then a residual add."""
    N = 24
    q, scale, _ = _data(N, K, 0, 5)
    rng = np.random.default_rng(4)
    row = (rng.standard_normal(2 * K) * 2).astype(np.float32)
    res = rng.standard_normal(N).astype(np.float32)
    k = kernels.matvec_int8(N, K, residual=True, prologue=[{"fn": "silu"}, {"fn": "mul", "operand": 0}],
                            prologue_operands=[K], covers=["test"], **VARIANTS[variant])
    assert [b.name for b in k.bindings] == ["w", "scale", "x", "p0", "y"]
    got = gpu.run(k, {"w": ref.pack_int8(q), "scale": scale, "x": row, "p0": row, "y": res}, {"y": ((N,), np.float32)})["y"]
    gate, up = row[:K].astype(np.float64), row[K:].astype(np.float64)
    x = gate / (1 + np.exp(-gate)) * up
    np.testing.assert_allclose(got, ref.linear(x, q, scale, residual=res), **ELEMENTWISE)


@pytest.mark.parametrize("cooperative", [True, False])
def test_matvec_output_at_position(cooperative, gpu):
    """Writing into row `pos` of a [rows, N] buffer (a KV-cache row), leaving other rows alone."""
    N, K, pos, rows = 24, 64, 5, 8
    q, scale, x = _data(N, K, 0, 7)
    k = kernels.matvec_int8(N, K, out_at_pos=True, out_len=rows * N, cooperative=cooperative, covers=["test"])
    init = np.full((rows, N), -7.0, np.float32)
    got = gpu.run(k, {"w": ref.pack_int8(q), "scale": scale, "x": x, "y": init},
              {"y": ((rows, N), np.float32)}, pos=pos)["y"]
    want = init.astype(np.float64)
    want[pos] = ref.linear(x, q, scale)
    np.testing.assert_allclose(got, want, **MATRIX)


def test_matvec_builtin_unpack(gpu):
    N, K = 20, 64
    q, scale, x = _data(N, K, 0, 3)
    k = kernels.matvec_int8(N, K, unpack="builtin", covers=["test"])
    got = gpu.run(k, {"w": ref.pack_int8(q), "scale": scale, "x": x}, {"y": ((N,), np.float32)})["y"]
    np.testing.assert_allclose(got, ref.linear(x, q, scale), **MATRIX)


@pytest.mark.parametrize("cooperative", [True, False])
def test_matvec_more_rows_than_one_grid_dimension(cooperative, gpu):
    """Over 65535 workgroups: the dispatch spreads over x*y and the kernel flattens the id."""
    N, K = 70001, 16
    q, scale, x = _data(N, K, 0, 11)
    k = kernels.matvec_int8(N, K, rows=1, wg=16 if cooperative else 1, cooperative=cooperative, covers=["test"])
    assert k.workgroups[1] > 1
    got = gpu.run(k, {"w": ref.pack_int8(q), "scale": scale, "x": x}, {"y": ((N,), np.float32)})["y"]
    np.testing.assert_allclose(got, ref.linear(x, q, scale), **MATRIX)


@pytest.mark.parametrize("cooperative", [True, False])
@pytest.mark.parametrize("group", [0, 64, 128])
def test_matvec_reads_the_compilers_quantized_weights(group, cooperative, gpu):
    """The packed layout contract (docs/formats.md) end to end: arrays from the compiler's quantizer,
    viewed as u32 the way they are stored, give the dequantized product."""
    quantize = pytest.importorskip("monologue_compile.passes.quantize")
    N, K = 24, 200
    rng = np.random.default_rng(group)
    w = rng.standard_normal((N, K)).astype(np.float32)
    q, scale, g = quantize.quantize_array(w, group)
    x = rng.standard_normal(K).astype(np.float32)
    k = kernels.matvec_int8(N, K, group=group, cooperative=cooperative, covers=["test"])
    assert q.shape[1] == kernels.k_pad(K, group)
    got = gpu.run(k, {"w": q.view("<u4"), "scale": scale, "x": x}, {"y": ((N,), np.float32)})["y"]
    deq = q[:, :K].astype(np.float64) * np.repeat(scale.astype(np.float64), g, axis=1)[:, :K]
    np.testing.assert_allclose(got, deq @ x, **MATRIX)


def test_matvec_split_rows_into_one_output(gpu):
    """An lm_head over the binding limit is split by rows: each part writes at its out_offset of one
    logits buffer (with the norm prologue and softcap in every part)."""
    N, K, cut = 90, 64, 48
    q, scale, x = _data(N, K, 0, 5)
    packed = ref.pack_int8(q)
    y = np.full(N, np.nan, np.float32)
    for start, rows in ((0, cut), (cut, N - cut)):
        k = kernels.matvec_int8(rows, K, norm=True, softcap=15.0, out_offset=start, out_len=N, covers=["test"])
        y = gpu.run(k, {"w": packed[start : start + rows], "scale": scale[start : start + rows], "x": x, "y": y},
                    {"y": ((N,), np.float32)})["y"]
    np.testing.assert_allclose(y, ref.linear(x, q, scale, norm=True, cap=15.0), **ELEMENTWISE)
