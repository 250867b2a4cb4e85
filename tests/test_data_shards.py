"""Token shards: written once, rows start at <|bos|>, targets masked, batches a function of the step."""

import json

import numpy as np
import pytest

from monologue_compile.errors import MonologueError
from training.data.shards import ShardDataset, ShardWriter, write_shards

BOS = 1


def documents(n, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        length = int(rng.integers(3, 20))
        ids = [BOS] + rng.integers(2, 300, length).tolist()
        mask = [0] + rng.integers(0, 2, length).tolist()
        yield ids, mask


def test_round_trip_and_index(tmp_path):
    docs = list(documents(50))
    index = write_shards(docs, tmp_path, vocab_size=300, bos_id=BOS, note="x")
    assert index["documents"] == 50 and index["note"] == "x"
    assert json.loads((tmp_path / "index.json").read_text())["num_tokens"] == sum(len(d[0]) for d in docs)
    tokens = np.load(tmp_path / "tokens_0000.npy")
    assert tokens.dtype == np.uint16
    assert tokens.tolist() == [t for ids, _ in docs for t in ids]


def test_large_vocabularies_use_uint32(tmp_path):
    write_shards([([BOS, 70000], [0, 1])], tmp_path, vocab_size=70001, bos_id=BOS)
    assert np.load(tmp_path / "tokens_0000.npy").dtype == np.uint32


def test_rows_start_at_bos_and_targets_follow_the_mask(tmp_path):
    docs = list(documents(200))
    writer = ShardWriter(tmp_path, 300, BOS, shard_tokens=500)  # several shards
    for ids, mask in docs:
        writer.add(ids, mask)
    assert len(writer.close()["shards"]) > 1
    data = ShardDataset(tmp_path, seq_len=32)
    for i in range(len(data)):
        tokens, mask = data.row(i)
        assert tokens[0] == BOS
    x, y = data.batch(0, 8, seed=0)
    assert x.shape == y.shape == (8, 32)
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        assert row_x[0] == BOS
        # a target is either masked out (-1) or exactly the next input token
        assert all(t == -1 or t == nxt for t, nxt in zip(row_y[:-1], row_x[1:]))
    assert (y == -1).any() and (y >= 0).any()


def test_every_document_is_seen_from_its_start(tmp_path):
    docs = list(documents(100))
    write_shards(docs, tmp_path, 300, BOS)
    data = ShardDataset(tmp_path, seq_len=24)
    seen_starts = set()
    for shard, start in data.rows:
        tokens = np.asarray(data.tokens[shard][start : start + 25])
        seen_starts.update((start + np.flatnonzero(tokens == BOS)).tolist())
    all_starts = set(np.flatnonzero(np.asarray(data.tokens[0]) == BOS).tolist())
    assert seen_starts == all_starts


def test_batches_are_deterministic_and_ranks_disjoint(tmp_path):
    write_shards(documents(300), tmp_path, 300, BOS)
    data = ShardDataset(tmp_path, seq_len=16)
    a, _ = data.batch(3, 4, seed=7)
    b, _ = data.batch(3, 4, seed=7)
    c, _ = data.batch(3, 4, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    rank0, _ = data.batch(0, 4, seed=0, rank=0, world_size=2)
    rank1, _ = data.batch(0, 4, seed=0, rank=1, world_size=2)
    single, _ = data.batch(0, 8, seed=0)
    assert np.array_equal(np.concatenate([rank0, rank1]), single)


def test_epochs_cover_every_row(tmp_path):
    write_shards(documents(40), tmp_path, 300, BOS)
    data = ShardDataset(tmp_path, seq_len=16)
    n = len(data)
    rows = [tuple(data.batch(s, 1, seed=0)[0][0].tolist()) for s in range(n)]
    assert len(set(rows)) == len({tuple(data.row(i)[0][:-1].tolist()) for i in range(n)})


def test_documents_must_start_with_bos(tmp_path):
    writer = ShardWriter(tmp_path, 300, BOS)
    with pytest.raises(ValueError):
        writer.add([5, 6], [1, 1])


def test_missing_shards_are_a_user_error(tmp_path):
    with pytest.raises(MonologueError, match="index.json"):
        ShardDataset(tmp_path, 16)
