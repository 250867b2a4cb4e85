"""Hugging Face tokenizer.json styles: exactness against the `tokenizers` library on 20,000
generated hard strings per style, and single-threaded encode throughput of both on the same text.

    python benchmarks/bench_tokenizer_hf.py [--strings 20000] [--mb 4]

Each style's tokenizer.json is trained here with `tokenizers` (the test's configurations); the
throughput text is bench_tokenizer.py's generated corpus. Goal: 0 mismatches, ratio >= 1.
Then NFC and NFKC against `tokenizers` on every code point (the BERT-style normalizers', Nmt's and
Precompiled's every-code-point checks are in tests/test_tokenizer_hf.py). "llama3_engine" is Llama-3's pattern spelled so that it runs on the regex engine instead of the
hand-written fast path, and "o200k" (GPT-4o's pattern) always does: their throughput is the engine's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # `tokenizers` single-threaded, as ours is here
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bench_tokenizer import make_corpus  # noqa: E402
from test_tokenizer_hf import (  # noqa: E402
    BYTE_LEVEL_STYLES,
    SENTENCEPIECE_STYLES,
    UNIGRAM_STYLES,
    WORD_STYLES,
    hard_strings,
    normalizer_mismatches,
    normalizer_pair,
    train_hf,
)

from monologue_compile.tokenizer import Tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--strings", type=int, default=20_000)
    ap.add_argument("--mb", type=float, default=4)
    args = ap.parse_args()
    strings = hard_strings(args.strings, seed=11)
    docs = make_corpus(int(args.mb * 1e6))
    size = sum(len(d.encode("utf-8")) for d in docs)
    print(f"{'style':<18} {'strings':>8} {'mismatches':>10} {'ours MB/s':>10} {'tokenizers MB/s':>16} {'ratio':>6}")
    for style in BYTE_LEVEL_STYLES + SENTENCEPIECE_STYLES + UNIGRAM_STYLES + WORD_STYLES:
        hf = train_hf(style, strings[:2000] + docs[:200])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "tokenizer.json"
            hf.save(str(path))
            tok = Tokenizer.load(path)
        mismatches = sum(tok.encode(s) != hf.encode(s, add_special_tokens=False).ids for s in strings)
        started = time.thread_time()
        for d in docs:
            tok.encode_ordinary(d)
        ours = size / (time.thread_time() - started) / 1e6
        started = time.thread_time()
        for d in docs:
            hf.encode(d, add_special_tokens=False)
        theirs = size / (time.thread_time() - started) / 1e6
        print(f"{style:<18} {len(strings):>8} {mismatches:>10} {ours:>10.1f} {theirs:>16.1f} {ours / theirs:>6.2f}")
    for form in ("NFC", "NFKC"):
        with tempfile.TemporaryDirectory() as tmp:
            wrong = normalizer_mismatches(*normalizer_pair(form, Path(tmp)), range(0x110000))
        print(f"{form}: every code point, alone and among marks: {len(wrong)} differ from tokenizers {wrong[:10]}")


if __name__ == "__main__":
    main()
