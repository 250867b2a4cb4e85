"""Logit post-processing against numpy: softcap (clamped tanh), two-stage argmax, multi-stage top-k."""

import numpy as np
import pytest

from monologue_compile.wgsl import kernels
from wgsl_harness import chromium_session, gpu  # noqa: F401 (fixtures)
from wgsl_harness.tolerances import ELEMENTWISE


def test_softcap_saturates_without_nan(gpu):
    x = np.concatenate([np.linspace(-50, 50, 997), [1e30, -1e30, 3e38, -3e38]]).astype(np.float32)
    k = kernels.softcap(len(x), 15.0, covers=["test"])
    got = gpu.run(k, {"x": x}, {"x": (x.shape, np.float32)})["x"]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, 15 * np.tanh(x.astype(np.float64) / 15), **ELEMENTWISE)


def _argmax(gpu, x, **kw):
    s1, s2 = kernels.argmax(len(x), covers=["test"], **kw)
    pairs = gpu.run(s1, {"x": x}, {"pairs": ((s1.info["pairs"],), np.uint32)})
    out = gpu.run(s2, pairs, {"out": ((2,), np.uint32)})["out"]
    return int(out[0]), float(out[1:].view(np.float32)[0])


@pytest.mark.parametrize("cooperative", [True, False])
@pytest.mark.parametrize("N,wg,per_thread", [(1, 64, 1), (1000, 64, 4), (70001, 256, 16), (32768, 32, 256)])
def test_argmax(N, wg, per_thread, cooperative, gpu):
    x = np.random.default_rng(N).standard_normal(N).astype(np.float32)
    i, v = _argmax(gpu, x, wg=wg, per_thread=per_thread, cooperative=cooperative)
    assert i == int(np.argmax(x)) and v == x.max()


@pytest.mark.parametrize("cooperative", [True, False])
def test_argmax_ties_go_to_lowest_index_and_nan_never_wins(cooperative, gpu):
    x = np.zeros(5000, np.float32)
    x[[4321, 777, 3000]] = 2.5
    x[[5, 776, 4999]] = np.nan
    assert _argmax(gpu, x, wg=64, per_thread=4, cooperative=cooperative)[0] == 777


def _topk(gpu, x, k, **kw):
    stages = kernels.topk(len(x), k, covers=["test"], **kw)
    res = gpu.run(stages[0], {"vals": x}, {"vals_out": ((stages[0].info["out"],), np.float32),
                                       "ids_out": ((stages[0].info["out"],), np.uint32)})
    for st in stages[1:]:
        res = gpu.run(st, {"vals": res["vals_out"], "ids": res["ids_out"]},
                  {"vals_out": ((st.info["out"],), np.float32), "ids_out": ((st.info["out"],), np.uint32)})
    return len(stages), res["vals_out"], res["ids_out"]


@pytest.mark.parametrize("N,k,chunk,wg", [(100, 5, 256, 64), (5000, 64, 512, 128), (9000, 17, 256, 64)])
def test_topk(N, k, chunk, wg, gpu):
    x = np.random.default_rng(k).standard_normal(N).astype(np.float32)
    x[N // 3] = x[N // 2] = x.max() + 1  # a tie at the top: lower id first
    n_stages, vals, ids = _topk(gpu, x, k, chunk=chunk, wg=wg)
    order = np.lexsort((np.arange(N), -x))[:k]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_array_equal(vals, x[order])
    assert n_stages == (1 if N <= chunk else 2 if -(-N // chunk) * k <= chunk else 3)


def test_topk_fewer_entries_than_k(gpu):
    x = np.arange(10, dtype=np.float32)
    _, vals, ids = _topk(gpu, x, 16, chunk=256, wg=64)
    np.testing.assert_array_equal(ids[:10], np.arange(9, -1, -1))
    assert (ids[10:] == 0xFFFFFFFF).all() and (vals[10:] < -3e38).all()
