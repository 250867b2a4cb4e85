"""Differential fuzz of the tokenizer.json reader against the `tokenizers` library: each case is a
tokenizer.json of one of tests/test_tokenizer_hf.py's styles (BPE byte-level and SentencePiece-style,
WordPiece, WordLevel, Unigram) with one to three of its normalizer, pre-tokenizer, model, decoder or
added-token fields changed (a wild value, a field dropped, a string cut or extended, a number scaled,
another field's value copied in). Both readers load it; where both accept it, the ids and the decode
of a set of hard strings must be the same.

    python benchmarks/fuzz_tokenizer_hf.py [--count 100] [--seed 0] [--styles gpt2,bert,...]

Prints one JSON line: counts of `same` (both accept, same results), `DIFFERENT` (both accept, results
differ: a bug here unless the library's behaviour is documented as not followed), `refused` (ours
refuses with a one-line error; `refused_library_reads` of those the library reads: a feature we do
not implement, named; the commonest such messages are listed), `library_refuses` (only ours reads
it), and `CRASH` (a panic or any other exception: a bug), then the first failures. The library
runs in a forked child: some files make it abort the process.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import tokenizers  # noqa: E402
import test_tokenizer_hf as styles  # noqa: E402

from monologue_compile.errors import MonologueError  # noqa: E402
from monologue_compile.tokenizer import Tokenizer  # noqa: E402

WILD = [None, True, False, 0, -1, 1, 2**40, -(2**31), 1.5, "", "x", "<unk>", "\u0000", [], {}, [1], ["a", "b"],
        {"type": "Sequence"}, "ab c", [["a", -1e30]], [["a", 1.0], ["a", 2.0]]]
PARTS = ("normalizer", "pre_tokenizer", "model", "decoder", "post_processor", "added_tokens")


def paths(node, at=()):
    """Every path into `node` (lists: their first 6 items), the vocabulary's and merges' entries left out."""
    if len(at) > 2 and at[:2] in (("model", "vocab"), ("model", "merges")):
        return
    yield at
    items = node.items() if isinstance(node, dict) else enumerate(node[:6]) if isinstance(node, list) else ()
    for key, value in items:
        yield from paths(value, at + (key,))


def mutated(doc: dict, rng: random.Random) -> dict:
    doc = copy.deepcopy(doc)
    for _ in range(rng.choice([1, 1, 2, 3])):
        spots = [p for p in paths(doc) if p and p[0] in PARTS]
        at = rng.choice(spots)
        parent = doc
        for key in at[:-1]:
            parent = parent[key]
        key, old = at[-1], parent[at[-1]]
        r = rng.random()
        if r < 0.5:
            parent[key] = rng.choice(WILD)
        elif r < 0.65 and isinstance(parent, dict):
            del parent[key]
        elif r < 0.8 and isinstance(old, str):
            tail = rng.choice(["", "\\", "(", "[", "é", "\u0000", "##", "</w>"])
            parent[key] = old[: rng.randrange(len(old) + 1)] + tail
        elif isinstance(old, (int, float)) and not isinstance(old, bool):
            parent[key] = rng.choice([old * 1000, -old, old + 1, 0])
        else:
            other = rng.choice(spots)
            value = doc
            for k in other:
                value = value[k]
            parent[key] = copy.deepcopy(value)
    return doc


def library_results(text: str, strings: list[str]):
    """[(ids, decode)] by the library in a forked child, or None where it refuses the file or dies."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            hf = tokenizers.Tokenizer.from_str(text)
            out = []
            for s in strings:
                ids = hf.encode(s, add_special_tokens=False).ids
                out.append([ids, hf.decode(ids, skip_special_tokens=False)])
            data = json.dumps(out).encode()
        except BaseException:  # noqa: BLE001 - any refusal counts the same
            data = b"null"
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data) if data else None


def our_results(text: str, strings: list[str]):
    tok = Tokenizer.from_json(text)
    out = []
    for s in strings:
        ids = tok.encode(s)
        out.append([ids, tok.decode(ids)])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    every = styles.BYTE_LEVEL_STYLES + styles.SENTENCEPIECE_STYLES + styles.WORD_STYLES + styles.UNIGRAM_STYLES
    ap.add_argument("--count", type=int, default=100, help="cases per style")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--styles", default=",".join(every), help="comma-separated, of: " + ", ".join(every))
    a = ap.parse_args()
    rng = random.Random(a.seed)
    corpus = styles.hard_strings(600, seed=a.seed)
    strings = corpus[300:330] + ["", " ", "é", "\u0000", "a" * 300, "日本語", "<|im_start|>x", "x <think> y"]
    counts, failures, unread = collections.Counter(), [], collections.Counter()
    for style in a.styles.split(","):
        if style not in every:
            raise SystemExit(f"error: --styles: no style {style!r}")
        doc = json.loads(styles.train_hf(style, corpus[:300]).to_str())
        for _ in range(a.count):
            case = mutated(doc, rng)
            try:
                text = json.dumps(case)
            except ValueError:  # a NaN or a cycle: not JSON
                continue
            try:
                ours = our_results(text, strings)
            except MonologueError as e:
                counts["refused"] += 1
                if library_results(text, strings) is not None:
                    counts["refused_library_reads"] += 1
                    unread[re.sub(r"\d+", "N", str(e))[:120]] += 1
                continue
            except Exception as e:  # noqa: BLE001 - a panic (RuntimeError) or a Python bug
                counts["CRASH"] += 1
                failures.append({"style": style, "crash": f"{type(e).__name__}: {e}"[:300], "tokenizer": text[:2000]})
                continue
            theirs = library_results(text, strings)
            if theirs is None:
                counts["library_refuses"] += 1
            elif ours == theirs:
                counts["same"] += 1
            else:
                counts["DIFFERENT"] += 1
                s, o, t = next((s, o, t) for s, o, t in zip(strings, ours, theirs) if o != t)
                failures.append({"style": style, "string": s, "ours": o, "library": t, "tokenizer": text[:2000]})
    print(json.dumps({"seed": a.seed, "counts": dict(counts), "failures": failures[:5],
                      "refused_library_reads": dict(unread.most_common(12))}, ensure_ascii=False))
    sys.exit(1 if counts["CRASH"] or counts["DIFFERENT"] else 0)


if __name__ == "__main__":
    main()
