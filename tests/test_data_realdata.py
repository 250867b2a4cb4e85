"""FineWeb-Edu and OpenR1 loaders on small parquet files written here, mixing, and prepare()."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monologue_compile.errors import MonologueError
from monologue_compile.tokenizer import Tokenizer
from training.data.realdata import (
    download, expand_paths, fineweb_texts, mixed_documents, openr1_conversations, parse_mix, prepare,
)
from training.data.shards import ShardDataset

FINEWEB_TEXTS = [f"Document {i} explains photosynthesis in plants and light." for i in range(30)] + [""]


@pytest.fixture
def fineweb_dir(tmp_path):
    directory = tmp_path / "fineweb"
    directory.mkdir()
    pq.write_table(pa.table({"text": FINEWEB_TEXTS[:15], "score": [3.0] * 15}), directory / "000.parquet")
    pq.write_table(pa.table({"text": FINEWEB_TEXTS[15:], "score": [2.5] * 16}), directory / "001.parquet")
    return directory


@pytest.fixture
def openr1_file(tmp_path):
    path = tmp_path / "openr1.parquet"
    pq.write_table(pa.table({
        "problem": ["What is 2+3?", "What is 7*6?", "Solve x+1=3."],
        "solution": ["2+3=5", "7*6=42", "x=3-1=2"],
        "answer": ["5", "42", "2"],
        "generations": [["<think>wrong</think>6", "<think>two plus three is five</think>The answer is 5."],
                        ["<think>seven sixes</think>42"], []],
        "correctness_math_verify": [[False, True], [False], []],
    }), path)
    return path


def test_fineweb_texts_reads_every_shard_in_order_and_skips_empty(fineweb_dir):
    assert list(fineweb_texts(fineweb_dir)) == FINEWEB_TEXTS[:-1]
    assert list(fineweb_texts(str(fineweb_dir / "*.parquet"))) == FINEWEB_TEXTS[:-1]


def test_openr1_uses_the_verified_trace_else_the_solution(openr1_file):
    conversations = list(openr1_conversations(openr1_file))
    assert conversations[0] == [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "thought": "two plus three is five", "content": "The answer is 5."},
    ]
    # no verified generation: the reference solution becomes the thought
    assert conversations[1][1] == {"role": "assistant", "thought": "7*6=42", "content": "The answer is 42."}
    assert conversations[2][1]["thought"] == "x=3-1=2"


def test_missing_files_and_columns_are_user_errors(tmp_path):
    with pytest.raises(MonologueError, match="no parquet files"):
        expand_paths(str(tmp_path / "nothing*.parquet"))
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(MonologueError, match="missing column"):
        list(fineweb_texts(tmp_path / "bad.parquet"))


def test_parse_mix():
    assert parse_mix("fineweb=3,openr1=1") == {"fineweb": 0.75, "openr1": 0.25}
    for bad in ("fineweb", "fineweb=-1", "fineweb=0"):
        with pytest.raises(MonologueError):
            parse_mix(bad)


def test_mixing_follows_the_ratios(fineweb_dir):
    tokenizer = Tokenizer.train(FINEWEB_TEXTS, 300)
    sources = {"fineweb": iter(["text"] * 10_000), "chat": iter([[{"role": "user", "content": "hi"}]] * 10_000)}
    documents = list(mixed_documents(tokenizer, sources, {"fineweb": 0.8, "chat": 0.2}, seed=0, max_documents=2000))
    text_share = sum(1 for ids, mask in documents if all(mask[1:])) / len(documents)
    assert 0.76 < text_share < 0.84
    with pytest.raises(MonologueError, match="no data"):
        list(mixed_documents(tokenizer, sources, {"openr1": 1.0}))


def test_prepare_writes_shards_the_train_loop_reads(tmp_path, fineweb_dir, openr1_file):
    index = prepare(tmp_path / "shards", fineweb=fineweb_dir, openr1=openr1_file,
                    mix={"fineweb": 0.5, "openr1": 0.25, "builtin": 0.25}, vocab_size=400, tokenizer_texts=60)
    assert index["documents"] > 3 and index["mix"]["fineweb"] == 0.5
    tokenizer = Tokenizer.load(str(tmp_path / "shards" / "tokenizer.json"))
    x, y = ShardDataset(tmp_path / "shards", seq_len=64).batch(0, 2, seed=0)
    assert x[0, 0] == tokenizer.token_id("<|bos|>") and (y >= 0).any()


def test_download_rejects_bad_requests_before_touching_the_network(tmp_path):
    with pytest.raises(MonologueError, match="unknown dataset"):
        download("c4", tmp_path)
    with pytest.raises(MonologueError, match="--shards"):
        download("openr1", tmp_path, shards=0)


def test_train_streams_prepared_shards(tmp_path, fineweb_dir, openr1_file, monkeypatch):
    from click.testing import CliRunner

    import torch

    from monologue_compile.cli import main

    monkeypatch.setenv("MONOLOGUE_THREADS", "1")
    prepare(tmp_path / "shards", fineweb=fineweb_dir, openr1=openr1_file, vocab_size=400, tokenizer_texts=60)
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--steps", "3",
                                       "--data", str(tmp_path / "shards")])
    assert result.exit_code == 0, result.output
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["tokenizer"] == (tmp_path / "shards" / "tokenizer.json").read_text()
    assert not (tmp_path / "run" / "data").exists()  # the built-in corpus was not tokenized
