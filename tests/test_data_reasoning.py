"""The built-in reasoning corpus: seeded, arithmetically right, and held-out problems stay out."""

import random
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from training.data import reasoning
from training.data.reasoning import (
    FAMILIES, REASONING_FAMILIES, addition_thought, heldout_conversations, is_heldout, multiplication_thought,
    sample_conversation, subtraction_thought, training_conversations,
)


def test_same_seed_same_corpus_and_other_seed_differs():
    first = [c.messages() for c in training_conversations(300, seed=5)]
    assert first == [c.messages() for c in training_conversations(300, seed=5)]
    assert first != [c.messages() for c in training_conversations(300, seed=6)]


def test_training_never_contains_a_heldout_problem():
    heldout = {c.key for c in heldout_conversations(40, seed=0)}
    train_keys = {c.key for c in training_conversations(20000, seed=0)}
    assert heldout and all(is_heldout(k) for k in heldout)
    assert not heldout & train_keys
    assert not any(is_heldout(k) for k in train_keys if not k.startswith("chat:"))


def test_heldout_split_is_a_small_stable_share():
    keys = {sample_conversation(random.Random(i), "add").key for i in range(4000)}
    share = sum(map(is_heldout, keys)) / len(keys)
    assert 0.02 < share < 0.09
    assert is_heldout("add:12:34") == is_heldout("add:12:34")


def test_heldout_set_is_deterministic_distinct_and_covers_every_family():
    a, b = heldout_conversations(10, seed=3), heldout_conversations(10, seed=3)
    assert [c.key for c in a] == [c.key for c in b]
    assert len({c.key for c in a}) == len(a)
    assert {c.family for c in a} == set(REASONING_FAMILIES)


def test_mix_draws_every_family():
    families = {c.family for c in training_conversations(2000, seed=1)}
    assert families == set(FAMILIES)


def _final(thought):
    return int(re.search(r"Answer (\d+)\.$", thought).group(1))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 99999), st.integers(0, 99999))
def test_column_addition_and_subtraction_are_right(a, b):
    assert _final(addition_thought(a, b)) == a + b
    hi, lo = max(a, b), min(a, b)
    assert _final(subtraction_thought(hi, lo)) == hi - lo


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 99999), st.integers(2, 9))
def test_multiplication_by_a_digit_is_right(a, m):
    assert _final(multiplication_thought(a, m)) == a * m


def test_every_step_carries_explicitly():
    assert addition_thought(95, 17) == (
        "95+17: 5+7+0=12, 2 carry 1. 9+1: 9+1+1=11, 12 carry 1. 0+0: 0+0+1=1, 112 carry 0. Answer 112."
    )


def test_answers_match_the_problem():
    rng = random.Random(0)
    for _ in range(300):
        c = sample_conversation(rng, rng.choice(REASONING_FAMILIES))
        if c.family in ("add", "sub", "mul"):
            a, op, b, result = re.fullmatch(r"(\d+) ([-+*]) (\d+) = (\d+)\.", c.answer).groups()
            assert int(result) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        elif c.family == "compare":
            numbers = [int(n) for n in re.findall(r"\d+", c.user)]
            assert c.answer == f"{max(numbers)} is larger."
        elif c.family == "count":
            letter, word = re.fullmatch(r"The letter (\w) appears \d+ times? in (\w+)\.", c.answer).groups()
            assert f"appears {word.count(letter)} time" in c.answer
        assert c.thought and c.answer and c.user


def test_words_are_unique_and_lowercase():
    assert len(set(reasoning.WORDS)) == len(reasoning.WORDS)
    assert all(w.isalpha() and w.islower() for w in reasoning.WORDS)
