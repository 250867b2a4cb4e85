"""Attention kernels against numpy: decode (flash-decoding partials + combine) and tiled prefill.

Covers GQA ratios (MHA, GQA, MQA), causal windows on and off, positions > 0, several splits,
prefill chunks that start after earlier tokens already sit in the cache, Gemma 2's score softcap
and ALiBi (Bloom, MPT).
"""

import numpy as np
import pytest

from monologue_compile.wgsl import kernels
from wgsl_harness import chromium_session, gpu  # noqa: F401 (fixtures)
from wgsl_harness import reference as ref
from wgsl_harness.tolerances import ATTENTION


def _terms(cap, H):
    """A row's `cap` as attention kwargs: a softcap, "alibi" (slopes 2^-h, as Bloom's for 8 heads, that bite
    over these caches' positions), "sinks" (a logit per head around the scores' size), or several."""
    caps = cap if isinstance(cap, tuple) else (cap,)
    kw = {"softcap": next((c for c in caps if isinstance(c, float)), None)}
    kw["alibi"] = [2.0 ** -(h + 1) for h in range(H)] if "alibi" in caps else None
    kw["sinks"] = [1.5 * h - 2.0 for h in range(H)] if "sinks" in caps else None
    return kw


def _cache(S, Hkv, D, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((S, Hkv, D)).astype(np.float32) * 2, rng.standard_normal((S, Hkv, D)).astype(np.float32))


@pytest.mark.parametrize("H,Hkv,D,S,chunk,pos,window,hb,cap", [
    (4, 4, 16, 64, 16, 0, None, None, None),    # first token, one key
    (4, 2, 16, 64, 16, 37, None, None, None),   # GQA (2 heads share loads), 3 splits, last one partial
    (6, 1, 32, 80, 32, 79, None, 3, None),      # MQA, 2 workgroups of 3 heads per kv head, cache full
    (6, 1, 32, 80, 32, 60, None, 1, None),      # MQA, one head per workgroup
    (4, 2, 8, 100, 8, 50, 19, None, None),      # window: 20 keys from 31, splits counted from the window start
    (2, 1, 12, 40, 64, 5, 3, None, None),       # window, a single split larger than the context
    (4, 2, 80, 300, 128, 250, None, None, None),  # threads loop over several keys and several dims
    (4, 2, 16, 64, 16, 37, 20, None, 1.5),      # softcap (scores of std ~2 capped at 1.5), window
    (4, 2, 16, 64, 16, 37, None, None, "alibi"),  # ALiBi, 3 splits
    (4, 2, 16, 64, 16, 37, 20, 1, (1.5, "alibi")),  # both, one head per workgroup
    (4, 2, 16, 64, 16, 37, 20, None, "sinks"),  # sinks (in the combine), window
    (4, 2, 16, 64, 16, 0, None, None, "sinks"),  # sinks beside one key
])
def test_attn_decode(H, Hkv, D, S, chunk, pos, window, hb, cap, gpu):
    kc, vc = _cache(S, Hkv, D, H + D + pos)
    q = np.random.default_rng(pos).standard_normal((1, H, D)).astype(np.float32)
    part, comb = kernels.attn_decode(H, Hkv, D, S, chunk=chunk, window_left=window, heads_per_wg=hb,
                                     **_terms(cap, H), covers=["test"])
    scratch = gpu.run(part, {"q": q, "k": kc, "v": vc},
                  {"ml": ((part.info["ml"],), np.float32), "o": ((part.info["o"],), np.float32)}, pos=pos)
    got = gpu.run(comb, scratch, {"out": ((H, D), np.float32)}, pos=pos)["out"]
    want = ref.attention(q, kc, vc, pos, Hkv, window, **_terms(cap, H))[0]
    np.testing.assert_allclose(got, want, **ATTENTION)


@pytest.mark.parametrize("H,Hkv,D,S,pos,window,wg,cap", [
    (4, 4, 16, 64, 0, None, 4, None),     # first token, one key
    (4, 2, 16, 64, 37, None, 4, None),    # GQA
    (6, 1, 32, 80, 79, None, 4, None),    # MQA, cache full, last workgroup partial
    (4, 2, 8, 100, 50, 19, 1, None),      # window: 20 keys from 31
    (2, 1, 12, 40, 5, 3, 8, None),        # window wider than the context so far
    (4, 2, 80, 300, 250, None, 2, None),  # long context, head_dim 80
    (4, 2, 16, 64, 37, 20, 4, 1.5),       # softcap, window
    (4, 2, 16, 64, 37, None, 4, (1.5, "alibi")),  # softcap and ALiBi
    (4, 2, 16, 64, 37, 20, 4, "sinks"),   # sinks, window
])
def test_attn_decode_per_head(H, Hkv, D, S, pos, window, wg, cap, gpu):
    """The `cpu` profile's attention: one invocation per head, one dispatch, no scratch."""
    kc, vc = _cache(S, Hkv, D, H + D + pos)
    q = np.random.default_rng(pos).standard_normal((1, H, D)).astype(np.float32)
    (k,) = kernels.attn_decode(H, Hkv, D, S, window_left=window, cooperative=False, wg=wg, **_terms(cap, H),
                               covers=["test"])
    assert k.workgroup_bytes == 0
    got = gpu.run(k, {"q": q, "k": kc, "v": vc}, {"out": ((H, D), np.float32)}, pos=pos)["out"]
    np.testing.assert_allclose(got, ref.attention(q, kc, vc, pos, Hkv, window, **_terms(cap, H))[0], **ATTENTION)


@pytest.mark.parametrize("T,n,H,Hkv,D,S,pos,window,block,cap", [
    (8, 8, 2, 2, 16, 16, 0, None, None, None),     # whole prompt from position 0
    (12, 11, 4, 2, 16, 40, 9, None, None, None),   # chunk at pos 9 over earlier cached keys, partial tile
    (16, 16, 3, 1, 32, 64, 20, None, 8, None),     # MQA, several key tiles per query tile
    (10, 10, 4, 4, 8, 48, 30, 5, 4, None),         # window smaller than a tile
    (7, 6, 2, 1, 20, 20, 3, 2, 8, None),           # head_dim 20: 5 vec4 over 8 threads per query; window
    (12, 11, 4, 2, 16, 40, 9, 6, None, 1.5),       # softcap, window
    (12, 11, 4, 2, 16, 40, 9, None, None, (1.5, "alibi")),  # softcap and ALiBi
    (12, 11, 4, 2, 16, 40, 9, 5, None, "sinks"),  # sinks over several tiles, window
])
def test_attn_prefill(T, n, H, Hkv, D, S, pos, window, block, cap, gpu):
    kc, vc = _cache(S, Hkv, D, T + H + pos)
    q = np.random.default_rng(T).standard_normal((T, H, D)).astype(np.float32)
    k = kernels.attn_prefill(T, H, Hkv, D, S, window_left=window, block=block, **_terms(cap, H), covers=["test"])
    got = gpu.run(k, {"q": q, "k": kc, "v": vc}, {"out": ((T, H, D), np.float32)}, pos=pos, n_tokens=n)["out"]
    want = np.zeros((T, H, D))
    want[:n] = ref.attention(q[:n], kc, vc, pos, Hkv, window, **_terms(cap, H))
    np.testing.assert_allclose(got, want, **ATTENTION)
