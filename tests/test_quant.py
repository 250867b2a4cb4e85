"""int8 and int4 quantization: the scale/rounding contract, padding, groups, packing, and the kernels' arithmetic."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monologue_compile.artifact import _arrays
from monologue_compile.interpreter import dense_weight, embedding_rows, matvec
from monologue_compile.ir import Graph, Node, TensorType, Weight
from monologue_compile.passes.quantize import quantize, quantize_array


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), k=st.integers(1, 150), group=st.sampled_from([0, 64, 128]), seed=st.integers(0, 10**6),
       scale=st.floats(1e-4, 1e3))
def test_quantize_array_contract(n, k, group, seed, scale):
    w = (np.random.default_rng(seed).standard_normal((n, k)) * scale).astype(np.float32)
    q, s, g = quantize_array(w, group)
    kpad = q.shape[1]
    assert kpad % 16 == 0 and kpad >= k and (group == 0 or kpad % group == 0)
    assert g == (group or kpad) and s.shape == (n, kpad // g)
    assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= 127
    assert np.all(q[:, k:] == 0)  # padding is zero
    deq = (q.astype(np.float32).reshape(n, -1, g) * s[:, :, None]).reshape(n, kpad)[:, :k]
    # round-to-nearest: every value within half a step of its group's scale
    step = np.repeat(s, g, axis=1)[:, :k]
    assert np.all(np.abs(deq - w) <= step / 2 * (1 + 1e-5) + 1e-30)
    # the largest magnitude of each group maps to +-127
    amax = np.abs(np.pad(w, ((0, 0), (0, kpad - k)))).reshape(n, -1, g).max(axis=2)
    assert np.allclose(s[amax > 0], amax[amax > 0] / 127, rtol=1e-6)


def test_zero_rows_get_scale_one_and_no_nan():
    w = np.zeros((3, 20), np.float32)
    w[1, 5] = -2.0
    q, s, _ = quantize_array(w, 0)
    assert s[0, 0] == 1.0 and s[2, 0] == 1.0 and np.all(q[0] == 0)
    assert q[1, 5] == -127 and np.isclose(s[1, 0], 2 / 127)
    assert np.all(np.isfinite(s))


def _graph(w: np.ndarray, table: np.ndarray) -> Graph:
    n = Node("y", "matmul", ["x", "W"], {"prologue": None, "epilogue": []}, TensorType((1, "T", w.shape[0])))
    e = Node("e", "embedding", ["E", "ids"], {}, TensorType((1, "T", table.shape[1])))
    return Graph({"ids": TensorType((1, "T"), "i32"), "x": TensorType((1, "T", w.shape[1]))},
                 {"W": Weight(w.shape, "f32", w), "E": Weight(table.shape, "f32", table)}, [e, n], ["y", "e"])


@pytest.mark.parametrize("scheme", ["int8", "int8-g64", "int8-g128"])
def test_kernel_arithmetic_matches_dequantized_weights(scheme):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 200)).astype(np.float32)
    table = rng.standard_normal((50, 40)).astype(np.float32)
    g = quantize(_graph(w, table), scheme)
    W, E = g.weights["W"], g.weights["E"]
    assert W.dtype == "q8" and W.quant["scheme"] == scheme and E.quant["scheme"] == "int8"  # tables per row
    x = rng.standard_normal((1, 3, 200)).astype(np.float32)
    ref = x.astype(np.float64) @ dense_weight(W).astype(np.float64).T
    assert np.abs(matvec(x, W) - ref).max() <= 1e-5 * np.abs(ref).max()
    ids = np.array([[0, 7, 49, 7]])
    assert np.array_equal(embedding_rows(E, ids), dense_weight(E)[ids])
    assert np.abs(dense_weight(E) - table).max() <= np.abs(table).max(axis=1).max() / 254 + 1e-6


def test_packing_is_little_endian_bytes_along_k():
    rng = np.random.default_rng(1)
    g = quantize(_graph(rng.standard_normal((4, 32)).astype(np.float32),
                        rng.standard_normal((3, 16)).astype(np.float32)), "int8")
    arrays = {(t, p): a for t, p, a in _arrays(g)}
    q = g.weights["W"].data["q"]
    packed = arrays[("W", "q")]
    assert packed.dtype == np.dtype("<u4") and packed.shape == (4, 8)
    for j in range(8):
        for i in range(4):
            assert ((int(packed[2, j]) >> (8 * i)) & 0xFF) == (int(q[2, 4 * j + i]) & 0xFF)


def test_unknown_scheme_is_a_user_error():
    from monologue_compile.errors import MonologueError

    with pytest.raises(MonologueError, match="int4"):
        quantize(_graph(np.ones((2, 16), np.float32), np.ones((2, 16), np.float32)), "int4")


def test_int4_contract_and_nibble_packing():
    """int4: |q| <= 7, scale = max|w| / 7 per group, error at most half a step; stored two per
    byte along K (low nibble first), 8 per little-endian u32, and read back to the same values."""
    from monologue_compile.artifact import unpack_int4

    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 100)).astype(np.float32)
    q, s, g = quantize_array(w, 32, bits=4)
    assert g == 32 and q.shape == (6, 128) and s.shape == (6, 4) and np.abs(q).max() == 7
    blocks = np.pad(w, ((0, 0), (0, 28))).reshape(6, 4, 32)
    assert np.allclose(s, np.abs(blocks).max(axis=2) / 7)
    assert np.abs(q.reshape(6, 4, 32) * s[:, :, None] - blocks).max() <= s.max() / 2 + 1e-6
    hidden = Node("h", "matmul", ["x", "W"], {"prologue": None, "epilogue": []}, TensorType((1, "T", 6)))
    out = Node("y", "matmul", ["h", "O"], {"prologue": None, "epilogue": []}, TensorType((1, "T", 4)))
    g = Graph({"x": TensorType((1, "T", 100))}, {"W": Weight(w.shape, "f32", w),
              "O": Weight((4, 6), "f32", rng.standard_normal((4, 6)).astype(np.float32))}, [hidden, out], ["y"])
    g = quantize(g, "int4-g32")
    W = g.weights["W"]
    assert W.quant["bits"] == 4 and W.quant["scheme"] == "int4-g32" and np.abs(W.data["q"]).max() <= 7
    arrays = {(t, p): a for t, p, a in _arrays(g)}
    packed = arrays[("W", "q")]
    assert packed.dtype == np.dtype("<u4") and packed.shape == (6, 16)
    for j in (0, 5, 15):
        for i in range(8):
            nib = (int(packed[3, j]) >> (4 * i)) & 0xF
            assert nib - 16 * (nib >= 8) == W.data["q"][3, 8 * j + i]
    assert np.array_equal(unpack_int4(packed.view(np.int8)), W.data["q"])


def test_int4_keeps_the_output_projection_and_tables_int8():
    """The matmul the logits come from and every table stay int8 per row under an int4 scheme;
    the other matmuls are int4 with the scheme's group."""
    rng = np.random.default_rng(3)
    w, table = rng.standard_normal((24, 200)).astype(np.float32), rng.standard_normal((50, 40)).astype(np.float32)
    g = quantize(_graph(w, table), "int4-g64")
    assert g.weights["W"].quant["scheme"] == "int8" and g.weights["W"].quant["bits"] == 8  # y is an output
    assert g.weights["E"].quant == {"scheme": "int8", "bits": 8, "group": 48, "k_pad": 48, "groups": 1}


def test_int4_all_puts_the_output_projection_and_tables_at_4_bits():
    """`int4-gNN-all`: no int8 exceptions; the output projection and the table take the scheme's
    bits and group (a table as rows of k_pad, padded to the group), and each entry names it."""
    rng = np.random.default_rng(4)
    w, table = rng.standard_normal((24, 200)).astype(np.float32), rng.standard_normal((50, 40)).astype(np.float32)
    g = quantize(_graph(w, table), "int4-g64-all")
    assert g.meta["quant"] == "int4-g64-all"
    assert g.weights["W"].quant == {"scheme": "int4-g64-all", "bits": 4, "group": 64, "k_pad": 256, "groups": 4}
    assert g.weights["E"].quant == {"scheme": "int4-g64-all", "bits": 4, "group": 64, "k_pad": 64, "groups": 1}
    assert np.abs(g.weights["E"].data["q"]).max() <= 7
    ids = np.array([[0, 7, 49, 7]])
    assert np.array_equal(embedding_rows(g.weights["E"], ids), dense_weight(g.weights["E"])[ids])
    assert np.abs(dense_weight(g.weights["E"]) - table).max() <= np.abs(table).max() / 14 + 1e-6
