"""`monologue chat --backend numpy`: sampling, the thought/answer split, cache reuse across turns, and
keeping the conversation within the model's context."""

import re

import numpy as np
import pytest
from click.testing import CliRunner

from monologue_compile.chat import MessageTooLong, ThoughtSplitter, fit_conversation, reply, reply_room, sample
from monologue_compile.cli import main


def test_sample_greedy_top_k_top_p():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 3.0, 2.9, -1.0, 1.0], np.float32)
    assert sample(logits, 0.0, None, None, rng) == 1
    draws = {sample(logits, 1.0, 2, None, rng) for _ in range(200)}
    assert draws == {1, 2}
    # top_p small enough that only the most likely token stays
    assert {sample(logits, 1.0, None, 0.3, rng) for _ in range(50)} == {1}
    assert len({sample(logits, 5.0, None, None, rng) for _ in range(300)}) == 5


@pytest.mark.parametrize("step", [1, 2, 5, 100])
def test_thought_splitter_streams_pieces_in_order(step):
    text = "<think>carry the 1</think>The answer is 42."
    s = ThoughtSplitter()
    got = {"thought": "", "answer": ""}
    for end in list(range(step, len(text), step)) + [len(text)]:
        for part, piece in s.feed(text[:end]):
            got[part] += piece
    assert got == {"thought": "carry the 1", "answer": "The answer is 42."}
    assert s.parts() == ("carry the 1", "The answer is 42.")


def test_chat_command_runs_turns(tmp_path, tiny_checkpoint):
    assert CliRunner().invoke(main, ["compile", "--no-wasm", str(tiny_checkpoint), "-o", str(tmp_path / "d")]).exit_code == 0
    r = CliRunner().invoke(main, ["chat", str(tmp_path / "d"), "--prompt", "hi", "--prompt", "2+2?",
                                  "--max-tokens", "8"])
    assert r.exit_code == 0, r.stderr
    assert r.output.count("answer:") + r.output.count("thinking:") >= 2


def test_second_turn_reuses_cache_and_matches_fresh_prefill(tmp_path, tiny_checkpoint):
    from monologue_compile.artifact import load_model
    from monologue_compile.interpreter import Session
    from monologue_compile.tokenizer import Tokenizer

    assert CliRunner().invoke(main, ["compile", "--no-wasm", str(tiny_checkpoint), "-o", str(tmp_path / "d")]).exit_code == 0
    g, _, tj = load_model(tmp_path / "d")
    tok = Tokenizer.from_json(tj)
    rng = np.random.default_rng(0)
    s = Session(g)
    msgs = [{"role": "user", "content": "hi"}]
    out1, fed = reply(s, tok, tok.render_for_completion(msgs), [], 6, 0.0, None, None, rng)
    # the next turn extends what the session has seen: only the new tokens are fed
    prompt2 = fed + tok.encode("<|user_start|>more<|user_end|><|assistant_start|>")
    pos_before = s.pos
    out2, _ = reply(s, tok, prompt2, fed, 6, 0.0, None, None, rng)
    assert pos_before == len(fed) > 0
    fresh, _ = reply(Session(g), tok, prompt2, [], 6, 0.0, None, None, rng)
    assert out2 == fresh


class _Scripted:
    """A session whose next token is the next of `script` (one-hot logits)."""

    def __init__(self, script, vocab):
        self.script, self.vocab, self.pos, self.max_len = list(script), vocab, 0, 1000

    def reset(self):
        self.pos = 0

    def forward(self, ids):
        self.pos += len(ids)
        row = np.zeros((len(ids), self.vocab), np.float32)
        row[-1, self.script.pop(0)] = 1.0
        return row


