"""A model's Jinja chat template, reduced to data the runtime applies without Jinja.

The runtime (runtime_rs/src/chat.rs, `Template`) renders a conversation from a few strings: the
opening text, each role's prefix and suffix (and whether the template strips message content),
where a system message goes (its own block, merged into the first user message, dropped or
refused), the generation prompt with thinking on and off (Qwen3's `enable_thinking`) and how the
history's thoughts are rendered, or that they are dropped. This module finds those strings in the
model's own template: it renders probe conversations whose contents are sentinels and reads the
pieces off the output (no table of known templates). Then it proves the reduction: conversations
of one to three turns, with and without a system message, with thoughts in the history, with
thinking on and off, are rendered by the template and by the runtime and tokenized; the first
difference is a compile error naming the conversation and the token, never a different prompt.

A template is untrusted input. It is rendered in jinja2's immutable sandbox (as transformers does),
in a child process with bounded memory, CPU time and output: attribute tricks, loops that never end
and megabytes of output fail in one line.

Thoughts reach a template as the message's `reasoning_content` (the field Qwen3's and DeepSeek-R1's
templates read); the runtime's messages carry them as `thought`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from .errors import MonologueError

MAX_OUTPUT = 1 << 20  # characters one rendering may produce
TIMEOUT_S = 20  # wall time for all renderings of one compile
MEMORY = 1 << 30  # bytes of address space the renderer may use

# what transformers gives a template besides the conversation: the tokenizer's special tokens
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


# --- finding the template -------------------------------------------------------------------------------

def read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MonologueError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(doc, dict):
        raise MonologueError(f"{path}: not a JSON object")
    return doc


def find_template(folder: Path | None, given: Path | None) -> tuple[str, str, str] | None:
    """(template text, where it came from, the same without folders for the manifest):
    `--chat-template FILE`, else the folder's chat_template.jinja, else tokenizer_config.json's
    "chat_template" (a string, or a list of named templates of which "default" is taken); None
    when there is none."""
    if given is not None:
        try:
            text = Path(given).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise MonologueError(f"--chat-template {given}: cannot read it ({e})") from None
        return text, f"--chat-template {given}", f"--chat-template {Path(given).name}"
    if folder is None:
        return None
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return find_template(None, jinja)[0], str(jinja), jinja.name
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    template = read_json(config).get("chat_template")
    where = f"{config}: chat_template"
    if template is None:
        return None
    name = ""
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if "default" not in named:
            raise MonologueError(f"{where}: a list of templates without one named \"default\" "
                                 f"({', '.join(map(str, named))}); give one with --chat-template FILE")
        template, name = named["default"], "[default]"
    if not isinstance(template, str):
        raise MonologueError(f"{where}{name}: must be a string or a list of named templates")
    return template, where + name, f"{config.name}: chat_template{name}"


def special_token_strings(folder: Path | None) -> dict[str, str]:
    """bos_token, eos_token, ... from tokenizer_config.json (a string or an AddedToken dict)."""
    config = folder / "tokenizer_config.json" if folder is not None else None
    if config is None or not config.is_file():
        return {}
    doc = read_json(config)
    out = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = doc.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def eos_ids(folder: Path | None) -> list[int]:
    """generation_config.json's eos_token_id (an id or a list of ids), else config.json's."""
    for name in ("generation_config.json", "config.json"):
        path = folder / name if folder is not None else None
        if path is None or not path.is_file():
            continue
        value = read_json(path).get("eos_token_id")
        if value is None:
            continue
        ids = value if isinstance(value, list) else [value]
        if not all(type(i) is int and i >= 0 for i in ids):
            raise MonologueError(f"{path}: eos_token_id must be a token id or a list of them, not {value!r}")
        return ids
    return []


# --- rendering in the sandbox -----------------------------------------------------------------------

def render(template: str, where: str, context: dict, calls: list[dict]) -> list[str | None]:
    """Each call ({"messages", "add_generation_prompt", "kwargs"}) rendered by the template in a
    sandboxed child process; None where the template refused it (raise_exception, an error)."""
    request = json.dumps({"template": template, "context": context, "calls": calls})
    try:
        done = subprocess.run([sys.executable, "-c", "from monologue_compile.chat_template import _child; _child()"],
                              input=request, capture_output=True, text=True, timeout=TIMEOUT_S, encoding="utf-8")
    except subprocess.TimeoutExpired:
        raise MonologueError(f"{where}: rendering did not finish in {TIMEOUT_S} s (a loop that never ends?)") from None
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError:
        why = "it ran out of memory" if "MemoryError" in done.stderr else f"exit status {done.returncode}"
        raise MonologueError(f"{where}: the template could not be rendered ({why})") from None
    if "fatal" in answer:
        raise MonologueError(f"{where}: {answer['fatal']}")
    if answer.get("dated") and where not in _NOTED:
        import click

        _NOTED.add(where)
        today = ", ".join(datetime.now().strftime(f) for f in answer["dated"])
        click.echo(f"note: {where}: the template writes today's date (strftime_now); the compiled chat keeps this "
                   f"compile's, {today}", err=True)
    return answer["results"]


_NOTED: set[str] = set()  # templates whose date note was given


def _limits() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (TIMEOUT_S, TIMEOUT_S))


def _environment():
    from jinja2.exceptions import SecurityError, TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        # `"x" * 10**9` would build the megabytes before any output limit sees them
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(right, int) and right > 64:
                raise SecurityError("an exponent over 64")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT:
                        raise SecurityError(f"a repetition longer than {MAX_OUTPUT} characters")
            return super().call_binop(context, operator, left, right)

    def raise_exception(message):
        raise TemplateError(message)

    def strftime_now(fmt):
        DATED.append(fmt)
        return datetime.now().strftime(fmt)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


DATED: list[str] = []  # the child's strftime_now formats, as the template asked for them


def _child() -> None:
    """The renderer process: a request on stdin, {"results": [...]} or {"fatal": why} on stdout."""
    from jinja2.exceptions import SecurityError, TemplateSyntaxError

    _limits()
    request = json.loads(sys.stdin.read())
    try:
        answer = {"results": [_render_one(request, call) for call in request["calls"]], "dated": sorted(set(DATED))}
    except TemplateSyntaxError as e:
        answer = {"fatal": f"not a Jinja template: {e.message} (line {e.lineno})"}
    except SecurityError as e:
        answer = {"fatal": f"unsafe template refused: {e}"}
    except _TooLong:
        answer = {"fatal": f"the template renders more than {MAX_OUTPUT} characters"}
    except RecursionError:
        answer = {"fatal": "the template recurses without end"}
    except MemoryError:
        answer = {"fatal": "the template ran out of memory"}
    sys.stdout.write(json.dumps(answer))


class _TooLong(Exception):
    pass


def _render_one(request: dict, call: dict) -> str | None:
    from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError

    env = _environment()
    template = env.from_string(request["template"])
    context = {**request["context"], "messages": call["messages"], "tools": None, "documents": None,
               "add_generation_prompt": call["add_generation_prompt"], **call.get("kwargs", {})}
    out, n = [], 0
    try:
        for chunk in template.generate(**context):
            n += len(chunk)
            if n > MAX_OUTPUT:
                raise _TooLong
            out.append(chunk)
    except (SecurityError, TemplateSyntaxError):
        raise
    except TemplateError:
        return None  # raise_exception: the template refuses this conversation
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        return None
    return "".join(out)


# --- reduction --------------------------------------------------------------------------------------

def _hf_message(m: dict) -> dict:
    """A runtime message as a template reads it (thought as reasoning_content)."""
    out = {"role": m["role"], "content": m["content"]}
    if m.get("thought") is not None:
        out["reasoning_content"] = m["thought"]
    return out


def _call(messages, gen: bool, **kwargs) -> dict:
    return {"messages": [_hf_message(m) for m in messages], "add_generation_prompt": gen, "kwargs": kwargs}


PAD = " \n"  # around probe contents: whether the template strips them shows


def _probe(name: str) -> str:
    return f"{PAD}Qz{name}Zq{PAD}"


class _Reader:
    """Reads pieces off one rendered probe; every failure names the probe."""

    def __init__(self, text: str | None, what: str, where: str):
        if text is None:
            raise MonologueError(f"{where}: cannot reduce the template: it refuses {what}")
        self.text, self.what, self.where = text, what, where

    def fail(self, why: str):
        raise MonologueError(f"{self.where}: cannot reduce the template: {why} (rendering {self.what}: "
                             f"{self.text[:200]!r})")

    def find(self, name: str, after: int = 0) -> tuple[int, int, str] | None:
        """(start, end, strip) of probe `name`'s content at or after `after`, None if absent."""
        core = f"Qz{name}Zq"
        at = self.text.find(core, after)
        if at < 0:
            return None
        if self.text.find(core, at + 1) >= 0:
            self.fail("the content of one message appears twice")
        left = self.text[max(0, at - len(PAD)):at] == PAD
        right = self.text[at + len(core):at + len(core) + len(PAD)] == PAD
        strip = {(True, True): "none", (False, False): "both", (False, True): "left", (True, False): "right"}
        return at - len(PAD) * left, at + len(core) + len(PAD) * right, strip[(left, right)]

    def need(self, name: str, after: int = 0) -> tuple[int, int, str]:
        found = self.find(name, after)
        if found is None:
            self.fail("a message's content is missing from the output")
        return found


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return a[len(a) - n:]


