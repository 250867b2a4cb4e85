"""`monologue chat DIR --backend numpy`: chat in the terminal with a compiled model.

The thought (between `<think>` and `</think>`) is shown dimmed, apart from the answer. Greedy by
default; --temperature, --top-k, --top-p and --seed sample instead. The conversation is rendered
with the model's own chat template (the manifest's reduced "chat" template, applied by the Rust
renderer) each turn and only the tokens the session has not seen yet are fed, so the KV cache
carries over between turns. A reply ends at any of the manifest's stop tokens. For a model that
thinks, the thought is kept in the history and the template renders or drops it as it does;
--no-thinking switches thinking off where the template can (Qwen3's enable_thinking).

The conversation is kept within the model's context as the web page keeps it (web_shell/context.js):
when a prompt would leave the reply too little room, the oldest thoughts go first, then the oldest
turns, each with a note; a message the model cannot read at all, its reply included, is refused and the chat goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import numpy as np
from rich.console import Console

from .schema import FiniteFloat


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


# backend name -> factory(graph, dist) of an object with .forward(ids) -> logits (T, V), .reset(), .pos
def _numpy_session(graph, dist):
    from .interpreter import Session

    return Session(graph)


def _native_session(graph, dist):
    from .backends.native import NativeModel

    return NativeModel.from_dist(dist)  # builds DIST/runtime_rs natively (cached by its sources)


def _wasm_session(graph, dist):
    from .backends import native

    if (Path(dist) / "runtime.wasm").exists():
        return native.WasmModel.from_dist(dist)
    return native.wasm_session_for_graph(graph)


def _wgpu_session(graph, dist):
    from .backends.wgpu_executor import WgpuSession, graph_session

    # run DIST's own plan.json and kernels, as the browser does, when the compiler wrote them
    if (Path(dist) / "model" / "plan.json").exists():
        return WgpuSession.from_dist(dist)
    return graph_session(graph)


BACKENDS = {"numpy": _numpy_session, "native": _native_session, "wasm": _wasm_session, "wgpu": _wgpu_session}


def sample(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
           rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else top-k / top-p (nucleus) sampling, as monologue_compile.models.gpt.sample_next."""
    if temperature <= 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / temperature
    if top_k:
        kth = np.sort(x)[-min(top_k, x.size)]
        x = np.where(x < kth, -np.inf, x)
    if top_p is not None and 0 < top_p < 1:
        order = np.argsort(-x, kind="stable")
        p = np.exp(x[order] - x[order[0]])
        p /= p.sum()
        drop = np.cumsum(p) - p >= top_p  # a token goes when those before it already cover top_p
        x[order[drop]] = -np.inf
    p = np.exp(x - x.max())
    p /= p.sum()
    return int(rng.choice(x.size, p=p))


