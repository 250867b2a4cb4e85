"""Binary token shards: tokenize once, then stream fixed-length rows into the train loop.

On disk, a shard directory holds `index.json` and, per shard, `tokens_NNNN.npy` (uint16, or uint32
for vocabularies past 65536) and `mask_NNNN.npy` (uint8, 1 where the token is a training target).
Documents are concatenated, each starting with `<|bos|>`.

Rows are windows of `seq_len + 1` tokens that start at a `<|bos|>`, so the first document of a row
is always seen from its beginning; when a document runs past the end of a row, the next row starts
at that document. The batch for a given step is a pure function of (step, seed, rank), which makes
training deterministic and resuming exact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from monologue_compile.errors import MonologueError

INDEX = "index.json"


class ShardWriter:
    """Append (ids, mask) documents; flushes a shard every `shard_tokens` tokens."""

    def __init__(self, out_dir: str | os.PathLike, vocab_size: int, bos_id: int, shard_tokens: int = 1 << 24):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
        self.vocab_size, self.bos_id, self.shard_tokens = vocab_size, bos_id, shard_tokens
        self.tokens: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.pending = 0
        self.shards: list[dict] = []
        self.documents = 0

    def add(self, ids: list[int], mask: list[int]):
        if not ids or ids[0] != self.bos_id:
            raise ValueError("every document must start with <|bos|>")
        self.tokens.append(np.asarray(ids, dtype=self.dtype))
        self.masks.append(np.asarray(mask, dtype=np.uint8))
        self.pending += len(ids)
        self.documents += 1
        if self.pending >= self.shard_tokens:
            self._flush()

    def _flush(self):
        if not self.pending:
            return
        n = len(self.shards)
        np.save(self.out_dir / f"tokens_{n:04d}.npy", np.concatenate(self.tokens))
        np.save(self.out_dir / f"mask_{n:04d}.npy", np.concatenate(self.masks))
        self.shards.append({"tokens": f"tokens_{n:04d}.npy", "mask": f"mask_{n:04d}.npy", "num_tokens": self.pending})
        self.tokens, self.masks, self.pending = [], [], 0

    def close(self, **extra) -> dict:
        """Write the last shard and the index (last, so a directory with an index is complete)."""
        self._flush()
        index = {"vocab_size": self.vocab_size, "bos_id": self.bos_id, "documents": self.documents,
                 "num_tokens": sum(s["num_tokens"] for s in self.shards), "shards": self.shards, **extra}
        tmp = self.out_dir / (INDEX + ".tmp")
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, self.out_dir / INDEX)
        return index


def write_shards(documents: Iterable[tuple[list[int], list[int]]], out_dir, vocab_size: int, bos_id: int, **extra) -> dict:
    writer = ShardWriter(out_dir, vocab_size, bos_id)
    for ids, mask in documents:
        writer.add(ids, mask)
    return writer.close(**extra)


def has_shards(directory) -> bool:
    return (Path(directory) / INDEX).is_file()


def _row_starts(tokens: np.ndarray, bos_id: int, seq_len: int) -> np.ndarray:
    """Start offsets of rows: each row starts at a bos; the next starts at the document it cut."""
    bos = np.flatnonzero(tokens == bos_id)
    starts, i = [], 0
    while i < len(bos):
        start = bos[i]
        starts.append(start)
        # The first bos strictly inside the window's target span begins a document this row cuts off
        # or completes; continue from the last one that starts inside the window (seen from its start
        # in the next row), or from the next document if this one fills the whole window.
        j = np.searchsorted(bos, start + seq_len + 1) - 1
        i = j if j > i else i + 1
        if start + seq_len + 1 >= len(tokens):
            break
    return np.asarray(starts, dtype=np.int64)


class ShardDataset:
    """Rows of (input, target) from a shard directory; targets are -1 where the mask is 0."""

    def __init__(self, directory, seq_len: int):
        directory = Path(directory)
        if not has_shards(directory):
            raise MonologueError(f"{directory}: no token shards here (missing {INDEX})")
        self.index = json.loads((directory / INDEX).read_text())
        self.seq_len = seq_len
        self.tokens = [np.load(directory / s["tokens"], mmap_mode="r") for s in self.index["shards"]]
        self.masks = [np.load(directory / s["mask"], mmap_mode="r") for s in self.index["shards"]]
        self.rows = [(shard, int(start)) for shard, tokens in enumerate(self.tokens)
                     for start in _row_starts(np.asarray(tokens), self.index["bos_id"], seq_len)]
        if not self.rows:
            raise MonologueError(f"{directory}: the shards hold no documents")

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        shard, start = self.rows[i]
        end = start + self.seq_len + 1
        tokens = np.zeros(self.seq_len + 1, dtype=np.int64)
        mask = np.zeros(self.seq_len + 1, dtype=bool)
        piece = self.tokens[shard][start:end]
        tokens[: len(piece)] = piece
        mask[: len(piece)] = self.masks[shard][start:end] != 0
        return tokens, mask

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        """The (x, y) batch of `rank` at `step`: rows walk epoch-wise seeded permutations."""
        per_step = batch_size * world_size
        first = step * per_step + rank * batch_size
        xs, ys = [], []
        for k in range(first, first + batch_size):
            epoch, offset = divmod(k, len(self.rows))
            order = self._permutation(seed, epoch)
            tokens, mask = self.row(int(order[offset]))
            target = np.where(mask[1:], tokens[1:], -1)
            xs.append(tokens[:-1])
            ys.append(target)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        cached = getattr(self, "_perm_cache", None)
        if cached is None or cached[0] != (seed, epoch):
            self._perm_cache = ((seed, epoch), np.random.default_rng([seed, epoch]).permutation(len(self.rows)))
        return self._perm_cache[1]