def reduce_template(template: str, where: str, context: dict) -> dict:
    """The runtime's form of `template` (the manifest's chat.template; docs/formats.md)."""
    u1, a1, u2, s1, t1 = (_probe(n) for n in ("U1", "A1", "U2", "S1", "T1"))
    convs = {
        "one": [{"role": "user", "content": u1}],
        "two": [{"role": "user", "content": u1}, {"role": "assistant", "content": a1}],
        "three": [{"role": "user", "content": u1}, {"role": "assistant", "content": a1},
                  {"role": "user", "content": u2}],
        "system": [{"role": "system", "content": s1}, {"role": "user", "content": u1}],
        "thought": [{"role": "user", "content": u1}, {"role": "assistant", "content": a1, "thought": t1},
                    {"role": "user", "content": u2}],
    }
    calls = [_call(convs["one"], False), _call(convs["one"], True), _call(convs["three"], False),
             _call(convs["system"], False), _call(convs["thought"], True),
             _call(convs["one"], True, enable_thinking=False), _call(convs["two"], False)]
    one, one_gen, three, system, thought, one_no_think, two = render(template, where, context, calls)

    r = _Reader(one, "one user message", where)
    start, end, user_strip = r.need("U1")
    before_u1, user_suffix = one[:start], one[end:]
    r = _Reader(one_gen, "one user message and the generation prompt", where)
    if not one_gen.startswith(one):
        r.fail("the generation prompt changes what comes before it")
    generation = one_gen[len(one):]

    r = _Reader(three, "a user, assistant, user conversation", where)
    s_u1, e_u1, _ = r.need("U1")
    s_a1, e_a1, assistant_strip = r.need("A1", e_u1)
    s_u2, e_u2, _ = r.need("U2", e_a1)
    if three[:s_u1] != before_u1 or three[e_u2:] != user_suffix:
        r.fail("the first user message renders differently when more follow")
    if not three[e_u1:s_a1].startswith(user_suffix):
        r.fail("a user message's ending depends on what follows it")
    assistant_prefix = three[e_u1 + len(user_suffix):s_a1]
    between = three[e_a1:s_u2]
    # `between` is the assistant's suffix + the user's prefix: the suffix is what follows an assistant
    # message that ends the conversation, where the template renders one so; else the split leaves
    # the user's prefix as long as it can be
    user_prefix = _common_suffix(before_u1, between)
    found = two is not None and _Reader(two, "a user and an assistant message", where).find("A1")
    if found:
        suffix = two[found[1]:]
        if between.startswith(suffix) and before_u1.endswith(between[len(suffix):]):
            user_prefix = between[len(suffix):]
    opening, assistant_suffix = before_u1[:len(before_u1) - len(user_prefix)], between[:len(between) - len(user_prefix)]

    placement = _system(system, where, opening, user_prefix, user_suffix)
    history = _thoughts(thought, where, user_suffix + assistant_prefix, generation, three)

    no_thinking = None
    if one_no_think is not None and one_no_think != one_gen:
        r = _Reader(one_no_think, "the generation prompt with enable_thinking false", where)
        if not one_no_think.startswith(one):
            r.fail("the generation prompt changes what comes before it")
        no_thinking = one_no_think[len(one):]
    default_system = None
    if placement["placement"] == "block" and opening.startswith(placement["before"]) \
            and opening.endswith(placement["after"]) and len(opening) > len(placement["before"]) + len(placement["after"]):
        default_system = opening[len(placement["before"]):len(opening) - len(placement["after"])]
    return {
        "opening": opening,
        "system": placement,
        "default_system": default_system,
        "user": {"prefix": user_prefix, "suffix": user_suffix, "strip": user_strip},
        "assistant": {"prefix": assistant_prefix, "suffix": assistant_suffix, "strip": assistant_strip},
        "generation": generation,
        "generation_no_thinking": no_thinking,
        "thought": {"history": history},
    }


