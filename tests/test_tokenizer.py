"""Tokenizer API: training, special tokens, tokenizer.json round trip, nanochat tokenizer.pkl
import (and refusal of malicious pickles), and the errors bad input gets."""

import json
import os
import pickle
import subprocess
import sys

import pytest

from monologue_compile.errors import MonologueError
from monologue_compile.tokenizer import NANOCHAT_PATTERN, SPECIAL_TOKENS, Tokenizer

tiktoken = pytest.importorskip("tiktoken")

TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's 12:45 and we'll see 3.14159!",
    "Ünïcödé text, 中文, русский, and emoji 🙂 mixed in.\n\n  Indented line\twith tab.",
    "def f(x):\n    return x ** 2  # squares\n",
] * 50

NANOCHAT_SPECIALS = [
    "<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>",
]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXTS, vocab_size=400)


def test_train_reaches_the_vocab_size_with_specials_last(tok):
    assert tok.vocab_size == 400
    assert list(tok.special_tokens) == list(SPECIAL_TOKENS)
    assert list(tok.special_tokens.values()) == list(range(400 - len(SPECIAL_TOKENS), 400))
    ranks = tok.ranks()
    assert len(ranks) == 400 - len(SPECIAL_TOKENS)
    assert all(ranks[bytes([b])] == b for b in range(256))
    assert tok.pattern == NANOCHAT_PATTERN
    assert tok.token_id("<think>") == tok.special_tokens["<think>"]


def test_training_is_deterministic_and_accepts_files(tok, tmp_path):
    paths = []
    for i, text in enumerate(TEXTS[:3]):
        path = tmp_path / f"part{i}.txt"
        path.write_text(text * 50, encoding="utf-8")
        paths.append(path)
    from_files = Tokenizer.train(paths, vocab_size=400)
    assert from_files.to_json() == tok.to_json()
    assert Tokenizer.train(iter(TEXTS), vocab_size=400).to_json() == tok.to_json()


def test_custom_special_tokens(tmp_path):
    tok = Tokenizer.train(TEXTS, vocab_size=300, special_tokens=["<a>", "<b>"])
    assert tok.special_tokens == {"<a>": 298, "<b>": 299}
    assert tok.encode("x<b>") == tok.encode_ordinary("x") + [299]


def test_special_tokens_only_where_allowed(tok):
    text = "hi <|bos|> there<think>step</think><|user_end|>"
    bos, think, end_think, user_end = (tok.token_id(n) for n in ("<|bos|>", "<think>", "</think>", "<|user_end|>"))
    ids = tok.encode(text)
    assert [i for i in ids if i >= 389] == [bos, think, end_think, user_end]
    assert tok.encode(text, allowed_special="none") == tok.encode_ordinary(text)
    assert not any(i >= 389 for i in tok.encode_ordinary(text))
    only_think = tok.encode(text, allowed_special={"<think>"})
    assert [i for i in only_think if i >= 389] == [think]
    assert tok.decode(ids) == text
    oracle = tiktoken.Encoding("o", pat_str=tok.pattern, mergeable_ranks=tok.ranks(), special_tokens=tok.special_tokens)
    assert ids == oracle.encode(text, allowed_special="all")
    assert only_think == oracle.encode(text, allowed_special={"<think>"}, disallowed_special=())


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.to_json() == tok.to_json() == path.read_text(encoding="utf-8")
    assert loaded.ranks() == tok.ranks()
    assert loaded.special_tokens == tok.special_tokens
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == "monologue-tokenizer" and doc["version"] == 1
    for text in TEXTS[:3]:
        assert loaded.encode(text) == tok.encode(text)