def reply_room(context_limit: int, max_new_tokens: int) -> int:
    """Tokens kept free for the reply: what was asked for, but at most half the context."""
    return max(1, min(max_new_tokens, context_limit // 2))


class MessageTooLong(Exception):
    def __init__(self, tokens: int, context_limit: int):
        super().__init__(
            f"This message is {tokens} tokens long, but the model reads at most {context_limit} tokens at a time, "
            "its reply included. Shorten it and send it again.")


@dataclass
class Fitted:
    messages: list[dict]  # the conversation as the model reads it
    prompt: list[int]
    dropped_turns: int  # left out, oldest first
    dropped_thoughts: int  # taken out of the turns that stay

    def note(self, context_limit: int) -> str:
        parts = []
        if self.dropped_turns:
            parts.append("the oldest turn" if self.dropped_turns == 1 else f"the {self.dropped_turns} oldest turns")
        if self.dropped_thoughts:
            parts.append("its thought in an earlier reply" if self.dropped_thoughts == 1
                         else f"its thoughts in {self.dropped_thoughts} earlier replies")
        if not parts:
            return ""
        return (f"The conversation outgrew what the model reads at a time ({context_limit} tokens): "
                f"from here on it no longer sees {' or '.join(parts)}.")


def fit_conversation(messages: list[dict], encode: Callable[[list[dict]], list[int]], context_limit: int,
                     room: int) -> Fitted:
    """The conversation (ending with the new user message) with its oldest thoughts, then its oldest
    turns (a user message and the replies up to the next one) left out until its prompt leaves `room`
    tokens of `context_limit`. The last message alone may leave less (its reply is cut by the context);
    MessageTooLong when it leaves no room at all."""
    budget = context_limit - room
    kept = list(messages)
    prompt = encode(kept)
    stripped = set()
    for i in range(len(kept) - 1):
        if len(prompt) <= budget:
            break
        if kept[i]["role"] != "assistant" or "thought" not in kept[i]:
            continue
        kept[i] = {k: v for k, v in kept[i].items() if k != "thought"}
        stripped.add(id(kept[i]))
        prompt = encode(kept)
    dropped_turns = 0
    while len(prompt) > budget and len(kept) > 1:
        end = 1
        while end < len(kept) - 1 and kept[end]["role"] != "user":
            end += 1
        kept = kept[end:]
        dropped_turns += 1
        prompt = encode(kept)
    if len(prompt) >= context_limit:
        raise MessageTooLong(len(prompt), context_limit)
    return Fitted(kept, prompt, dropped_turns, sum(id(m) in stripped for m in kept))


class ThoughtSplitter:
    """Feeds on decoded text; says which part (thought or answer) each new piece belongs to."""

    def __init__(self):
        self.text = ""
        self.shown = 0

    def feed(self, text: str) -> list[tuple[str, str]]:
        """Pieces ("thought"|"answer", text) not shown yet; holds back a possible partial tag."""
        self.text = text
        upto = len(text)
        for tag in (THINK_OPEN, THINK_CLOSE):  # a tag may be arriving piece by piece
            for k in range(len(tag) - 1, 0, -1):
                if text.endswith(tag[:k]):
                    upto = min(upto, len(text) - k)
                    break
        out = []
        for part, start, end in self._segments(text, upto):
            start = max(start, self.shown)
            if end > start:
                out.append((part, text[start:end]))
        self.shown = max(self.shown, upto)
        return out

    @staticmethod
    def _segments(text: str, upto: int) -> list[tuple[str, int, int]]:
        o = text.find(THINK_OPEN, 0, upto)
        if o == -1:
            return [("answer", 0, upto)]
        c = text.find(THINK_CLOSE, o, upto)
        segs = [("answer", 0, o), ("thought", o + len(THINK_OPEN), c if c != -1 else upto)]
        if c != -1:
            segs.append(("answer", c + len(THINK_CLOSE), upto))
        return segs

    def parts(self) -> tuple[str, str]:
        """(thought, answer) of everything fed so far."""
        t = self.text
        o, c = t.find(THINK_OPEN), t.find(THINK_CLOSE)
        if o == -1:
            return "", t.strip()
        thought = t[o + len(THINK_OPEN):(c if c != -1 else len(t))]
        answer = t[:o] + (t[c + len(THINK_CLOSE):] if c != -1 else "")
        return thought.strip(), answer.strip()


def opens_thought(template: dict | None, thinking: bool | None) -> bool:
    """Whether the generation prompt opens the thought itself (DeepSeek-R1's ends with `<think>`),
    so the reply starts inside it."""
    if template is None:
        return False
    g = template["generation"]
    if thinking is False and template.get("generation_no_thinking") is not None:
        g = template["generation_no_thinking"]
    return g.rfind(THINK_OPEN) > g.rfind(THINK_CLOSE)


def default_stops(tok) -> set[int]:
    """This project's end-of-turn tokens (a manifest from before chat.stop)."""
    return {tok.special_tokens[s] for s in ("<|assistant_end|>", "<|bos|>") if s in tok.special_tokens}


def reply(session, tok, prompt: list[int], fed: list[int], max_tokens: int, temperature: float,
          top_k, top_p, rng, on_text=None, stops: set[int] | None = None) -> tuple[list[int], list[int]]:
    """Generate the assistant's turn, up to a stop token (default: this project's); returns
    (generated ids, all ids the session has now seen)."""
    if prompt[: len(fed)] != fed or len(fed) == 0:
        session.reset()
        fed = []
    logits = session.forward(prompt[len(fed):])[-1]
    fed = list(prompt)
    stops = default_stops(tok) if stops is None else stops
    out: list[int] = []
    limit = session.max_len
    stream = TextStream(tok)
    while len(out) < max_tokens and len(fed) < limit:
        t = sample(logits, temperature, top_k, top_p, rng)
        if t in stops:
            break
        out.append(t)
        if on_text is not None and stream.add(t):
            on_text(stream.text)
        fed.append(t)
        if len(fed) >= limit:
            break
        logits = session.forward([t])[-1]
    if on_text is not None and stream.finish():
        on_text(stream.text)
    return out, fed[: session.pos]  # exactly what the cache holds


class TextStream:
    """Text of tokens as they arrive, whole characters only: a character whose UTF-8 bytes are split
    across tokens is held back until its last byte comes (decoding each prefix of the tokens on its
    own would show U+FFFD for the split character, and the replacement would stay on screen)."""

    def __init__(self, tok):
        import codecs

        self.tok = tok
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.previous: int | None = None

    def add(self, token: int) -> bool:
        """Take one token; True when the text grew. Decoded alone, a token would lose what the decoder
        does to a text's first token (Llama-2's Strip of a leading space, Metaspace's dropped `▁`), so
        after another it is the pair's bytes less the other's (as the page's worker.js does)."""
        if self.previous is None:
            raw = self.tok.decode_bytes([token])
        else:
            raw = self.tok.decode_bytes([self.previous, token])[len(self.tok.decode_bytes([self.previous])):]
        self.previous = token
        piece = self.decoder.decode(raw)
        self.text += piece
        return bool(piece)

    def finish(self) -> bool:
        """End of the reply: bytes of a character that never completed become U+FFFD."""
        piece = self.decoder.decode(b"", final=True)
        self.text += piece
        return bool(piece)


@click.command("chat")
@click.argument("dist", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(sorted(BACKENDS)), default="numpy", show_default=True)
@click.option("--temperature", type=FiniteFloat(0, 100), default=0.0, show_default=True, help="0 is greedy")
@click.option("--top-k", type=click.IntRange(min=0), default=None)
@click.option("--top-p", type=FiniteFloat(0, 1), default=None)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=0), default=512, show_default=True)
@click.option("--prompt", "prompts", multiple=True, help="say this instead of reading stdin (repeatable)")
@click.option("--no-thinking", is_flag=True, help="switch the model's thinking off (where its chat template can)")
def chat_cmd(dist, backend, temperature, top_k, top_p, seed, max_tokens, prompts, no_thinking):
    """Chat with the compiled model in DIST (the thought is shown dimmed, apart from the answer)."""
    from .artifact import load_model
    from .errors import MonologueError
    from .tokenizer import Tokenizer

    graph, manifest, tok_json = load_model(dist)
    tok = Tokenizer.from_json(tok_json)
    chat = manifest.get("chat") or {"template": None, "stop": sorted(default_stops(tok)),
                                    "thought": {} if THINK_OPEN in tok.special_tokens else None}
    template = chat["template"]
    if no_thinking and (template is None or template.get("generation_no_thinking") is None):
        raise MonologueError(f"--no-thinking: the chat template of {dist} cannot switch thinking off")
    thinking = False if no_thinking else None

    def encode(msgs):
        return tok.render_for_completion(msgs, template=template, enable_thinking=thinking)

    lead = THINK_OPEN if opens_thought(template, thinking) else ""  # the reply starts inside the thought

    session = BACKENDS[backend](graph, dist)
    console = Console(highlight=False)
    label = "answer"
    if chat.get("continues_text"):  # a base model: no chat template, the conversation is one text
        label = "continued"
        console.print("This model has no chat template: it continues your text.", style="dim", markup=False)
    rng = np.random.default_rng(seed)
    messages: list[dict] = []
    fed: list[int] = []
    inputs = iter(prompts) if prompts else None
    while True:
        if inputs is not None:
            user = next(inputs, None)
        else:
            try:
                user = console.input("[bold]you>[/bold] ")
            except (EOFError, KeyboardInterrupt):
                user = None
        if user is None or user.strip() in ("/quit", "/exit"):
            break
        if not user.strip():
            continue
        limit = session.max_len
        try:
            fitted = fit_conversation(messages + [{"role": "user", "content": user}], encode,
                                      limit, reply_room(limit, max_tokens))
        except MessageTooLong as e:
            console.print(str(e), style="red", markup=False)
            continue
        messages = fitted.messages
        if fitted.note(limit):
            console.print(fitted.note(limit), style="dim", markup=False)
        prompt = fitted.prompt
        budget = min(max_tokens, limit - len(prompt))
        splitter = ThoughtSplitter()
        state = {"part": None}

        def show(text):
            for part, piece in splitter.feed(lead + text):
                if part != state["part"]:
                    console.print("\n[dim italic]thinking:[/dim italic] " if part == "thought" else
                                  f"\n[bold]{label}:[/bold] ", end="")
                    state["part"] = part
                console.print(piece, style="dim italic" if part == "thought" else None, end="", markup=False)

        out, fed = reply(session, tok, prompt, fed, budget, temperature, top_k, top_p, rng, show, set(chat["stop"]))
        console.print()
        if len(out) >= budget:
            console.print(f"(cut short: the model's context, {limit} tokens, is full)" if budget < max_tokens
                          else f"(reached --max-tokens {max_tokens})", style="dim", markup=False)
        console.print(f"context: {len(prompt) + len(out)} of {limit} tokens", style="dim", markup=False)
        thought, answer = splitter.parts()
        turn = {"role": "assistant", "content": answer}
        if thought and chat["thought"] is not None:
            turn["thought"] = thought  # the template keeps or drops it in the history, as the model's own does
        messages.append(turn)