def _system(text: str | None, where: str, opening: str, user_prefix: str, user_suffix: str) -> dict:
    if text is None:
        return {"placement": "refused"}
    r = _Reader(text, "a system message and a user message", where)
    found = r.find("S1")
    if found is None:
        return {"placement": "dropped"}
    s_s, e_s, strip = found
    s_u, e_u, _ = r.need("U1", e_s)
    if text[e_u:] != user_suffix:
        r.fail("a user message ends differently after a system message")
    between = text[e_s:s_u]
    if between.endswith(user_prefix):
        return {"placement": "block", "before": text[:s_s], "after": between[:len(between) - len(user_prefix)],
                "strip": strip}
    head = opening + user_prefix
    if not text[:s_s].startswith(head):
        r.fail("the system message is neither its own block nor part of the first user message")
    return {"placement": "merged", "before": text[len(head):s_s], "between": between}


def _thoughts(text: str | None, where: str, user_to_assistant: str, generation: str, three: str) -> dict | None:
    r = _Reader(text, "a conversation with a thought in its history", where)
    found = r.find("T1")
    if found is None:
        if text != three + generation:
            r.fail("a thought in the history changes more than its own place")
        return None
    s_t, e_t, strip = found
    if strip != "none":
        r.fail("the template strips a thought's whitespace")
    s_u1, e_u1, _ = r.need("U1")
    s_a1, _, _ = r.need("A1", e_t)
    lead = text[e_u1:s_t]
    if not lead.startswith(user_to_assistant):
        r.fail("a thought changes the assistant message's prefix")
    return {"before": lead[len(user_to_assistant):], "after": text[e_t:s_a1]}


