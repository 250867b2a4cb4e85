"""Evaluation: reply parsing, per-family figures, and `monologue eval` on a checkpoint."""

import json

import pytest
import torch
from click.testing import CliRunner

from monologue_compile.cli import main
from monologue_compile.tokenizer import Tokenizer
from training.data.reasoning import REASONING_FAMILIES, heldout_conversations
from training.evaluate import evaluate, greedy_replies, load_checkpoint, parse_reply
from monologue_compile.models.gpt import GPT, GPTConfig
from training.train import save_checkpoint, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([c.user + " " + c.thought + " " + c.answer for c in heldout_conversations(20)], 400)


def reply_ids(tokenizer, thought, answer, end=True):
    ids = [tokenizer.token_id("<think>")] + tokenizer.encode_ordinary(thought) + [tokenizer.token_id("</think>")]
    ids += tokenizer.encode_ordinary(answer)
    return ids + [tokenizer.token_id("<|assistant_end|>")] if end else ids


def test_parse_reply_accepts_only_the_full_shape(tokenizer):
    assert parse_reply(tokenizer, reply_ids(tokenizer, "2+2=4.", " 4.")) == (True, "2+2=4.", "4.")
    assert not parse_reply(tokenizer, reply_ids(tokenizer, "2+2=4.", "4.", end=False))[0]
    assert not parse_reply(tokenizer, reply_ids(tokenizer, "2+2=4.", " "))[0]
    assert not parse_reply(tokenizer, reply_ids(tokenizer, "2+2=4.", "4.")[1:])[0]
    stray = reply_ids(tokenizer, "2+2=4.", "4.")
    stray.insert(2, tokenizer.token_id("<think>"))
    assert not parse_reply(tokenizer, stray)[0]


class Oracle:
    """A generate_fn that answers from the corpus itself: perfect on every family but `wrong`."""

    def __init__(self, tokenizer, wrong):
        self.tokenizer, self.wrong = tokenizer, wrong
        self.answers = {tuple(tokenizer.render_for_completion(c.messages()[:1])): c for c in heldout_conversations(5)}

    def __call__(self, prompt, max_new_tokens, stop):
        c = self.answers[tuple(prompt)]
        return reply_ids(self.tokenizer, c.thought, c.answer + (" no" if c.family == self.wrong else ""))[:max_new_tokens]


def test_evaluate_scores_each_family(tokenizer):
    result = evaluate(None, tokenizer, n_per_family=5, generate_fn=Oracle(tokenizer, "mul"), sequence_len=512, with_loss=False)
    assert set(result["families"]) == set(REASONING_FAMILIES)
    for family, stats in result["families"].items():
        assert stats["n"] == 5
        assert stats["accuracy"] == (0.0 if family == "mul" else 1.0)
    assert result["well_formed"] == 1.0
    assert result["accuracy"] == pytest.approx(1 - 1 / len(REASONING_FAMILIES))


@pytest.fixture
def checkpoint_path(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=256, vocab_size=400, n_layer=1, n_head=2, n_kv_head=1, n_embd=32)).init_weights()
    save_checkpoint(tmp_path, model, tokenizer, {"step": 0, "preset": "test", "val_loss": 0.0})
    return tmp_path / "checkpoint.pt"


def test_untrained_model_scores_zero_with_finite_loss(checkpoint_path):
    model, tokenizer, checkpoint = load_checkpoint(checkpoint_path)
    result = evaluate(model, tokenizer, n_per_family=1)
    assert result["accuracy"] == 0.0
    assert torch.isfinite(torch.tensor(result["val_loss"]))
    assert checkpoint["meta"]["preset"] == "test"


def test_eval_command_prints_every_family(checkpoint_path):
    result = CliRunner().invoke(main, ["eval", str(checkpoint_path), "--n", "1", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert set(figures["families"]) == set(REASONING_FAMILIES) and "val_loss" in figures


@pytest.mark.parametrize("content", [None, b"not a checkpoint", "dict"])
def test_bad_checkpoints_are_one_line_errors(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    if content == "dict":
        torch.save({"model": {}}, path)
    elif content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(main, ["eval", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1


def test_batched_greedy_decoding_matches_generate():
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=64, vocab_size=50, n_layer=2, n_head=2, n_kv_head=1, n_embd=32)
    model = GPT(cfg).init_weights(zero_init_outputs=False).eval()
    prompts = [[1, 2, 3], [4, 5, 6], [7, 8], [9, 10, 11], [3, 3], [12, 13, 14]]
    limits = [10, 5, 12, 20, 1, 15]
    stop = (model.generate(prompts[0], 10)[3],)  # a token that really occurs, so stopping is exercised
    expected = [model.generate(p, n, stop_tokens=stop) for p, n in zip(prompts, limits)]
    assert any(r[-1] in stop for r in expected)
    assert greedy_replies(model, prompts, limits, stop, batch_size=2) == expected
