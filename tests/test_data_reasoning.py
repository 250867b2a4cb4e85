"""The built-in reasoning corpus: seeded, arithmetically right, and held-out problems stay out."""

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.data import reasoning
from training.data.reasoning import (
    FAMILIES, REASONING_FAMILIES, addition_thought, comparison_thought, counting_thought, heldout_conversations, is_heldout,
    multiplication_thought, sample_conversation, subtraction_thought, training_conversations,
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


def test_asking_for_more_heldout_problems_than_a_family_has_returns_all_it_has():
    # count has about 140 (a hundred-odd words times the letters asked); asking 1,000 once drew
    # 20 million problems before giving up
    count = heldout_conversations(1000, seed=0, families=("count",))
    assert 120 < len(count) < 1000 and len({c.key for c in count}) == len(count)
    assert all(c.family == "count" and is_heldout(c.key) for c in count)


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


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 99999), st.integers(2, 9))
def test_every_multiplication_column_is_a_table_fact_then_the_carry(a, m):
    """Re-derive each column from the digits the trace restates: the table fact, the carry added to
    it, the result growing by the new digit on the left, and the carry passed to the next column."""
    thought = multiplication_thought(a, m)
    columns = re.findall(r"(\d+)\*(\d): (\d)\*(\d)=(\d+), (\d+)\+(\d)=(\d+), (\d+) carry (\d)\.", thought)
    assert " ".join(f"{c[0]}*{c[1]}:" for c in columns) == " ".join(re.findall(r"\d+\*\d:", thought))
    rest, carry, result = str(a), 0, ""
    for restated, mm, x, mm2, p, p2, c, s, grown, next_carry in columns:
        assert (restated, int(mm), int(mm2)) == (rest or "0", m, m)
        assert int(x) == int(restated[-1]) and int(p) == int(x) * m and p2 == p and int(c) == carry
        assert int(s) == int(p) + carry and grown == str(int(s) % 10) + result and int(next_carry) == int(s) // 10
        rest, carry, result = rest[:-1], int(next_carry), grown
    assert not rest and carry == 0 and int(result) == a * m == _final(thought)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 99999), st.integers(0, 99999))
def test_every_subtraction_column_is_two_facts_of_two_operands(a, b):
    """Re-derive each column: the borrow added to the lower digit, that taken from the upper digit
    (ten borrowed when it is larger), the result growing on the left, the borrow passed on."""
    a, b = max(a, b), min(a, b)
    thought = subtraction_thought(a, b)
    columns = re.findall(r"(\d+)-(\d+): (\d)\+(\d)=(\d+), (\d)-(\d+)(?: is negative, 1(\d)-(\d+))?=(\d+), (\d+) borrow (\d)\.", thought)
    assert len(columns) == len(re.findall(r"\d+-\d+:", thought))
    rest_a, rest_b, borrow, result = str(a), str(b), 0, ""
    for ra, rb, y, bin_, lower, x, lower2, x2, lower3, d, grown, bout in columns:
        assert (ra, rb) == (rest_a, rest_b or "0") and int(y) == int((rest_b or "0")[-1]) and int(x) == int(ra[-1])
        assert int(bin_) == borrow and int(lower) == int(y) + borrow and lower2 == lower
        negative = int(x) < int(lower)
        assert bool(x2) == negative and int(bout) == negative and (not negative or (x2, lower3) == (x, lower))
        assert int(d) == int(x) + 10 * negative - int(lower) and grown == d + result
        rest_a, rest_b, borrow, result = rest_a[:-1], rest_b[:-1], int(bout), grown
    assert not rest_a and borrow == 0 and int(result) == a - b == _final(thought)


def test_subtraction_trace_format():
    assert subtraction_thought(905, 478) == (
        "905-478: 8+0=8, 5-8 is negative, 15-8=7, 7 borrow 1. 90-47: 7+1=8, 0-8 is negative, 10-8=2, 27 borrow 1. "
        "9-4: 4+1=5, 9-5=4, 427 borrow 0. Answer 427.")


def test_multiplication_trace_format():
    assert multiplication_thought(47, 6) == (
        "47*6: 7*6=42, 42+0=42, 2 carry 4. 4*6: 4*6=24, 24+4=28, 82 carry 2. 0*6: 0*6=0, 0+2=2, 282 carry 0. Answer 282."
    )


@pytest.mark.parametrize("word", reasoning.WORDS)
def test_counting_spells_every_word_and_keeps_a_running_tally(word):
    for letter in sorted(set(word)) + ["q"]:
        thought = counting_thought(word, letter)
        head, steps, total = re.fullmatch(r"(Spell \w+ and count \w): (.*)\. So (\d+)\.", thought).groups()
        assert head == f"Spell {word} and count {letter}"
        tally = 0
        spelled = ""
        for step in steps.split(", "):
            ch, vs, target, verdict, running = step.split(" ")
            assert (vs, target) == ("vs", letter)
            assert verdict == ("yes" if ch == letter else "no")
            tally += verdict == "yes"
            assert int(running) == tally
            spelled += ch
        assert spelled == word and int(total) == word.count(letter)