# --- the proof ---------------------------------------------------------------------------------------

def proof_conversations() -> list[tuple[str, list[dict]]]:
    """Conversations the reduction must render exactly as the template does."""
    turns = [("What is 2+2?", "It is 4.", "2+2 makes 4"), ("And times 3?\n", " That gives 12.", "4*3=12"),
             ("Thanks! 🙂", "You're welcome.", "polite")]
    out = []
    for n in (1, 2, 3):
        for system in (None, "You are a terse assistant."):
            for thoughts in (False, True):
                if n == 1 and thoughts:
                    continue
                msgs = [{"role": "system", "content": system}] if system else []
                for i in range(n):
                    q, a, t = turns[i]
                    msgs.append({"role": "user", "content": q})
                    if i < n - 1:
                        msgs.append({"role": "assistant", "content": a, **({"thought": t} if thoughts else {})})
                name = f"{n} turn{'s' * (n > 1)}{', system' if system else ''}{', thoughts in history' if thoughts else ''}"
                out.append((name, msgs))
    return out


def prove(reduced: dict, template: str, where: str, context: dict, tok) -> int:
    """Render every proof conversation with the template (sandboxed) and the reduction (the
    runtime's Rust renderer); raise on the first token that differs. Returns how many were compared."""
    convs = proof_conversations()
    if reduced["system"]["placement"] == "refused":
        convs = [(n, m) for n, m in convs if m[0]["role"] != "system"]
    switches = [None] + ([False] if reduced["generation_no_thinking"] is not None else [])
    cases = [(name, msgs, thinking) for name, msgs in convs for thinking in switches]
    kwargs = [{} if thinking is None else {"enable_thinking": thinking} for _, _, thinking in cases]
    texts = render(template, where, context, [_call(m, True, **kw) for (_, m, _), kw in zip(cases, kwargs)])
    for (name, msgs, thinking), text in zip(cases, texts):
        label = name + (", thinking off" if thinking is False else "")
        if text is None:
            raise MonologueError(f"{where}: the template refuses a conversation the chat sends ({label})")
        want = tok.encode(text)
        got = tok.render_for_completion(msgs, template=reduced, enable_thinking=thinking)
        if got != want:
            i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]), min(len(got), len(want)))
            raise MonologueError(
                f"{where}: cannot reduce the template: for {label} it renders {tok.decode(want[i:i + 8])!r} at token {i} "
                f"where the reduction gives {tok.decode(got[i:i + 8])!r}")
    return len(cases)


