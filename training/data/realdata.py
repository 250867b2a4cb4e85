"""The real-data path: FineWeb-Edu text and OpenR1 reasoning traces from local parquet shards.

    download(dataset, out_dir, shards)        fetch parquet files (only when asked; needs internet)
    fineweb_texts(paths)                      the "text" column of FineWeb-Edu shards
    openr1_conversations(paths)               OpenR1-Math rows as messages with a <think> thought
    mixed_documents(tokenizer, sources, ...)  (ids, mask) documents drawn by mixing ratios
    prepare(out_dir, ...)                     tokenizer + token shards that `monologue train --data` streams

Text documents train on every token; conversations train on the assistant's part only.
"""

from __future__ import annotations

import glob
import os
import random
import re
import urllib.request
from pathlib import Path
from typing import Iterable, Iterator

from monologue_compile.errors import MonologueError

from .reasoning import training_conversations
from .shards import write_shards

# Public parquet shards on the Hugging Face hub (file names follow each dataset's layout).
DATASETS = {
    "fineweb-edu": ("https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu/resolve/main/sample/10BT/{i:03d}_00000.parquet", 14),
    "openr1": ("https://huggingface.co/datasets/open-r1/OpenR1-Math-220k/resolve/main/data/train-{i:05d}-of-00010.parquet", 10),
}


def download(dataset: str, out_dir, shards: int = 1) -> list[Path]:
    """Download the first `shards` parquet files of `dataset` into out_dir (skipping ones present)."""
    if dataset not in DATASETS:
        raise MonologueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    pattern, available = DATASETS[dataset]
    if not 1 <= shards <= available:
        raise MonologueError(f"--shards must be between 1 and {available} for {dataset}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(shards):
        url = pattern.format(i=i)
        path = out_dir / url.rsplit("/", 1)[1]
        if not path.is_file():
            tmp = path.with_suffix(".part")
            try:
                with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise MonologueError(f"could not download {url}: {e}") from None
            os.replace(tmp, path)
        paths.append(path)
    return paths


def expand_paths(spec: str | Iterable[str]) -> list[str]:
    """Files from a glob, a directory (its *.parquet) or a list of either; sorted, never empty."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    paths = []
    for s in specs:
        s = str(s)
        paths += sorted(glob.glob(os.path.join(s, "*.parquet"))) if os.path.isdir(s) else sorted(glob.glob(s))
    if not paths:
        raise MonologueError(f"no parquet files match {', '.join(map(str, specs))}")
    return paths


def _rows(paths, columns: list[str]) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for path in expand_paths(paths):
        try:
            parquet = pq.ParquetFile(path)
        except Exception as e:
            raise MonologueError(f"{path}: not a readable parquet file ({e})") from None
        missing = set(columns) - set(parquet.schema_arrow.names)
        if missing:
            raise MonologueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for batch in parquet.iter_batches(batch_size=1024, columns=columns):
            yield from batch.to_pylist()


def fineweb_texts(paths) -> Iterator[str]:
    for row in _rows(paths, ["text"]):
        if row["text"]:
            yield row["text"]


_THINK = re.compile(r"<think>(.*?)</think>(.*)", re.DOTALL)


def openr1_conversations(paths) -> Iterator[list[dict]]:
    """One conversation per row: the first verified generation split at </think>, else the solution."""
    import pyarrow.parquet as pq

    for path in expand_paths(paths):
        names = set(pq.ParquetFile(path).schema_arrow.names)
        columns = ["problem", "solution", "answer"] + [c for c in ("generations", "correctness_math_verify") if c in names]
        for row in _rows(path, columns):
            thought, answer = None, None
            verified = row.get("correctness_math_verify") or []
            for k, generation in enumerate(row.get("generations") or []):
                match = _THINK.search(generation or "")
                if match and (k < len(verified) and verified[k]):
                    thought, answer = match.group(1).strip(), match.group(2).strip()
                    break
            if thought is None:  # no verified trace: the reference solution is the thought
                thought, answer = (row["solution"] or "").strip(), f"The answer is {row['answer']}."
            if row["problem"] and answer:
                yield [{"role": "user", "content": row["problem"]},
                       {"role": "assistant", "thought": thought, "content": answer}]


def text_document(tokenizer, text: str) -> tuple[list[int], list[int]]:
    ids = [tokenizer.token_id("<|bos|>")] + tokenizer.encode_ordinary(text)
    return ids, [0] + [1] * (len(ids) - 1)


def parse_mix(spec: str) -> dict[str, float]:
    """'fineweb=0.7,openr1=0.2,builtin=0.1' -> ratios (normalized)."""
    mix = {}
    for part in filter(None, spec.split(",")):
        name, _, value = part.partition("=")
        try:
            mix[name.strip()] = float(value)
        except ValueError:
            raise MonologueError(f"--mix: {part!r} is not name=ratio") from None
    if not mix or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise MonologueError(f"--mix {spec!r}: give positive ratios, e.g. fineweb=0.7,openr1=0.3")
    total = sum(mix.values())
    return {k: v / total for k, v in mix.items()}


def mixed_documents(tokenizer, sources: dict[str, Iterator], mix: dict[str, float], seed: int = 0, max_documents: int | None = None):
    """(ids, mask) documents: each draw picks a source by `mix`; stops when a source runs dry.

    A source yields either text (trained on every token) or a messages list (assistant part only).
    """
    unknown = set(mix) - set(sources)
    if unknown:
        raise MonologueError(f"--mix names {', '.join(sorted(unknown))}, which have no data (have: {', '.join(sources)})")
    rng = random.Random(seed)
    names, weights = list(mix), list(mix.values())
    produced = 0
    while max_documents is None or produced < max_documents:
        item = next(sources[rng.choices(names, weights)[0]], None)
        if item is None:
            return
        yield text_document(tokenizer, item) if isinstance(item, str) else tokenizer.render_conversation(item)
        produced += 1


def prepare(out_dir, fineweb=None, openr1=None, mix: dict[str, float] | None = None, vocab_size: int = 65536,
            tokenizer_texts: int = 20_000, max_documents: int | None = None, seed: int = 0) -> dict:
    """Train a tokenizer on a sample of the sources, then tokenize the mix into out_dir shards."""
    from monologue_compile.tokenizer import Tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def sources():
        s = {"builtin": (c.messages() for c in training_conversations(10**12, seed))}
        if fineweb:
            s["fineweb"] = fineweb_texts(fineweb)
        if openr1:
            s["openr1"] = openr1_conversations(openr1)
        return s

    mix = mix or {name: 1.0 / len(sources()) for name in sources()}
    sample, sample_sources = [], sources()
    for name in mix:
        for _, item in zip(range(tokenizer_texts // len(mix)), sample_sources[name]):
            sample.append(item if isinstance(item, str) else "\n".join(m.get("thought", "") + "\n" + m["content"] for m in item))
    tokenizer = Tokenizer.train(sample, vocab_size)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    return write_shards(mixed_documents(tokenizer, sources(), mix, seed, max_documents), out_dir,
                        tokenizer.vocab_size, tokenizer.token_id("<|bos|>"), source="mix", mix=mix)
