"""Hugging Face chat templates reduced to the runtime's form (monologue_compile/chat_template.py):
prompt ids from the Rust renderer equal transformers' `apply_chat_template(..., tokenize=True)` for
multi-turn conversations (system, thoughts in the history, thinking on and off), with Qwen3's and
Llama-2's templates over tokenizers trained here (byte-level and SentencePiece style; nothing is
downloaded); compiled Qwen3 and Llama folders chat with greedy replies equal to R_q on the
interpreter, the native runtime and the page's wasm Engine (under Node); hostile templates fail in
one line."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from test_runtime_native_parity import shared_crate_dir  # noqa: E402
from test_tokenizer_hf import QWEN2_PATTERN  # noqa: E402

from monologue_compile.chat_template import chat_section, proof_conversations, reduce_template  # noqa: E402
from monologue_compile.errors import MonologueError  # noqa: E402
from monologue_compile.tokenizer import Tokenizer  # noqa: E402

# The shape of Qwen3's template: system block, earlier thoughts dropped (split on </think> or
# reasoning_content), enable_thinking=False closes an empty thought in the generation prompt.
QWEN3_TEMPLATE = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

# Llama-2's template: BOS per turn, the system message merged into the first user message, content
# stripped, roles checked to alternate.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

CORPUS = ["What is 2+2? It is 4. And times 3? That gives 12. Thanks! You're welcome. 🙂 " * 3,
          "You are a terse assistant. <think> polite 2+2 makes 4 </think> Hello there, how are you?\n\n"] * 30


def train_tokenizer(style: str):
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

    if style == "llama2":
        hf = tokenizers.Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
        hf.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        hf.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                        decoders.Strip(" ", 1, 0)])
        specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        hf.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                                   show_progress=False))
        return hf
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    hf.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return hf


STYLES = {
    "qwen3": (QWEN3_TEMPLATE, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "llama2": (LLAMA2_TEMPLATE, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
}


def tokenizer_folder(style: str, d):
    """tokenizer.json + tokenizer_config.json (with the chat template), as save_pretrained writes them."""
    from transformers import PreTrainedTokenizerFast

    template, specials = STYLES[style]
    fast = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(style), chat_template=template, **specials)
    fast.save_pretrained(d)
    return fast


@pytest.fixture(scope="module", params=sorted(STYLES))
def folder(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    tokenizer_folder(request.param, d)
    return request.param, d


def hf_prompt(auto, messages, **kw):
    hf_messages = [{"role": m["role"], "content": m["content"],
                    **({"reasoning_content": m["thought"]} if m.get("thought") is not None else {})} for m in messages]
    ids = auto.apply_chat_template(hf_messages, tokenize=True, add_generation_prompt=True, **kw)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def section(d):
    from monologue_compile.chat_template import eos_ids, find_template, special_token_strings

    tok = Tokenizer.load(d / "tokenizer.json")
    return tok, chat_section(tok, find_template(d, None), special_token_strings(d), eos_ids(d))


def test_prompt_ids_equal_apply_chat_template(folder):
    style, d = folder
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(d))
    tok, chat = section(d)
    t = chat["template"]
    extra = [("spaces around", [{"role": "user", "content": "  padded  \n"}])]
    compared = 0
    for name, msgs in proof_conversations() + extra:
        for thinking in ([None, False, True] if style == "qwen3" else [None]):
            kw = {} if thinking is None else {"enable_thinking": thinking}
            assert tok.render_for_completion(msgs, template=t, enable_thinking=thinking) == hf_prompt(auto, msgs, **kw), \
                (name, thinking)
            compared += 1
    assert compared >= 11
    # the compiler proved every conversation, thinking on and off where the template switches it
    assert chat["proved"] == len(proof_conversations()) * (2 if style == "qwen3" else 1)


def test_reduced_forms_read_off_the_templates(folder):
    style, d = folder
    tok, chat = section(d)
    t = chat["template"]
    names = tok.special_tokens
    if style == "qwen3":
        assert t["system"] == {"placement": "block", "before": "<|im_start|>system\n", "after": "<|im_end|>\n",
                               "strip": "none"}
        assert (t["user"]["prefix"], t["user"]["suffix"]) == ("<|im_start|>user\n", "<|im_end|>\n")
        assert t["generation"] == "<|im_start|>assistant\n"
        assert t["generation_no_thinking"] == "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        assert t["thought"]["history"] is None  # earlier thoughts dropped, as the template drops them
        assert chat["thought"] == {"open": "<think>", "close": "</think>"}
        assert chat["end_of_turn"] == "<|im_end|>" and chat["stop"] == [names["<|im_end|>"]]
    else:
        assert t["system"] == {"placement": "merged", "before": "<<SYS>>\n", "between": "\n<</SYS>>\n\n"}
        assert t["opening"] == "" and t["user"]["prefix"] == "<s>[INST] " and t["user"]["strip"] == "both"
        assert t["generation"] == "" and t["generation_no_thinking"] is None and chat["thought"] is None
        assert chat["end_of_turn"] == "</s>" and chat["stop"] == [names["</s>"]]


def test_default_system_prompt_is_found():
    template = QWEN3_TEMPLATE.replace(
        "{%- if messages[0].role == 'system' %}",
        "{%- if messages[0].role != 'system' %}{{- '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{%- endif %}"
        "{%- if messages[0].role == 'system' %}")
    t = reduce_template(template, "test", {})
    assert t["default_system"] == "You are helpful."
    assert t["opening"] == "<|im_start|>system\nYou are helpful.<|im_end|>\n"


# the shapes of Llama-3's (content trimmed, BOS on the first message), Mistral's (no system role)
# and Qwen2.5's (a default system prompt) templates
LLAMA3_TEMPLATE = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


def test_other_families_reduce():
    t = reduce_template(LLAMA3_TEMPLATE, "test", {"bos_token": "<|begin_of_text|>"})
    assert t["opening"] == "<|begin_of_text|>" and t["user"]["strip"] == "both"
    assert t["system"]["before"] == "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    assert t["assistant"]["suffix"] == "<|eot_id|>"
    t = reduce_template(MISTRAL_TEMPLATE, "test", {"bos_token": "<s>", "eos_token": "</s>"})
    assert t["system"] == {"placement": "refused"} and t["assistant"] == {"prefix": "", "suffix": "</s>", "strip": "none"}
    tok = Tokenizer.train(["[INST] hello [/INST]"] * 20, vocab_size=300)
    with pytest.raises(MonologueError, match="takes no system message"):
        tok.render_for_completion([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], template=t)
    assert tok.decode(tok.render_for_completion([{"role": "user", "content": "y"}], template=t)) == "<s>[INST] y [/INST]"


def test_a_template_that_writes_todays_date_keeps_the_compiles_and_says_so(capfd):
    """Llama 3.2's template writes strftime_now("%d %b %Y") into its system block: the reduced form
    holds the date it was compiled on, and the compile says so on stderr."""
    from datetime import datetime

    template = ("{{ bos_token }}{{ '<|sys|>Today Date: ' + strftime_now('%d %b %Y') + '<|end|>' }}"
                "{% for m in messages %}{{ '<|' + m.role + '|>' + m.content + '<|end|>' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    t = reduce_template(template, "dated.jinja", {"bos_token": "<s>"})
    today = datetime.now().strftime("%d %b %Y")
    assert t["opening"] == f"<s><|sys|>Today Date: {today}<|end|>"
    assert f"note: dated.jinja: the template writes today's date (strftime_now); the compiled chat keeps this " \
        f"compile's, {today}" in capfd.readouterr().err


def test_kept_thoughts_are_read_off_the_template():
    template = ("{% for m in messages %}<|{{ m.role }}|>{% if m.reasoning_content %}<think>{{ m.reasoning_content }}"
                "</think>{% endif %}{{ m.content }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    t = reduce_template(template, "test", {})
    assert t["thought"]["history"] == {"before": "<think>", "after": "</think>"}
    assert t["system"]["placement"] == "block"


@pytest.mark.parametrize("template, says", [
    ("{{ ''.__class__.__mro__ }}", "unsafe template refused"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}{% endfor %}"
     "{% endfor %}{% endfor %}", "did not finish"),
    ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "renders more than"),
    ("{{ 'x' * 100000000 }}", "unsafe template refused"),
    ("{% for m in messages %}{{ m.content }}", "not a Jinja template"),
    ("{% for m in messages %}{% if m.role == 'user' %}{{ m.content | upper }}{% endif %}{% endfor %}",
     "cannot reduce the template"),
])
def test_hostile_or_irreducible_templates_fail_in_one_line(template, says, monkeypatch):
    import monologue_compile.chat_template as ct

    monkeypatch.setattr(ct, "TIMEOUT_S", 3)
    with pytest.raises(MonologueError, match=says) as e:
        ct.reduce_template(template, "chat_template.jinja", {})
    assert "\n" not in str(e.value)


# --- a compiled folder chats as transformers prompts it ------------------------------------------------

def model_folder(style: str, d):
    """A tiny random Qwen3 / Llama model saved with save_pretrained beside its tokenizer files and a
    generation_config.json whose eos_token_id is a list."""
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Qwen3Config

    fast = tokenizer_folder(style, d)
    vocab = len(fast)
    small = dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=160)
    cfg = Qwen3Config(**small, head_dim=8) if style == "qwen3" else LlamaConfig(**small)
    torch.manual_seed(3)
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        m.lm_head.weight.mul_(40)  # random logits spread enough that greedy replies are not all ties
    m.save_pretrained(d)
    eos = [fast.convert_tokens_to_ids(t) for t in ((fast.eos_token, "<|endoftext|>") if style == "qwen3" else (fast.eos_token,))]
    GenerationConfig(eos_token_id=eos).save_pretrained(d)
    return m, eos


@pytest.fixture(scope="module", params=sorted(STYLES))
def compiled_folder(request, tmp_path_factory):
    from monologue_compile.driver import compile_to

    d = tmp_path_factory.mktemp(f"{request.param}-model")
    m, eos = model_folder(request.param, d)
    out = tmp_path_factory.mktemp(f"{request.param}-dist") / "dist"
    manifest = compile_to(d, out, quant="none")
    return request.param, d, out, m, manifest, eos


def greedy_reply(model, prompt: list[int], stops: set[int], n: int) -> list[int]:
    out = []
    for t in model.generate(prompt, n):
        if t in stops:
            break
        out.append(t)
    return out


def test_compiled_folder_records_the_chat_and_replies_as_r_q(compiled_folder):
    from transformers import AutoTokenizer

    from monologue_compile.artifact import load_model
    from monologue_compile.chat import reply
    from monologue_compile.frontend.hf import CausalLMLogits
    from monologue_compile.interpreter import Session

    style, d, out, m, manifest, eos = compiled_folder
    chat = manifest["chat"]
    assert chat["source"] in ("chat_template.jinja", "tokenizer_config.json: chat_template")  # no local paths
    assert set(eos) <= set(chat["stop"])
    from monologue_compile.driver import chat_summary

    line, = chat_summary(chat)  # what the compile prints
    assert f"proved token for token on {chat['proved']} conversations" in line
    assert ("thinking can be switched off" in line) == (style == "qwen3")
    g, _, tj = load_model(out)
    tok = Tokenizer.from_json(tj)
    auto = AutoTokenizer.from_pretrained(str(d))
    rq = CausalLMLogits(m.eval(), 160)
    rng = np.random.default_rng(0)
    s, fed, messages, lengths = Session(g), [], [], []
    for question in ("What is 2+2?", "And times 3?"):
        messages.append({"role": "user", "content": question})
        prompt = tok.render_for_completion(messages, template=chat["template"])
        assert prompt == hf_prompt(auto, messages)
        got, fed = reply(s, tok, prompt, fed, 12, 0.0, None, None, rng, stops=set(chat["stop"]))
        assert got == greedy_reply(rq, prompt, set(chat["stop"]), 12)
        messages.append({"role": "assistant", "content": tok.decode(got)})
        lengths.append(len(got))
    assert sum(lengths) > 0, "every reply stopped at once: the check compared nothing"


def test_chat_cli_no_thinking_only_where_the_template_can(compiled_folder):
    from click.testing import CliRunner

    from monologue_compile.cli import main

    style, _, out, *_ = compiled_folder
    r = CliRunner().invoke(main, ["chat", str(out), "--no-thinking", "--prompt", "hi", "--max-tokens", "4"])
    if style == "qwen3":
        assert r.exit_code == 0, r.stderr
        assert "context:" in r.stdout
    else:
        assert r.exit_code == 2 and "cannot switch thinking off" in r.stderr and "Traceback" not in r.stderr


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "thought": "2+2=4"}, {"role": "user", "content": "and 3+3?"}]


def test_native_runtime_applies_the_folders_chat_template(compiled_folder):
    """The compiled runtime (mono_chat_start_messages: the manifest's template, rendered in Rust)
    starts from transformers' prompt for a conversation with a system message and a thought in its
    history, and writes the interpreter's greedy reply, streamed as its decoded text; thinking on
    and off where the template can."""
    from transformers import AutoTokenizer

    from monologue_compile.artifact import load_model
    from monologue_compile.backends.native import NativeModel
    from monologue_compile.backends.rust_crate import build_native, emit_crate
    from monologue_compile.chat import reply
    from monologue_compile.interpreter import Session

    style, d, out, *_ = compiled_folder
    g, manifest, tj = load_model(out)
    tok, chat = Tokenizer.from_json(tj), manifest["chat"]
    auto = AutoTokenizer.from_pretrained(str(d))
    native = NativeModel.from_dist(out, lib_path=build_native(emit_crate(g, shared_crate_dir()), fast=True))
    native.set_sampler(temperature=0.0)
    compared = 0
    for thinking in ((None, False) if style == "qwen3" else (None,)):
        kw = {} if thinking is None else {"enable_thinking": thinking}
        prompt = tok.render_for_completion(MESSAGES, template=chat["template"], enable_thinking=thinking)
        assert prompt == hf_prompt(auto, MESSAGES, **kw)
        want, _ = reply(Session(g), tok, prompt, [], 10, 0.0, None, None, np.random.default_rng(0),
                        stops=set(chat["stop"]))
        native.chat_start({"messages": MESSAGES, "enable_thinking": thinking is not False}, 10)
        assert native.pos == len(prompt)
        got, done, shown = [], None, ""
        while done is None:
            step = native.chat_step()
            done = step["done"]
            shown += "".join(text for _, text in step["pieces"])
            if step["token"] is not None and done != "stop":
                got.append(step["token"])
        assert got == want
        # the text streamed token by token is the reply's decoded text
        assert shown == tok.decode(got).replace("<think>", "").replace("</think>", "")
        compared += len(want)
        native.reset()
    assert compared, "every reply stopped at once: the check compared nothing"


def test_page_engine_renders_with_the_manifests_template(compiled_folder, tmp_path):
    """web_shell/wasm_runtime.js's Engine (runtime.wasm under Node) encodes the conversation as
    transformers does, continues it as R_q does, stops on chat.stop, and streams text as it decodes."""
    from transformers import AutoTokenizer

    from monologue_compile.artifact import load_model
    from monologue_compile.backends.rust_crate import build_wasm, emit_crate, find_toolchain
    from monologue_compile.frontend.hf import CausalLMLogits

    try:
        find_toolchain(wasm=True)
    except MonologueError:
        pytest.skip("no wasm32 Rust toolchain")
    if shutil.which("node") is None:
        pytest.skip("no Node")
    style, d, out, m, *_ = compiled_folder
    g, manifest, _ = load_model(out)
    dist = tmp_path / "dist"
    shutil.copytree(out, dist)
    build_wasm(emit_crate(g, shared_crate_dir()), dist / "runtime.wasm", fast=True)
    script = Path(__file__).parent / "runtime_node" / "engine.mjs"
    r = subprocess.run(["node", str(script), str(dist), json.dumps(MESSAGES), "12"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["prompt"] == hf_prompt(AutoTokenizer.from_pretrained(str(d)), MESSAGES)
    assert got["ids"] == greedy_reply(CausalLMLogits(m.eval(), 160), got["prompt"], set(), 12)  # R_q: quant none
    assert got["stops"] == [i in manifest["chat"]["stop"] for i in got["ids"]]
    # streamed token by token as the page shows a reply, the text keeps its spaces (Llama-2's Strip
    # decoder takes a space off the first token of a text only)
    assert got["streamed"] == got["whole"] and "and 3+3?" in bytes(got["whole"]).decode()


# A template over this project's own special tokens, unlike its built-in layout: the system message in
# its own block, thoughts dropped from the history, a thinking switch.
OWN_TEMPLATE = (
    "<|bos|>{% for m in messages %}{% if m.role == 'system' %}<|user_start|>system: {{ m.content }}<|user_end|>"
    "{% elif m.role == 'user' %}<|user_start|>{{ m.content }}<|user_end|>"
    "{% else %}<|assistant_start|>{{ m.content }}<|assistant_end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant_start|>{% if enable_thinking is defined and not enable_thinking %}"
    "<think></think>{% endif %}{% endif %}"
)


def test_chat_template_flag_replaces_the_checkpoints_layout(tmp_path):
    """`--chat-template FILE` (compile_to's chat_template) on this project's GPT: the manifest holds
    the file's template, reduced, and the runtime's renderer gives the Jinja render's tokens, thinking
    on and off (the CLI's flag is test_cli_refuses_a_hostile_template_in_one_line_and_writes_nothing's)."""
    from conftest import tiny_model, write_checkpoint

    from monologue_compile.artifact import load_model
    from monologue_compile.chat_template import render
    from monologue_compile.driver import compile_to

    (tmp_path / "own.jinja").write_text(OWN_TEMPLATE)
    checkpoint = write_checkpoint(tmp_path / "checkpoint.pt", tiny_model())
    chat = compile_to(checkpoint, tmp_path / "dist", chat_template=tmp_path / "own.jinja")["chat"]
    assert chat["source"] == "--chat-template own.jinja"
    assert chat["template"]["system"]["placement"] == "block" and chat["template"]["thought"]["history"] is None
    tok = Tokenizer.from_json(load_model(tmp_path / "dist")[2])
    for thinking in (None, False):
        kw = {} if thinking is None else {"enable_thinking": thinking}
        text = render(OWN_TEMPLATE, "own.jinja", {}, [{"messages": [{k: v for k, v in m.items() if k != "thought"}
                                                                   for m in MESSAGES],
                                                      "add_generation_prompt": True, "kwargs": kw}])[0]
        prompt = tok.render_for_completion(MESSAGES, template=chat["template"], enable_thinking=thinking)
        assert prompt == tok.encode(text)
        assert prompt != tok.render_for_completion(MESSAGES)  # not this project's built-in layout


def test_a_generation_prompt_that_opens_the_thought():
    from monologue_compile.chat import opens_thought

    template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}")
    t = reduce_template(template, "test", {})
    assert t["generation"] == "<|assistant|><think>\n" and opens_thought(t, None)
    qwen3 = reduce_template(QWEN3_TEMPLATE, "test", {})
    assert not opens_thought(qwen3, None) and not opens_thought(qwen3, False) and not opens_thought(None, None)


def test_template_sources(tmp_path):
    from monologue_compile.chat_template import find_template

    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    assert find_template(tmp_path, None)[0] == "D"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "rag", "template": "R"}]}))
    with pytest.raises(MonologueError, match="without one named \"default\".*--chat-template"):
        find_template(tmp_path, None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": 3}))
    with pytest.raises(MonologueError, match="must be a string"):
        find_template(tmp_path, None)
    (tmp_path / "chat_template.jinja").write_text("J")
    assert find_template(tmp_path, None)[0] == "J"  # the file wins
    (tmp_path / "given.jinja").write_text("G")
    assert find_template(tmp_path, tmp_path / "given.jinja") == ("G", f"--chat-template {tmp_path / 'given.jinja'}",
                                                                 "--chat-template given.jinja")


def test_cli_refuses_a_hostile_template_in_one_line_and_writes_nothing(tmp_path, tiny_checkpoint):
    (tmp_path / "evil.jinja").write_text("{{ messages.__class__.__base__.__subclasses__() }}")
    from click.testing import CliRunner

    from monologue_compile.cli import main

    out = tmp_path / "dist"
    r = CliRunner().invoke(main, ["compile", str(tiny_checkpoint), "-o", str(out), "--no-wasm", "--chat-template",
                                  str(tmp_path / "evil.jinja")])
    assert r.exit_code == 2 and "unsafe template refused" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


# --- a model without a chat template -------------------------------------------------------------

def with_bos_post_processor(tokenizer_json: Path) -> None:
    """Add Llama-2's post-processor (`<s>` before a text) to a tokenizer.json, as its real files have."""
    from tokenizers import processors

    hf = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", hf.token_to_id("<s>"))])
    hf.save(str(tokenizer_json))


@pytest.mark.parametrize("style", sorted(STYLES))
def test_a_model_without_a_template_continues_one_text_as_its_tokenizer_encodes_it(style, tmp_path):
    """No chat template and none of this project's layout tokens (a base model): the conversation is
    one running text, opened as the tokenizer opens a text on its own (Llama-2's `<s>`), so the prompt
    ids are the tokenizer's ids of all the messages' contents joined; a reply ends at the eos ids."""
    train_tokenizer(style).save(str(tmp_path / "tokenizer.json"))
    if style == "llama2":
        with_bos_post_processor(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path / "tokenizer.json")
    chat = chat_section(tok, None, {}, [2])
    assert chat["continues_text"] and chat["stop"] == [2] and chat["thought"] is None
    assert chat["template"]["opening"] == ("<s>" if style == "llama2" else "")
    messages = [{"role": "user", "content": "Once upon a time"}, {"role": "assistant", "content": " there was 2+2"},
                {"role": "user", "content": " and then, 🙂"}]
    for n in (1, 3):
        text = "".join(m["content"] for m in messages[:n])
        assert tok.render_for_completion(messages[:n], template=chat["template"]) == hf.encode(text).ids
    system = [{"role": "system", "content": "A story."}] + messages[:1]
    assert tok.render_for_completion(system, template=chat["template"]) == hf.encode("A story.\n\nOnce upon a time").ids