# --- the manifest's chat section ---------------------------------------------------------------------

# the special tokens of this project's (and nanochat's) own layout, used where a model has no template
NANOCHAT_LAYOUT = ("<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>")


def text_section(tok, eos: list[int]) -> dict:
    """The chat of a model with no chat template and no tokens of this project's layout (a base model:
    GPT-2, a nanoGPT or llama2.c run): the conversation is one running text that the model continues.
    Every template string is empty but the opening, which is what the tokenizer puts before a text of
    its own (Llama's `<s>`); a system message opens the text. A reply ends at an eos id, else at the
    token limit."""
    plain = {"prefix": "", "suffix": "", "strip": "none"}
    template = {"opening": text_opening(tok.to_json()),
                "system": {"placement": "merged", "before": "", "between": "\n\n"},
                "user": plain, "assistant": plain, "generation": "", "generation_no_thinking": None,
                "thought": {"history": None}}
    return {"template": template, "source": "none: the model continues the text", "stop": sorted(set(eos)),
            "thought": None, "end_of_turn": None, "proved": 0, "continues_text": True}


def text_opening(tokenizer_json: str) -> str:
    """The special tokens a tokenizer.json's post-processor puts before a text on its own (a
    TemplateProcessing's leading tokens: Llama's `<s>`, Llama 3's `<|begin_of_text|>`, BERT's
    `[CLS]`; BertProcessing's and RobertaProcessing's cls token), as text."""
    try:
        doc = json.loads(tokenizer_json)
    except ValueError:
        return ""
    post = doc.get("post_processor") if isinstance(doc, dict) else None
    steps = post.get("processors", []) if isinstance(post, dict) and post.get("type") == "Sequence" else [post]
    opening = ""
    for step in steps:
        if isinstance(step, dict) and step.get("type") in ("BertProcessing", "RobertaProcessing"):
            cls = step.get("cls")  # [token, id]: BERT's [CLS], RoBERTa's <s>
            opening += cls[0] if isinstance(cls, list) and cls and isinstance(cls[0], str) else ""
        if isinstance(step, dict) and step.get("type") == "TemplateProcessing":
            for item in step.get("single") or []:
                token = item.get("SpecialToken") if isinstance(item, dict) else None
                if not isinstance(token, dict) or not isinstance(token.get("id"), str):
                    break
                opening += token["id"]
    return opening


def chat_section(tok, template: tuple[str, str, str] | None, specials: dict[str, str], eos: list[int]) -> dict:
    """The manifest's "chat": the reduced template (null: this project's own layout), where it came
    from, the tokens that end the assistant's turn, and the thought markers of a model that thinks."""
    names = tok.special_tokens
    thinks = THINK_OPEN in names and THINK_CLOSE in names
    if template is None:
        if any(n not in names for n in NANOCHAT_LAYOUT):
            return text_section(tok, eos)
        stop = [names[n] for n in ("<|assistant_end|>", "<|bos|>") if n in names]
        return {"template": None, "source": "built-in", "stop": stop,
                "thought": {"open": THINK_OPEN, "close": THINK_CLOSE} if thinks else None,
                "end_of_turn": "<|assistant_end|>" if "<|assistant_end|>" in names else None, "proved": 0}
    text, where, label = template
    reduced = reduce_template(text, where, specials)
    proved = prove(reduced, text, where, specials, tok)
    thinks = thinks or (THINK_OPEN in text and THINK_CLOSE in text)
    suffix = reduced["assistant"]["suffix"]
    ends = sorted(((suffix.find(n), n) for n in names if n in suffix), key=lambda p: (p[0], -len(p[1])))
    end_of_turn = ends[0][1] if ends else None
    stop = sorted(set(eos) | ({names[end_of_turn]} if end_of_turn else set()))
    if not stop:
        raise MonologueError(f"{where}: no token ends the assistant's turn (no special token in its suffix "
                             f"{suffix!r}, no eos_token_id in generation_config.json or config.json)")
    return {"template": reduced, "source": label, "stop": stop,
            "thought": {"open": THINK_OPEN, "close": THINK_CLOSE} if thinks else None,
            "end_of_turn": end_of_turn, "proved": proved}