def test_counting_trace_format():
    assert counting_thought("berry", "r") == (
        "Spell berry and count r: b vs r no 0, e vs r no 0, r vs r yes 1, r vs r yes 2, y vs r no 2. So 2.")


def test_word_problems_write_the_equation_of_their_story_then_its_family_trace():
    rng = random.Random(0)
    traces = {"+": addition_thought, "-": subtraction_thought, "*": multiplication_thought}
    ops = set()
    for _ in range(300):
        c = sample_conversation(rng, "word")
        x, op, y, trace = re.fullmatch(r"Equation: (\d+) ([-+*]) (\d+)\. (.*)", c.thought).groups()
        numbers = [int(n) for n in re.findall(r"\d+", c.user)]
        assert sorted(numbers) == sorted([int(x), int(y)])
        assert op == {"gets": "+", "gives": "-", "boxes": "*"}[next(w for w in ("gets", "gives", "boxes") if w in c.user)]
        assert trace == traces[op](int(x), int(y))
        assert c.answer == f"{x} {op} {y} = {_final(trace)}."
        ops.add(op)
    assert ops == set("+-*")


def test_every_family_fits_the_demo_context():
    """The longest problems, rendered with a tokenizer trained on the corpus, fit the demo model's
    sequence length whole: training sees them uncut and the eval never truncates a right reply."""
    from training.presets import get_preset
    from training.train import train_tokenizer

    sample = list(training_conversations(1500, seed=0))
    tokenizer = train_tokenizer([f"{c.user}\n{c.thought}\n{c.answer}" for c in sample], 1024)
    longest = {
        "add": reasoning.Conversation("add", "", "What do you get when you add 999 and 999?", addition_thought(999, 999), "999 + 999 = 1998."),
        "mul": reasoning.Conversation("mul", "", "What is 999 * 9?", multiplication_thought(999, 9), "999 * 9 = 8991."),
        "count": reasoning.Conversation("count", "", "How many times does the letter s appear in mississippi?",
                                        counting_thought("mississippi", "s"), "The letter s appears 4 times."),
        "compare": reasoning.Conversation("compare", "", "What is the larger of 9998 and 9999?", comparison_thought(9998, 9999), "9999 is larger."),
    }
    for c in [*longest.values(), *sample]:
        assert len(tokenizer.render_conversation(c.messages())[0]) <= get_preset("demo").model.sequence_len, c.thought


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
            word = re.search(r"Spell (\w+) and", c.thought).group(1)
            assert word in c.user
            letter = re.fullmatch(r"The letter (\w) appears \d+ times?\.", c.answer).group(1)
            assert f"appears {word.count(letter)} time" in c.answer
        assert c.thought and c.answer and c.user


@pytest.mark.parametrize("a, b", [(4096, 4069), (4712, 87), (59, 664), (1000, 999), (7, 7000), (1234, 1235), (5, 3), (90, 19)])
def test_comparison_reads_lengths_then_digits_from_the_left(a, b):
    """Re-read the trace: the length pass drops one digit of each per step, the digit pass one digit
    from the left per step, and the verdict follows from them."""
    thought = comparison_thought(a, b)
    lengths = re.match(r"Lengths: (.*?): ", thought).group(1).split(", ")
    x, y = str(a), str(b)
    for step in lengths:
        assert step == f"{x or 'none'} vs {y or 'none'}"
        if not (x and y):
            break
        x, y = x[:-1], y[:-1]
    assert len(lengths) == min(len(str(a)), len(str(b))) + 1
    if len(str(a)) != len(str(b)):
        assert f": {max(a, b)} is longer." in thought and "From the left" not in thought
    else:
        digits = re.findall(r"(\d+) vs (\d+): (\d)([=<>])(\d)\.", thought.split("From the left:")[1])
        for i, (rest_a, rest_b, da, rel, db) in enumerate(digits):
            assert (rest_a, rest_b) == (str(a)[i:], str(b)[i:]) and (da, db) == (rest_a[0], rest_b[0])
            assert rel == ("=" if da == db else ">" if da > db else "<")
        assert [d[3] for d in digits[:-1]] == ["="] * (len(digits) - 1) and digits[-1][3] != "="
    assert thought.endswith(f"So {max(a, b)} is larger.")


def test_words_are_unique_and_lowercase():
    assert len(set(reasoning.WORDS)) == len(reasoning.WORDS)
    assert all(w.isalpha() and w.islower() for w in reasoning.WORDS)


def test_spelling_copies_the_asked_word_then_its_letters():
    rng = random.Random(3)
    for _ in range(50):
        c = FAMILIES["spell"](rng)
        word = c.key.split(":")[1]
        assert word in c.user.split(" ")[-1] or f" {word} " in c.user
        assert c.thought == f"Spell {word}: {' '.join(word)}." and c.answer.replace(" ", "") == word
