"""Evaluation: held-out accuracy per task family, well-formed replies, and validation loss.

`evaluate(model, tokenizer, ...)` is the Python entry point (the compiler's parity report calls it
on a quantized model, or passes its own `generate_fn` to drive another backend; without one, the
model decodes greedily, prompts of equal length batched together); `monologue eval
CHECKPOINT` prints the same figures.

A reply is well-formed when it is `<think>` thought `</think>` answer `<|assistant_end|>` with a
non-empty answer and nothing else special in between; it is correct when it is well-formed and its
answer equals the expected answer exactly (the corpus answers are deterministic per problem).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from monologue_compile.errors import MonologueError

from .data.reasoning import REASONING_FAMILIES, Conversation, heldout_conversations
from monologue_compile.models.gpt import GPT, GPTConfig, KVCache

# (prompt ids, max_new_tokens, stop token ids) -> generated ids, stop token included when emitted
GenerateFn = Callable[[list[int], int, tuple[int, ...]], list[int]]


def load_checkpoint(path, device: str = "cpu"):
    """(model in eval mode, tokenizer, checkpoint dict) from a Monologue `checkpoint.pt`."""
    from monologue_compile.tokenizer import Tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise MonologueError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which file, not a traceback
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MonologueError(f"{path}: not a readable checkpoint ({first_line})") from None
    missing = {"model_config", "model", "tokenizer"} - set(checkpoint) if isinstance(checkpoint, dict) else {"model_config"}
    if missing:
        raise MonologueError(f"{path}: not a Monologue checkpoint (missing {', '.join(sorted(missing))})")
    model = GPT(GPTConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    return model, Tokenizer.from_json(checkpoint["tokenizer"]), checkpoint


def parse_reply(tokenizer, ids: list[int]) -> tuple[bool, str, str]:
    """(well_formed, thought, answer) of generated ids."""
    think, end_think, end = (tokenizer.token_id(t) for t in ("<think>", "</think>", "<|assistant_end|>"))
    specials = set(tokenizer.special_tokens.values()) if isinstance(tokenizer.special_tokens, dict) else set()
    if not ids or ids[0] != think or ids[-1] != end or end_think not in ids:
        return False, "", tokenizer.decode([i for i in ids if i not in specials])
    split = ids.index(end_think)
    thought_ids, answer_ids = ids[1:split], ids[split + 1 : -1]
    stray = specials & set(thought_ids + answer_ids)
    thought, answer = tokenizer.decode(thought_ids), tokenizer.decode(answer_ids)
    return not stray and bool(answer.strip()), thought, answer.strip()


@torch.no_grad()
def greedy_replies(model: GPT, prompts: list[list[int]], limits: list[int], stop: tuple[int, ...], batch_size: int = 64) -> list[list[int]]:
    """Greedy replies, the same as model.generate(prompt, limit, stop_tokens=stop) for each prompt,
    but decoding prompts of equal length together in one batch (one KV cache, shared positions)."""
    device = next(model.parameters()).device
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    replies: list[list[int]] = [[] for _ in prompts]
    groups = [g[k : k + batch_size] for g in by_length.values() for k in range(0, len(g), batch_size)]
    for group in groups:
        steps = max(limits[i] for i in group)
        cache = KVCache(model.config, len(group), len(prompts[group[0]]) + steps, device=device)
        inputs = torch.tensor([prompts[i] for i in group], device=device)
        done = [False] * len(group)
        for _ in range(steps):
            tokens = model(inputs, kv_cache=cache)[:, -1].argmax(-1).tolist()
            for row, (i, token) in enumerate(zip(group, tokens)):
                if not done[row]:
                    replies[i].append(token)
                    done[row] = token in stop or len(replies[i]) >= limits[i]
            if all(done):
                break
            inputs = torch.tensor(tokens, device=device)[:, None]
    return replies


@torch.no_grad()
def evaluate(
    model: GPT | None,
    tokenizer,
    n_per_family: int = 50,
    seed: int = 0,
    families=REASONING_FAMILIES,
    generate_fn: GenerateFn | None = None,
    sequence_len: int | None = None,
    with_loss: bool = True,
) -> dict:
    """Greedy replies to held-out problems: accuracy per family, well-formed fraction, val loss."""
    conversations = heldout_conversations(n_per_family, seed, families)
    sequence_len = sequence_len or model.config.sequence_len
    stop = (tokenizer.token_id("<|assistant_end|>"), tokenizer.token_id("<|bos|>"))
    prompts, limits = [], []
    for conversation in conversations:
        prompt = tokenizer.render_for_completion(conversation.messages()[:1])
        expected_len = len(tokenizer.render_conversation(conversation.messages())[0]) - len(prompt)
        prompts.append(prompt)
        # A reply far longer than the reference one is wrong anyway; the cap keeps eval fast.
        limits.append(min(sequence_len - len(prompt), 2 * expected_len + 16))
    if generate_fn is None:
        replies = greedy_replies(model, prompts, limits, stop)
    else:
        replies = [generate_fn(prompt, limit, stop) for prompt, limit in zip(prompts, limits)]
    per_family: dict[str, dict] = {}
    examples = []
    for conversation, ids in zip(conversations, replies):
        well_formed, thought, answer = parse_reply(tokenizer, ids)
        correct = well_formed and answer == conversation.answer
        stats = per_family.setdefault(conversation.family, {"n": 0, "correct": 0, "well_formed": 0})
        stats["n"] += 1
        stats["correct"] += correct
        stats["well_formed"] += well_formed
        examples.append({"family": conversation.family, "user": conversation.user, "expected": conversation.answer,
                         "thought": thought, "answer": answer, "well_formed": well_formed, "correct": correct})
    for stats in per_family.values():
        stats["accuracy"] = stats["correct"] / stats["n"]
    total = sum(s["n"] for s in per_family.values())
    result = {
        "families": per_family,
        "well_formed": sum(s["well_formed"] for s in per_family.values()) / max(total, 1),
        "accuracy": sum(s["correct"] for s in per_family.values()) / max(total, 1),
        "examples": examples,
    }
    if with_loss and model is not None:
        result["val_loss"] = validation_loss(model, tokenizer, conversations)
    return result


@torch.no_grad()
def validation_loss(model: GPT, tokenizer, conversations: list[Conversation]) -> float:
    """Mean cross-entropy per trained token (the assistant's part) over whole conversations."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for conversation in conversations:
        ids, mask = tokenizer.render_conversation(conversation.messages())
        ids, mask = ids[: model.config.sequence_len + 1], mask[: model.config.sequence_len + 1]
        x = torch.tensor([ids[:-1]], device=device)
        y = torch.tensor([[t if m else -1 for t, m in zip(ids[1:], mask[1:])]], device=device)
        logits = model(x)
        total += F.cross_entropy(logits[0], y[0], ignore_index=-1, reduction="sum").item()
        count += int((y >= 0).sum())
    return total / count if count else math.nan


def format_report(result: dict) -> str:
    lines = [f"{'family':<10} {'n':>4} {'correct':>8} {'well-formed':>12}"]
    for family, s in result["families"].items():
        lines.append(f"{family:<10} {s['n']:>4} {s['accuracy']:>8.1%} {s['well_formed'] / s['n']:>12.1%}")
    lines.append(f"{'all':<10} {sum(s['n'] for s in result['families'].values()):>4} {result['accuracy']:>8.1%} {result['well_formed']:>12.1%}")
    if "val_loss" in result:
        lines.append(f"validation loss {result['val_loss']:.4f}")
    return "\n".join(lines)
