"""BPE training with incremental pair-count updates learns exactly the merges of a naive trainer
that recounts every pair after every merge (same tie-break: most frequent pair, then the pair
with the smallest ids; bytes spelled by an earlier token reuse its id)."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

regex = pytest.importorskip("regex")  # tiktoken's dependency; splits like tiktoken on these texts

from monologue_compile.tokenizer import NANOCHAT_PATTERN, Tokenizer


def naive_ranks(texts, n_ranks):
    """Token bytes by rank, recounting all pairs for every merge."""
    words = Counter()
    for text in texts:
        for piece in regex.findall(NANOCHAT_PATTERN, text):
            words[tuple(piece.encode("utf-8"))] += 1
    tokens = [bytes([b]) for b in range(256)]
    ids = {t: i for i, t in enumerate(tokens)}
    while len(tokens) < n_ranks:
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = tokens[best[0]] + tokens[best[1]]
        if merged not in ids:
            ids[merged] = len(tokens)
            tokens.append(merged)
        new_id = ids[merged]
        merged_words = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged_words[tuple(out)] += n
        words = merged_words
    return tokens


def trained_ranks(texts, n_ranks):
    tok = Tokenizer.train(texts, vocab_size=n_ranks, special_tokens=[])
    return [token for token, _ in sorted(tok.ranks().items(), key=lambda kv: kv[1])]


words = st.sampled_from(["aa", "ab", "ba", "aaa", "abab", "the", "then", "hen", "é", "ée", "12", "x"])
texts = st.lists(st.lists(words, min_size=1, max_size=12).map(" ".join), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(texts, st.integers(257, 320))
def test_incremental_training_equals_naive_recount(texts, n_ranks):
    assert trained_ranks(texts, n_ranks) == naive_ranks(texts, n_ranks)


def test_equals_naive_recount_on_prose():
    prose = [
        "It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.",
        "Aaaaa!!! 1234567 aaaa aaa aa a — bananas and ananas; banana-nana.\n\n\tthe end",
    ] * 3
    assert trained_ranks(prose, 420) == naive_ranks(prose, 420)


def test_runs_out_of_pairs_gracefully():
    tok = Tokenizer.train(["ab ab"], vocab_size=1000)
    assert len(tok.ranks()) < 1000 - 11
    assert tok.vocab_size == len(tok.ranks()) + 11
