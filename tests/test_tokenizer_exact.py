"""encode_ordinary equals tiktoken's (same ranks, same pattern) on a generated corpus of hard
strings, and decode(encode(s)) == s for arbitrary Unicode."""

import random

import pytest

tiktoken = pytest.importorskip("tiktoken")

from hypothesis import given, settings
from hypothesis import strategies as st

from monologue_compile.tokenizer import Tokenizer

N_STRINGS = 12_000

WHITESPACE = [chr(c) for c in (*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)]
NOT_WHITESPACE_LOOKALIKES = ["\x1c", "\x1d", "\x1e", "\x1f", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u180e"]
CONTROLS = [chr(c) for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))]
WORDS = [
    "hello", "World", "naïve", "Straße", "ǅemal", "ΑΘΗΝΑ", "мир", "Привет", "שָׁלוֹם", "مرحبا", "नमस्ते",
    "สวัสดี", "안녕하세요", "こんにちは", "カタカナ", "漢字", "中文字符", "ﬁne", "ｆｕｌｌ", "İstanbul", "ǈ", "ᏣᎳᎩ",
]
DIGITS = ["0", "7", "42", "123", "98765", "٣٤٥", "०१२", "１２３", "²³", "½", "Ⅻ", "①②", "𝟙𝟚", "٫"]
CONTRACTIONS = ["'s", "'S", "'t", "'T", "'d", "'M", "'ll", "'LL", "'lL", "'Ll", "'ve", "'VE", "'vE", "'re", "'RE",
                "'rE", "'ſ", "'", "''", "’s", "'x", "'l", "'v", "'r"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵🇺🇸", "❤️", "🧑🏿‍🚀", "#️⃣", "👩‍❤️‍💋‍👨"]
COMBINING = ["e\u0301", "a\u0308\u0304", "\u0301", "क्षि", "ñ", "o\u20dd", "Z\u0336\u0335"]
PUNCT = [".", ",", "!", "?", "...", "--", "—", "(", ")", "[", "]", "{", "}", "<", ">", "<|bos|>", "@#$%", "«»",
         "“", "”", "、", "。", "…", "\\", "/", "_", "~", "`"]


def random_code_point(rng: random.Random) -> str:
    c = rng.choice([rng.randrange(0x80), rng.randrange(0x800), rng.randrange(0x10000), rng.randrange(0x110000)])
    return chr(c)  # may be a lone surrogate: both sides replace it with U+FFFD


def random_string(rng: random.Random) -> str:
    pools = [WHITESPACE, NOT_WHITESPACE_LOOKALIKES, CONTROLS, WORDS, DIGITS, CONTRACTIONS, EMOJI, COMBINING, PUNCT]
    parts = []
    for _ in range(rng.randint(1, 25)):
        roll = rng.random()
        if roll < 0.15:
            parts.append(random_code_point(rng))
        elif roll < 0.3:
            parts.append("".join(rng.choices(WHITESPACE + ["\r\n", "\n\n"], k=rng.randint(1, 6))))
        else:
            parts.append(rng.choice(rng.choice(pools)))
    return "".join(parts)


@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(1234)
    return [random_string(rng) for _ in range(N_STRINGS)]


@pytest.fixture(scope="module")
def tok(corpus):
    # merges learned on the same kinds of text, so multi-byte tokens of every script occur
    return Tokenizer.train(corpus[: N_STRINGS // 2], vocab_size=3000)


@pytest.fixture(scope="module")
def oracle(tok):
    return tiktoken.Encoding("oracle", pat_str=tok.pattern, mergeable_ranks=tok.ranks(), special_tokens={})


def test_training_learned_multi_byte_merges(tok):
    assert tok.vocab_size == 3000
    assert sum(len(b) > 1 for b in tok.ranks()) > 2000


def test_encode_ordinary_equals_tiktoken_on_every_string(tok, oracle, corpus):
    mismatches = [s for s in corpus if tok.encode_ordinary(s) != oracle.encode_ordinary(s)]
    assert not mismatches, f"{len(mismatches)} of {len(corpus)} differ, e.g. {mismatches[:3]!r}"


def test_corpus_covers_the_hard_cases(corpus):
    text = "".join(corpus)
    for needle in ["\u2028", "\u3000", "\x85", "\x1c", "'ſ", "'lL", "👨‍👩‍👧‍👦", "e\u0301", "٣٤٥", "\r\n", "\x00"]:
        assert needle in text, needle


def test_long_texts_equal_tiktoken(tok, oracle, corpus):
    joined = "".join(corpus[:3000])
    assert tok.encode_ordinary(joined) == oracle.encode_ordinary(joined)
    long_run = "a" * 5000 + " " * 3000 + "1" * 777 + "!" * 2000 + "\n" * 100
    assert tok.encode_ordinary(long_run) == oracle.encode_ordinary(long_run)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200))
def test_decode_inverts_encode(tok, text):
    assert tok.decode(tok.encode_ordinary(text)) == text
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=100))
def test_arbitrary_unicode_matches_tiktoken(tok, oracle, text):
    assert tok.encode_ordinary(text) == oracle.encode_ordinary(text)


def test_a_pattern_no_fast_path_knows_trains_and_encodes_like_tiktoken(corpus):
    """GPT-4o's pattern runs on the Rust regex engine, in training and encoding; tiktoken's
    regex engine (fancy-regex) splits the same."""
    from test_tokenizer_hf import O200K_PATTERN

    tok = Tokenizer.train(corpus[:2000], vocab_size=800, pattern=O200K_PATTERN)
    oracle = tiktoken.Encoding("o200k-style", pat_str=O200K_PATTERN, mergeable_ranks=tok.ranks(), special_tokens={})
    assert tok.pattern == O200K_PATTERN
    mismatches = [s for s in corpus[:4000] if tok.encode_ordinary(s) != oracle.encode_ordinary(s)]
    assert not mismatches, f"{len(mismatches)} differ, e.g. {mismatches[:3]!r}"
