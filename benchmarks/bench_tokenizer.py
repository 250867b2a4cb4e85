"""Tokenizer benchmark: training time vs Hugging Face `tokenizers`' BPE trainer, and encode
throughput vs tiktoken, on one generated corpus of mixed text (default 24 MB).

    python benchmarks/bench_tokenizer.py [--mb 24] [--vocab-size 32768]

Both trainers get the same texts, the same vocabulary size (special tokens included), the same
split pattern and byte-level alphabet; both use every core. Encoding compares single-threaded
`encode_ordinary` per document, with tiktoken given exactly our ranks and pattern. Goals: training
at least as fast as `tokenizers`, encoding within 2x of tiktoken.
"""

from __future__ import annotations

import argparse
import random
import time
from itertools import accumulate

from monologue_compile.tokenizer import NANOCHAT_PATTERN, SPECIAL_TOKENS, Tokenizer

SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ou", "ea")]
CYRILLIC = "абвгдежзийклмнопрстуфхцчшщыэюя"
CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]


def make_corpus(total_bytes: int, seed: int = 0) -> list[str]:
    """Documents of Zipf-distributed pseudo-words with punctuation, numbers, code, Cyrillic and
    CJK passages, so word counts look like natural text's."""
    rng = random.Random(seed)
    latin = ["".join(rng.choices(SYLLABLES, k=rng.choice([1, 1, 2, 2, 3, 4]))) for _ in range(60_000)]
    cyrillic = ["".join(rng.choices(CYRILLIC, k=rng.randint(2, 10))) for _ in range(10_000)]
    cum_weights = list(accumulate(1 / (rank + 1) for rank in range(len(latin))))
    extras = [",", ".", "!", "?", "\n", "\n\n", "(x)", "it's", "we'll", "    return x;\n"]
    docs, size = [], 0
    while size < total_bytes:
        parts = rng.choices(latin, cum_weights=cum_weights, k=rng.randint(20, 400))
        for i in range(len(parts)):
            roll = rng.random()
            if roll < 0.08:
                parts[i] = parts[i].capitalize()
            elif roll < 0.14:
                parts[i] = rng.choice(cyrillic)
            elif roll < 0.18:
                parts[i] = "".join(rng.choices(CJK, k=rng.randint(1, 6)))
            elif roll < 0.23:
                parts[i] = str(rng.randint(0, 10 ** rng.randint(1, 6)))
            elif roll < 0.28:
                parts[i] = rng.choice(extras)
        doc = " ".join(parts)
        docs.append(doc)
        size += len(doc.encode("utf-8"))
    return docs


def bench_hf_training(docs: list[str], vocab_size: int) -> float:
    from tokenizers import Regex
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern=Regex(NANOCHAT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        min_frequency=0,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(SPECIAL_TOKENS),
    )
    started = time.perf_counter()
    hf.train_from_iterator(docs, trainer=trainer)
    elapsed = time.perf_counter() - started
    print(f"  tokenizers: vocab {hf.get_vocab_size()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=24.0, help="corpus size in MB")
    parser.add_argument("--vocab-size", type=int, default=32768)
    args = parser.parse_args()

    started = time.perf_counter()
    docs = make_corpus(int(args.mb * 1e6))
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    print(f"corpus: {len(docs)} documents, {n_bytes / 1e6:.1f} MB (generated in {time.perf_counter() - started:.1f} s)")

    print(f"training to vocab size {args.vocab_size}:")
    started = time.perf_counter()
    tok = Tokenizer.train(docs, vocab_size=args.vocab_size)
    ours = time.perf_counter() - started
    print(f"  monologue : vocab {tok.vocab_size}")
    hf = bench_hf_training(docs, args.vocab_size)
    print(f"  monologue {ours:.2f} s, tokenizers {hf:.2f} s -> monologue is {hf / ours:.2f}x the speed of tokenizers")

    import tiktoken

    oracle = tiktoken.Encoding("bench", pat_str=tok.pattern, mergeable_ranks=tok.ranks(), special_tokens={})
    print("encoding (encode_ordinary per document, one thread):")
    timings = {}
    for name, encode in [("tiktoken", oracle.encode_ordinary), ("monologue", tok.encode_ordinary)]:
        encode(docs[0])  # warm-up
        started = time.perf_counter()
        n_tokens = sum(len(encode(d)) for d in docs)
        timings[name] = time.perf_counter() - started
        print(f"  {name:9s}: {n_tokens} tokens, {n_bytes / timings[name] / 1e6:.1f} MB/s")
    ratio = timings["monologue"] / timings["tiktoken"]
    print(f"  monologue takes {ratio:.2f}x tiktoken's time (goal: <= 2x)")

    print("batch encoding (all cores):")
    batch_timings = {}
    for name, encode_batch in [("tiktoken", oracle.encode_ordinary_batch), ("monologue", tok.encode_ordinary_batch)]:
        started = time.perf_counter()
        n_tokens = sum(len(ids) for ids in encode_batch(docs))
        batch_timings[name] = time.perf_counter() - started
        print(f"  {name:9s}: {n_tokens} tokens, {n_bytes / batch_timings[name] / 1e6:.1f} MB/s")
    print(f"  monologue takes {batch_timings['monologue'] / batch_timings['tiktoken']:.2f}x tiktoken's time")
    assert tok.encode_ordinary(docs[1]) == oracle.encode_ordinary(docs[1])


if __name__ == "__main__":
    main()
