"""Row-wise kernels against numpy: int8 embedding gather, RMSNorm/LayerNorm, RoPE + QK-norm, KV write."""

import numpy as np
import pytest

from monologue_compile.wgsl import kernels
from wgsl_harness import chromium_session, gpu  # noqa: F401 (fixtures)
from wgsl_harness import reference as ref
from wgsl_harness.tolerances import MATRIX


@pytest.mark.parametrize("T,n,V,C,norm,group,bits", [
    (4, 4, 50, 64, False, 0, 8), (9, 7, 33, 52, True, 0, 8), (3, 1, 10, 16, True, 0, 8),
    # a table tied to a group-quantized output projection, stored as that matmul weight: rows padded
    # to the group (C = 72 in groups of 64 is 128 wide), int8 or two int4 values a byte
    (5, 5, 40, 72, False, 64, 8), (6, 4, 37, 72, False, 32, 4), (2, 2, 9, 200, False, 128, 4)])
def test_embed(T, n, V, C, norm, group, bits, gpu):
    from monologue_compile.artifact import pack_int4

    rng = np.random.default_rng(V + C)
    ids = rng.integers(0, V, T).astype(np.uint32)
    if bits == 8:
        q, scale = ref.quantize(rng.standard_normal((V, C)), group)
        table = ref.pack_int8(q, group)
    else:
        kp = kernels.k_pad(C, group)
        q = np.zeros((V, kp), np.int8)
        q[:, :C] = rng.integers(-7, 8, (V, C))
        scale = (rng.random((V, kp // group)) + 0.1).astype(np.float32)
        table = pack_int4(q).view("<u4")
        q = q[:, :C]
    k = kernels.embed_int8(T, V, C, norm=norm, group=group, bits=bits, covers=["test"])
    got = gpu.run(k, {"ids": ids, "table": table, "scale": scale}, {"y": ((T, C), np.float32)}, n_tokens=n)["y"]
    want = np.zeros((T, C))
    want[:n] = ref.dequantize(q, scale, group)[ids[:n]]
    if norm:
        want[:n] = ref.rmsnorm(want[:n])
    np.testing.assert_allclose(got, want, **MATRIX)


@pytest.mark.parametrize("kind,weight,bias,C,wg", [("rms", False, False, 64, 64), ("rms", True, False, 20, 32),
                                                   ("layer", True, True, 100, 64), ("layer", False, False, 256, 128)])
def test_norm(kind, weight, bias, C, wg, gpu):
    T, n = 6, 5
    rng = np.random.default_rng(C)
    x = (rng.standard_normal((T, C)) * 3 + 1).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    k = kernels.norm(T, C, kind=kind, weight=weight, bias=bias, wg=wg, covers=["test"])
    inputs = {"x": x} | ({"weight": w} if weight else {}) | ({"bias": b} if bias else {})
    got = gpu.run(k, inputs, {"y": ((T, C), np.float32)}, n_tokens=n)["y"]
    want = np.zeros((T, C))
    if kind == "rms":
        want[:n] = ref.rmsnorm(x[:n]) * (w if weight else 1)
    else:
        want[:n] = ref.layernorm(x[:n], w if weight else None, b if bias else None)
    np.testing.assert_allclose(got, want, **MATRIX)


@pytest.mark.parametrize("T,n,H,D,pos,qk_norm,post_scale", [
    (1, 1, 4, 16, 0, True, 0.0),
    (5, 5, 3, 32, 17, True, 1.15),  # positions > 0, odd head count, later-nanochat q/k scale
    (8, 6, 2, 6, 3000, False, 0.0),  # head_dim 6: half not a power of two; far position
    (4, 4, 2, 8, 5, False, 1.2),  # scale without the norm
])
def test_rope_inplace(T, n, H, D, pos, qk_norm, post_scale, gpu):
    rng = np.random.default_rng(D)
    cos, sin = ref.rope_tables(pos + T + 1, D)
    x = rng.standard_normal((T, H, D)).astype(np.float32)
    k = kernels.rope_qknorm(T, H, D, qk_norm=qk_norm, post_scale=post_scale, covers=["test"])
    got = gpu.run(k, {"x": x, "cos": cos, "sin": sin}, {"x": ((T, H, D), np.float32)}, pos=pos, n_tokens=n)["x"]
    want = x.astype(np.float64)
    want[:n] = ref.rope(x[:n], cos, sin, pos)
    if qk_norm:
        want[:n] = ref.rmsnorm(want[:n])
    if post_scale:
        want[:n] *= post_scale
    np.testing.assert_allclose(got, want, **MATRIX)


def test_rope_into_cache(gpu):
    """k of a chunk at pos 11, read from merged q|k|v rows (H 4, Hkv 2): rotated, normed, written to
    cache rows 11.. without touching others."""
    T, n, H, Hkv, D, S, pos = 4, 3, 4, 2, 16, 20, 11
    rng = np.random.default_rng(0)
    cos, sin = ref.rope_tables(S, D)
    qkv = rng.standard_normal((T, (H + 2 * Hkv) * D)).astype(np.float32)
    x = qkv[:, H * D : (H + Hkv) * D].reshape(T, Hkv, D)
    cache = np.full((S, Hkv, D), 5.0, np.float32)
    k = kernels.rope_qknorm(T, Hkv, D, inplace=False, in_offset=H * D, in_row_stride=(H + 2 * Hkv) * D,
                            out_at_pos=True, covers=["test"])
    got = gpu.run(k, {"x": qkv, "cos": cos, "sin": sin, "y": cache}, {"y": ((S, Hkv, D), np.float32)},
              pos=pos, n_tokens=n)["y"]
    want = cache.astype(np.float64)
    want[pos : pos + n] = ref.rmsnorm(ref.rope(x[:n], cos, sin, pos))
    np.testing.assert_allclose(got, want, **MATRIX)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_rope_parts_q_k_and_v_of_merged_rows_in_one_dispatch(qk_norm, gpu):
    """The q, k and v parts of merged q|k|v rows (H 4, Hkv 2) in one dispatch: q roped (and normed,
    scaled) into its buffer, k roped into cache rows pos.., v copied into its cache, the same values
    as rope_qknorm twice and kv_write."""
    T, n, H, Hkv, D, S, pos = 4, 3, 4, 2, 16, 20, 11
    rng = np.random.default_rng(3)
    cos, sin = ref.rope_tables(S, D)
    row = (H + 2 * Hkv) * D
    qkv = rng.standard_normal((T, row)).astype(np.float32)
    q_buf = np.zeros((T, H, D), np.float32)
    kc, vc = (np.full((S, Hkv, D), f, np.float32) for f in (5.0, 6.0))
    norm = dict(qk_norm=qk_norm, post_scale=1.2 if qk_norm else 0.0)
    parts = [dict(heads=H, out="yq", **norm),
             dict(heads=Hkv, in_offset=H * D, out="yk", out_at_pos=True, **norm),
             dict(heads=Hkv, rope=False, in_offset=(H + Hkv) * D, out="yv", out_at_pos=True)]
    k = kernels.rope_parts(T, D, parts, in_row_stride=row, covers=["test"])
    assert [b.name for b in k.bindings] == ["x", "cos", "sin", "yq", "yk", "yv", "step"] and k.workgroups[:2] == (8, T)
    got = gpu.run(k, {"x": qkv, "cos": cos, "sin": sin, "yq": q_buf, "yk": kc, "yv": vc},
                  {"yq": ((T, H, D), np.float32), "yk": ((S, Hkv, D), np.float32), "yv": ((S, Hkv, D), np.float32)},
                  pos=pos, n_tokens=n)

    def roped(x):
        y = ref.rope(x, cos, sin, pos)
        return ref.rmsnorm(y) * 1.2 if qk_norm else y

    x = qkv[:n].reshape(n, H + 2 * Hkv, D)
    want_q = q_buf.astype(np.float64)
    want_q[:n] = roped(x[:, :H])
    want_k, want_v = kc.astype(np.float64), vc.copy()
    want_k[pos:pos + n] = roped(x[:, H:H + Hkv])
    want_v[pos:pos + n] = x[:, H + Hkv:]
    np.testing.assert_allclose(got["yq"], want_q, **MATRIX)
    np.testing.assert_allclose(got["yk"], want_k, **MATRIX)
    np.testing.assert_array_equal(got["yv"], want_v)


@pytest.mark.parametrize("weight", [False, True])
def test_rope_after_a_head_norm(weight, gpu):
    """rope(rmsnorm(x[t, h]) * w): the q/k norm before the rotation (Qwen3) inside the rope kernel."""
    T, n, H, D, pos = 3, 2, 3, 16, 7
    rng = np.random.default_rng(9)
    cos, sin = ref.rope_tables(pos + T, D)
    x = (rng.standard_normal((T, H, D)) * 3).astype(np.float32)
    w = rng.uniform(0.25, 2.5, D).astype(np.float32)
    k = kernels.rope_qknorm(T, H, D, qk_norm=False, inplace=False, pre_norm=True, pre_weight=weight, pre_eps=1e-6,
                            covers=["test"])
    inputs = {"x": x, "cos": cos, "sin": sin, "y": np.zeros_like(x)} | ({"pw": w} if weight else {})
    got = gpu.run(k, inputs, {"y": ((T, H, D), np.float32)}, pos=pos, n_tokens=n)["y"]
    xn = x[:n].astype(np.float64)
    xn = xn / np.sqrt((xn ** 2).mean(-1, keepdims=True) + 1e-6) * (w if weight else 1)
    want = np.zeros((T, H, D))
    want[:n] = ref.rope(xn, cos, sin, pos)
    np.testing.assert_allclose(got, want, **MATRIX)


def test_elementwise_with_an_inner_chain_operand(gpu):
    """y = x0 * l0 + (lr * xr): the operand `lr * xr` is another node's chain computed in the same loop
    (no buffer, no dispatch of its own), its source a strided row and its operand a weight."""
    T, n, L = 3, 2, 40
    rng = np.random.default_rng(6)
    x0, l0, lr = (rng.standard_normal(s).astype(np.float32) for s in ((T, L), (L,), (L,)))
    xr = rng.standard_normal((T, 2 * L)).astype(np.float32)
    inner = {"src": {"len": L, "offset": L, "row_stride": 2 * L}, "steps": [{"fn": "mul", "operand": 0}],
             "operands": [{"len": L}]}
    k = kernels.elementwise(T, L, [{"fn": "mul", "operand": 0}, {"fn": "add", "operand": 1}], [{"len": L}, {"inner": inner}],
                            covers=["test"])
    assert [b.name for b in k.bindings] == ["x", "op0", "op1_s", "op1_0", "y", "step"]
    got = gpu.run(k, {"x": x0, "op0": l0, "op1_s": xr, "op1_0": lr, "y": np.zeros((T, L), np.float32)},
                  {"y": ((T, L), np.float32)}, n_tokens=n)["y"]
    want = np.zeros((T, L))
    want[:n] = x0[:n] * l0 + lr * xr[:n, L:]
    np.testing.assert_allclose(got, want, **MATRIX)


@pytest.mark.parametrize("merged", [False, True])
def test_kv_write(merged, gpu):
    """Rows pos..pos+n-1 of the cache from a packed [T, W] source or from the v part of merged q|k|v rows."""
    T, n, W, S, pos = 5, 4, 24, 12, 6
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((T, 3 * W if merged else W)).astype(np.float32)
    src = rows[:, 2 * W :] if merged else rows
    cache = rng.standard_normal((S, W)).astype(np.float32)
    opts = {"src_offset": 2 * W, "src_row_stride": 3 * W} if merged else {}
    k = kernels.kv_write(T, W, wg=32, covers=["test"], **opts)
    got = gpu.run(k, {"src": rows, "cache": cache}, {"cache": ((S, W), np.float32)}, pos=pos, n_tokens=n)["cache"]
    want = cache.copy()
    want[pos : pos + n] = src[:n]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("norm", [False, True])
def test_embed_split_table(norm, gpu):
    """A table split by rows over two bindings (as past the 128 MiB binding limit): one dispatch per
    part into the same output gives the whole gather."""
    T, V, C, cut = 12, 40, 32, 17
    rng = np.random.default_rng(3)
    q, scale = ref.quantize(rng.standard_normal((V, C)))
    ids = rng.integers(0, V, T).astype(np.uint32)
    ids[:2] = [cut - 1, cut]  # both sides of the cut
    packed = ref.pack_int8(q)
    y = np.full((T, C), np.nan, np.float32)
    for start, rows in ((0, cut), (cut, V - cut)):
        k = kernels.embed_int8(T, V, C, norm=norm, row_start=start, n_rows=rows, covers=["test"])
        y = gpu.run(k, {"ids": ids, "table": packed[start : start + rows], "scale": scale[start : start + rows],
                        "y": y}, {"y": ((T, C), np.float32)}, n_tokens=T)["y"]
    want = ref.dequantize(q, scale)[ids]
    np.testing.assert_allclose(y, ref.rmsnorm(want) if norm else want, **MATRIX)
