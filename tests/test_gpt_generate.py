"""Reference decoding: the KV-cached path gives exactly the tokens of full recomputation."""

import pytest
import torch

from monologue_compile.models.gpt import GPT, GPTConfig


# Tiny models run fastest on one thread, and much faster when other jobs share the cores.
pytestmark = pytest.mark.usefixtures("torch_single_thread")


def make_model(**overrides):
    torch.manual_seed(0)
    cfg = GPTConfig(**{**dict(sequence_len=48, vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=32), **overrides})
    return GPT(cfg).init_weights(zero_init_outputs=False).eval()


SAMPLING = [
    dict(temperature=0.0),
    dict(temperature=1.0, seed=3),
    dict(temperature=0.8, top_k=5, seed=4),
    dict(temperature=1.2, top_p=0.7, seed=5),
]


@pytest.mark.parametrize("sampling", SAMPLING)
@pytest.mark.parametrize("overrides", [{}, {"n_kv_head": 1}, {"tie_embeddings": True, "softcap": 0.0}])
def test_cached_and_uncached_decoding_agree(sampling, overrides):
    model = make_model(**overrides)
    prompt = [3, 14, 15, 9, 26]
    cached = model.generate(prompt, 30, use_cache=True, **sampling)
    uncached = model.generate(prompt, 30, use_cache=False, **sampling)
    assert cached == uncached
    assert len(cached) == 30


def test_generation_stops_after_a_stop_token():
    model = make_model()
    free = model.generate([1, 2, 3], 30, temperature=1.0, seed=7)
    stop = free[5]
    stopped = model.generate([1, 2, 3], 30, temperature=1.0, seed=7, stop_tokens=(stop,))
    assert stopped == free[: free.index(stop) + 1]


def test_sampling_is_reproducible_by_seed():
    model = make_model()
    runs = {tuple(model.generate([1, 2], 20, temperature=1.5, seed=s)) for s in (1, 1, 2)}
    assert len(runs) == 2


def test_generation_never_runs_past_sequence_len():
    model = make_model(sequence_len=16)
    assert len(model.generate(list(range(10)), 100)) == 6


def test_top_k_one_is_greedy():
    model = make_model()
    assert model.generate([5, 6], 15, temperature=1.0, top_k=1, seed=9) == model.generate([5, 6], 15)
