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

from monologue_compile.tokenizer import NANOCHAT_PATTERN, Tokenizer

CHUNK = 1 << 15


@pytest.fixture(scope="module")
def pair_ranks():
    ranks = [bytes([b]) for b in range(256)]
    ranks += [bytes([x, y]) for x in range(256) for y in range(256)]
    return ranks


def test_every_code_point_splits_like_tiktoken(pair_ranks):
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
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(code_points), CHUNK):
        chunk = code_points[start : start + CHUNK]
        # after "\n", a non-space always starts a new piece, so the probes cannot interact
        text = "".join(f"a{chr(c)}\n1{chr(c)}\n!{chr(c)}\n" for c in chunk)
        if tok.encode_ordinary(text) != oracle.encode_ordinary(text):
            wrong = [
                hex(c)
                for c in chunk
                if tok.encode_ordinary(f"a{chr(c)}\n1{chr(c)}\n!{chr(c)}\n")
                != oracle.encode_ordinary(f"a{chr(c)}\n1{chr(c)}\n!{chr(c)}\n")
            ]
            pytest.fail(f"{len(wrong)} code points split unlike tiktoken, e.g. {wrong[:20]}")
