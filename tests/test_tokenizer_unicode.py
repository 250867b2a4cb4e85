"""The pre-tokenizer's character classes (\\p{L}, \\p{N}, \\s) agree with tiktoken's regex engine
on every Unicode code point.

Each code point c is probed in three contexts, "a"+c, "1"+c and "!"+c, whose split depends on
whether c is a letter, a number, whitespace or other. Every two-byte sequence is a token ranked
by its first byte, so the token sequence shows where the splits fell.
"""

import pytest

tiktoken = pytest.importorskip("tiktoken")

import base64
import json
import unicodedata

from monologue_compile.tokenizer import NANOCHAT_PATTERN, Tokenizer

CHUNK = 1 << 15


@pytest.fixture(scope="module")
def pair_ranks():
    ranks = [bytes([b]) for b in range(256)]
    ranks += [bytes([x, y]) for x in range(256) for y in range(256)]
    return ranks


@pytest.fixture(scope="module")
def tokenizers(pair_ranks):
    tok = Tokenizer.from_json(
        json.dumps(
            {
                "format": "monologue-tokenizer",
                "version": 1,
                "pattern": NANOCHAT_PATTERN,
                "ranks": [base64.b64encode(r).decode() for r in pair_ranks],
                "special_tokens": {},
            }
        )
    )
    oracle = tiktoken.Encoding(
        "pairs", pat_str=NANOCHAT_PATTERN, mergeable_ranks={r: i for i, r in enumerate(pair_ranks)}, special_tokens={}
    )
    return tok, oracle


def assert_probes_split_alike(tokenizers, code_points, probe):
    """`probe(c)` for every code point, many at a time; after "\n" a non-space always starts a
    new piece, so probes joined by "\n" cannot interact."""
    tok, oracle = tokenizers
    for start in range(0, len(code_points), CHUNK):
        chunk = code_points[start : start + CHUNK]
        text = "\n".join(probe(chr(c)) for c in chunk) + "\n"
        if tok.encode_ordinary(text) != oracle.encode_ordinary(text):
            wrong = [hex(c) for c in chunk if tok.encode_ordinary(probe(chr(c))) != oracle.encode_ordinary(probe(chr(c)))]
            pytest.fail(f"{len(wrong)} code points split unlike tiktoken, e.g. {wrong[:20]}")


def test_every_code_point_has_tiktokens_class(tokenizers):
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    assert_probes_split_alike(tokenizers, code_points, lambda c: f"a{c}\n1{c}\n!{c}")


def test_contractions_fold_case_like_tiktoken(tokenizers):
    # only letters can fold to the ASCII letters of 's 'd 'm 't 'll 've 're (e.g. U+017F)
    letters = [c for c in range(0x110000) if unicodedata.category(chr(c)).startswith("L")]
    assert_probes_split_alike(tokenizers, letters, lambda c: f"'{c}\n'{c}l\n'l{c}\n'{c}e\n'v{c}")