def _nanochat_encoding(tok):
    ranks = tok.ranks()
    specials = {name: len(ranks) + i for i, name in enumerate(NANOCHAT_SPECIALS)}
    return tiktoken.Encoding("rustbpe", pat_str=NANOCHAT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_imports_a_nanochat_tokenizer_pkl(tok, tmp_path, protocol):
    encoding = _nanochat_encoding(tok)
    path = tmp_path / "tokenizer.pkl"
    path.write_bytes(pickle.dumps(encoding, protocol=protocol))
    imported = Tokenizer.load(path)
    assert imported.ranks() == encoding._mergeable_ranks
    assert imported.special_tokens == encoding._special_tokens
    text = "Hello <|bos|> world, it's 2024 🙂"
    assert imported.encode(text) == encoding.encode(text, allowed_special="all")
    assert imported.encode_ordinary(text) == encoding.encode_ordinary(text)
    # nanochat's tokenizer has no think tokens: plain chat works, a thought is refused by name
    ids, mask = imported.render_conversation([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert ids[0] == encoding._special_tokens["<|bos|>"] and sum(mask) == len(encoding.encode_ordinary("b")) + 1
    with pytest.raises(MonologueError, match="<think>"):
        imported.render_conversation(
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "thought": "c"}]
        )


def _nanogpt_meta(text: str) -> dict:
    """What nanoGPT's data/shakespeare_char/prepare.py pickles into meta.pkl."""
    chars = sorted(set(text))
    return {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}


def test_imports_a_nanogpt_char_level_meta_pkl(tmp_path):
    """Each char its id (stoi), decode joins the chars (itos); a char outside the vocabulary is
    left out, as `tokenizers` leaves it out of the tokenizer.json the compiler writes for it."""
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    meta = _nanogpt_meta(text)
    path = tmp_path / "meta.pkl"
    path.write_bytes(pickle.dumps(meta))
    tok = Tokenizer.load(path)
    assert tok.encode(text) == [meta["stoi"][c] for c in text]
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("speak, 9 Zed") == [meta["stoi"][c] for c in "speak,  ed"]
    assert tok.vocab_size == meta["vocab_size"] and not tok.special_tokens


@pytest.mark.parametrize("stoi, says", [({"ab": 0, "c": 1}, "'ab', not one character"),
                                        ({"a": 0, "b": 2}, r"ids must be 0\.\.1"),
                                        ({"a": "0"}, "stoi must map str to int")])
def test_a_meta_pkl_that_is_not_a_char_vocabulary_is_refused(tmp_path, stoi, says):
    path = tmp_path / "meta.pkl"
    path.write_bytes(pickle.dumps({"vocab_size": len(stoi), "stoi": stoi}))
    with pytest.raises(MonologueError, match=f"meta.pkl: .*{says}"):
        Tokenizer.load(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > evil_was_here",))


def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tokenizer.pkl"
    path.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(MonologueError, match=r"tokenizer\.pkl.*refused.*system"):
        Tokenizer.load(path)
    assert not (tmp_path / "evil_was_here").exists()


def test_pickle_of_something_else_is_refused(tmp_path):
    path = tmp_path / "tokenizer.pkl"
    path.write_bytes(pickle.dumps({"just": "a dict"}))
    with pytest.raises(MonologueError, match="neither a tiktoken Encoding nor a char vocabulary"):
        Tokenizer.load(path)
    path.write_bytes(pickle.dumps([1, 2, 3])[:-3])
    with pytest.raises(MonologueError, match="not a readable tokenizer.pkl"):
        Tokenizer.load(path)


def test_bad_input_errors(tok, tmp_path):
    with pytest.raises(MonologueError, match="not found: .*missing.json"):
        Tokenizer.load(tmp_path / "missing.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(tok.to_json()[:-100], encoding="utf-8")
    with pytest.raises(MonologueError, match=r"corrupt\.json: invalid JSON"):
        Tokenizer.load(corrupt)
    corrupt.write_text('{"format": "something-else"}', encoding="utf-8")
    with pytest.raises(MonologueError, match="format"):
        Tokenizer.load(corrupt)
    doc = json.loads(tok.to_json())
    corrupt.write_text(json.dumps({**doc, "ranks": doc["ranks"][1:]}), encoding="utf-8")
    with pytest.raises(MonologueError, match="single byte"):
        Tokenizer.load(corrupt)
    corrupt.write_text(json.dumps({**doc, "pattern": r"\w+"}), encoding="utf-8")
    with pytest.raises(MonologueError, match="unsupported split pattern"):
        Tokenizer.load(corrupt)
    with pytest.raises(MonologueError, match="smaller than 256 byte tokens \\+ 11 special tokens = 267"):
        Tokenizer.train(TEXTS, vocab_size=266)
    with pytest.raises(MonologueError, match="not in the vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(MonologueError, match="unknown special tokens"):
        tok.encode("x", allowed_special={"<nope>"})
    with pytest.raises(MonologueError, match="strings or paths"):
        Tokenizer.train([b"bytes"], vocab_size=300)
    with pytest.raises(MonologueError, match="not found"):
        Tokenizer.train([tmp_path / "nope.txt"], vocab_size=300)


def test_cli_bad_input_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "monologue_compile.tokenizer", "encode", "--tokenizer", str(tmp_path / "nope.json"), "x"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: tokenizer file not found")


def test_cli_train_and_encode(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(TEXTS), encoding="utf-8")
    out = tmp_path / "tok.json"
    subprocess.run(
        [sys.executable, "-m", "monologue_compile.tokenizer", "train", str(corpus), "--vocab-size", "300", "-o", str(out)],
        check=True,
        capture_output=True,
    )
    tok = Tokenizer.load(out)
    result = subprocess.run(
        [sys.executable, "-m", "monologue_compile.tokenizer", "encode", "--tokenizer", str(out), "the fox"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(result.stdout) == tok.encode("the fox")


def test_batch_encoding_and_pickling(tok):
    texts = TEXTS[:7] + ["", "<|bos|>", "é" * 50]
    assert tok.encode_ordinary_batch(texts) == [tok.encode_ordinary(t) for t in texts]
    assert tok.encode_ordinary_batch([]) == []
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.to_json() == tok.to_json()


def test_pkl_with_an_unsupported_pattern_names_the_file(tok, tmp_path):
    encoding = tiktoken.Encoding("gpt2ish", pat_str=r"\w+|\s+|[^\w\s]+", mergeable_ranks=tok.ranks(), special_tokens={})
    path = tmp_path / "tokenizer.pkl"
    path.write_bytes(pickle.dumps(encoding))
    with pytest.raises(MonologueError, match=r"tokenizer\.pkl: unsupported split pattern"):
        Tokenizer.load(path)