def test_streamed_text_never_splits_a_character():
    from conftest import byte_tokenizer_json

    from monologue_compile.tokenizer import Tokenizer

    tok = Tokenizer.from_json(byte_tokenizer_json())
    end = tok.special_tokens["<|assistant_end|>"]
    # byte tokens: "é" is C3 A9 and "€" is E2 82 AC, each arriving one byte per token
    script = [0xC3, 0xA9, ord("!"), 0xE2, 0x82, 0xAC, end]
    shown: list[str] = []
    out, _ = reply(_Scripted(script, tok.vocab_size), tok, [1, 2], [], 20, 0.0, None, None,
                   np.random.default_rng(0), shown.append)
    assert len(out) == 6
    assert shown == ["é", "é!", "é!€"]  # each call shows more whole characters, never U+FFFD
    # a character cut off by the token limit still ends as U+FFFD, as a lossy decode shows it
    shown.clear()
    reply(_Scripted([ord("a"), 0xE2, 0x82, end], tok.vocab_size), tok, [1], [], 3, 0.0, None, None,
          np.random.default_rng(0), shown.append)
    assert shown == ["a", "a\ufffd"]


def char_encode(messages):
    """One token per character of each message, plus one per message."""
    return [0] * sum(len(m["content"]) + len(m.get("thought", "")) + 1 for m in messages)


def turn(question, answer, thought):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer, "thought": thought}]


def test_fit_drops_oldest_thoughts_first_then_oldest_turns():
    history = turn("q1", "a1", "t" * 20) + turn("q2", "a2", "t" * 20) + [{"role": "user", "content": "q3"}]
    whole = len(char_encode(history))  # 55
    assert fit_conversation(history, char_encode, whole + 10, 10).messages == history
    # 20 tokens short: the first thought goes, the second stays.
    fitted = fit_conversation(history, char_encode, whole - 20 + 10, 10)
    assert (fitted.dropped_turns, fitted.dropped_thoughts) == (0, 1)
    assert "thought" not in fitted.messages[1] and fitted.messages[3]["thought"] == "t" * 20
    assert len(fitted.prompt) == whole - 20
    assert fitted.note(50) == ("The conversation outgrew what the model reads at a time (50 tokens): "
                               "from here on it no longer sees its thought in an earlier reply.")
    # Without both thoughts it is still too long: the oldest turn goes too; the caller's list is untouched.
    fitted = fit_conversation(history, char_encode, 12 + 10, 10)
    assert fitted.messages == [history[2], {"role": "assistant", "content": "a2"}, history[4]]
    assert (fitted.dropped_turns, fitted.dropped_thoughts) == (1, 1)
    assert history[1]["thought"] == "t" * 20
    assert "the oldest turn or its thought in an earlier reply" in fitted.note(22)


def test_a_message_alone_may_use_more_than_its_share_but_not_all_of_the_context():
    history = turn("q", "a", "t")
    # 70 tokens alone: more than the 50 kept for a reply, so the history goes, but it is read.
    fitted = fit_conversation(history + [{"role": "user", "content": "x" * 69}], char_encode, 100, reply_room(100, 512))
    assert (len(fitted.prompt), fitted.dropped_turns) == (70, 1)
    with pytest.raises(MessageTooLong) as e:
        fit_conversation(history + [{"role": "user", "content": "x" * 99}], char_encode, 100, reply_room(100, 512))
    assert str(e.value) == ("This message is 100 tokens long, but the model reads at most 100 tokens at a time, its "
                            "reply included. Shorten it and send it again.")
    assert reply_room(100, 8) == 8


def test_chat_command_goes_on_for_fifty_turns(tmp_path, tiny_checkpoint):
    assert CliRunner().invoke(main, ["compile", "--no-wasm", str(tiny_checkpoint), "-o", str(tmp_path / "d")]).exit_code == 0
    prompts = [a for i in range(50) for a in ("--prompt", f"Question {i}?")] + ["--prompt", "x" * 200]
    r = CliRunner().invoke(main, ["chat", str(tmp_path / "d"), "--max-tokens", "8", *prompts])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())  # rich wraps long lines
    # The tiny model reads 96 tokens (one per byte): every few turns the oldest goes, with a note.
    assert out.count("context: ") == 50
    assert all(int(used) <= 96 for used in re.findall(r"context: (\d+) of 96 tokens", out))
    assert out.count("The conversation outgrew what the model reads at a time (96 tokens)") >= 20
    assert re.search(r"This message is \d+ tokens long, but the model reads at most 96 tokens at a time, its reply "
                     r"included\.", out)
