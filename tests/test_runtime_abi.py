"""The native runtime's C ABI beyond parity: SHA-256 against hashlib, context management (a full
context ends cleanly and leaves the cache intact), bad ids, the seeded sampler, and chat turns
streamed as thought/answer pieces that agree with the Python chat's splitter."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from conftest import tiny_model
from monologue_compile.artifact import load_model
from monologue_compile.backends.native import CONTEXT_FULL, ERROR, NativeModel, RuntimeCallError, sha256
from monologue_compile.backends.rust_crate import build_native, emit_crate
from monologue_compile.chat import ThoughtSplitter
from monologue_compile.tokenizer import Tokenizer
from test_runtime_native_parity import compile_model, needs_cargo

pytestmark = needs_cargo


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("abi")
    dist = compile_model(tmp, tiny_model())
    g, manifest, tok = load_model(dist)
    lib = build_native(emit_crate(g, tmp / "runtime_rs"), fast=True)
    return dist, lib, manifest, Tokenizer.from_json(tok)


def test_sha256_matches_hashlib(built):
    _, lib, _, _ = built
    rng = np.random.default_rng(0)
    for n in list(range(0, 130)) + [1000, 4095, 65536, 1 << 20]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert sha256(lib, data) == hashlib.sha256(data).hexdigest(), n


def test_context_full_is_refused_and_cache_kept(built):
    dist, lib, _, _ = built
    m = NativeModel.from_dist(dist, lib_path=lib)
    ids = list(range(10, 10 + 90))
    m.forward(ids)
    with pytest.raises(RuntimeCallError) as e:
        m.forward(list(range(7)))  # 90 + 7 > 96
    assert e.value.code == CONTEXT_FULL and "sequence_len" in e.value.message
    assert m.pos == 90
    tail = m.forward([5, 6, 7, 8, 9, 10])  # exactly fills the context
    fresh = NativeModel.from_dist(dist, lib_path=lib).forward(ids + [5, 6, 7, 8, 9, 10])[-6:]
    np.testing.assert_allclose(tail, fresh, rtol=0, atol=1e-5)
    with pytest.raises(RuntimeCallError) as e:
        m.forward([1])
    assert e.value.code == CONTEXT_FULL


def test_bad_inputs_are_errors(built):
    dist, lib, _, _ = built
    m = NativeModel.from_dist(dist, lib_path=lib)
    for bad in ([288], [1, 2, 10**6], []):
        with pytest.raises(RuntimeCallError) as e:
            m.forward(bad)
        assert e.value.code == ERROR
    assert m.pos == 0
    with pytest.raises(RuntimeCallError) as e:
        m.chat_step()  # no turn started
    assert e.value.code == ERROR


def test_seeded_sampler_is_deterministic(built):
    dist, lib, _, _ = built
    runs = []
    for seed in (1, 1, 2):
        m = NativeModel.from_dist(dist, lib_path=lib)
        m.set_sampler(temperature=1.0, top_k=50, top_p=0.95, repetition_penalty=1.1, seed=seed)
        m.forward([1, 2, 3])
        runs.append([m.next_token() for _ in range(30)])
        assert m.pos == 33
    assert runs[0] == runs[1] and runs[0] != runs[2]
    m = NativeModel.from_dist(dist, lib_path=lib)  # greedy: the argmax of a twin's logits every step
    twin = NativeModel.from_dist(dist, lib_path=lib)
    m.forward([1, 2, 3])
    logits = twin.forward([1, 2, 3])[-1]
    for _ in range(10):
        t = m.next_token()
        assert t == int(np.argmax(logits))
        logits = twin.forward([t])[-1]


def _turn(m, prompt, max_tokens):
    m.chat_start(prompt, max_tokens)
    steps = []
    while True:
        s = m.chat_step()
        steps.append(s)
        if s["done"]:
            return steps


def test_chat_turn_streams_thought_and_answer(built):
    dist, lib, manifest, tok = built
    specials = manifest["special_tokens"]
    think = {specials["<think>"], specials["</think>"]}
    prompt = tok.render_for_completion([{"role": "user", "content": "2+2?"}])
    for seed in range(200):  # a seed whose random reply holds a think tag, so that path is exercised
        m = NativeModel.from_dist(dist, lib_path=lib)
        m.set_sampler(temperature=1.0, seed=seed)
        steps = _turn(m, prompt, 40)
        ids = [s["token"] for s in steps if s["token"] is not None]
        if think & set(ids) and steps[-1]["done"] == "max_tokens":
            break
    else:
        pytest.fail("no seed gave a think tag")
    assert len(ids) == 40 and steps[-1]["token"] is None
    # the Python chat's splitter on the decoded text is the oracle for the streamed pieces
    text = tok.decode(ids)
    exp = {"thought": "", "answer": ""}
    for part, start, end in ThoughtSplitter._segments(text, len(text)):
        exp[part] += text[start:end]
    got = {"thought": "", "answer": ""}
    for s in steps:
        for part, piece in s["pieces"]:
            got[part] += piece
    assert got == exp


def test_chat_ends_at_stop_and_at_full_context(built):
    dist, lib, manifest, tok = built
    m = NativeModel.from_dist(dist, lib_path=lib)
    # a prompt of 90 tokens leaves 6 positions: the turn ends with "context" after 6 tokens
    prompt = [int(x) for x in np.random.default_rng(1).integers(0, 256, 89)] + [manifest["special_tokens"]["<|assistant_start|>"]]
    m.set_sampler(temperature=0.0)
    steps = _turn(m, prompt, 500)
    if steps[-1]["done"] != "stop":
        assert steps[-1]["done"] == "context"
        assert len([s for s in steps if s["token"] is not None]) == 7  # 6 fed + the last, not fed
        assert m.pos == 96
    assert m.chat_step()["done"] == steps[-1]["done"]  # a finished turn stays finished
    with pytest.raises(RuntimeCallError) as e:
        m.chat_start(list(range(96)), 5)
    assert e.value.code == CONTEXT_FULL
    # the cache is reused across turns: a prompt extending the history only runs the new tokens
    m2 = NativeModel.from_dist(dist, lib_path=lib)
    p1 = tok.render_for_completion([{"role": "user", "content": "hi"}])
    steps = _turn(m2, p1, 5)
    history_len = m2.pos
    ids = [s["token"] for s in steps if s["token"] is not None]
    assert history_len == len(p1) + len(ids) - (1 if steps[-1]["done"] == "stop" else 0)
