"""A Hugging Face folder chatting in the page: a tiny random Qwen3 (byte-level BPE trained here,
Qwen3's chat template) and a tiny random Llama (SentencePiece-style BPE with byte fallback,
Llama-2's template), saved with save_pretrained, compiled at int8 with runtime.wasm, served, and a
three-turn chat in headless Chromium on WebGPU and on wasm. The same Llama without a chat template (a
base model) continues one running text: its prompt ids are the tokenizer's ids of the messages joined.

What is proven, turn by turn: the prompt ids the page's worker prefills (rendered by runtime.wasm
from the manifest's reduced template) equal transformers' `apply_chat_template(..., tokenize=True,
add_generation_prompt=True)` for the conversation the page sends (its own earlier replies, thought
and answer, included), and the reply's token ids equal R_q's greedy continuation (PyTorch, the
dequantized weights) up to the stop token or the max-new-tokens setting.

The thought panel: a random model does not write `<think>` by itself, so the Qwen3 folder carries
the template of Qwen3's thinking releases (Qwen3-*-Thinking-2507), whose generation prompt opens the
thought (`<|im_start|>assistant\\n<think>\\n`): the page then starts the reply inside the thought and
the panel must show exactly the text of R_q's tokens. The model never closes its thought, so an
answer after `</think>` is not exercised here (test_web_chat.py covers that split on a scripted
backend). The Llama-2 template has no thought: its replies are all answer.

The page is not changed for this test: the ids are read by wrapping the worker's generate.js as it
is served (a test-only route) and the page's Worker constructor (an init script)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from test_chat_template_hf import QWEN3_TEMPLATE, STYLES, hf_prompt, model_folder, with_bos_post_processor  # noqa: E402
from test_runtime_native_parity import shared_crate_dir  # noqa: E402
from test_web_wasm import have_wasm_toolchain  # noqa: E402

from monologue_compile.tokenizer import Tokenizer  # noqa: E402
from web_helpers import ask_and_wait, browser, serving, settings  # noqa: E402, F401

pytestmark = pytest.mark.skipif(not have_wasm_toolchain(), reason="no Rust toolchain for wasm32")

QUESTIONS = ["What is 2+2?", "And times 3?", "Thanks!"]
MAX_NEW_TOKENS = 10
# Qwen3's thinking releases: the generation prompt opens the thought, and there is no switch.
QWEN3_THINKING_TEMPLATE = QWEN3_TEMPLATE[:QWEN3_TEMPLATE.index("{%- if add_generation_prompt %}")] + (
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n<think>\\n' }}\n{%- endif %}")
assert QWEN3_THINKING_TEMPLATE != QWEN3_TEMPLATE

# generate.js as served to the worker: it also posts the prompt it prefills and each token it keeps.
HOOKS = [("const context = [...promptIds];",
          'self.postMessage({ type: "test-prompt", ids: [...promptIds] }); const context = [...promptIds];'),
         ("onToken(id);", 'onToken(id); self.postMessage({ type: "test-token", id });')]
# The page's side: those messages are recorded and kept from app.js (which knows no such type); the
# conversation the worker reads ("context") is recorded too and passed on.
RECORD = """(() => {
  window.turns = [];
  const PageWorker = window.Worker;
  window.Worker = class extends PageWorker {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        const d = event.data;
        if (d.type === "context") window.turns.push({ messages: d.messages, prompt: null, tokens: [] });
        else if (d.type === "test-prompt") { window.turns.at(-1).prompt = d.ids; event.stopImmediatePropagation(); }
        else if (d.type === "test-token") { window.turns.at(-1).tokens.push(d.id); event.stopImmediatePropagation(); }
      });
    }
  };
})();"""


def hooked_generate(route):
    body = route.fetch().text()
    for old, new in HOOKS:
        assert body.count(old) == 1, f"generate.js changed: update this test's hook for {old!r}"
        body = body.replace(old, new)
    route.fulfill(body=body, content_type="text/javascript")


def recording_page(browser, url: str):
    """(context, page, page errors): the page at `url`, loaded, with the worker's prompt ids and tokens
    recorded in `window.turns`."""
    context = browser.new_context()
    context.add_init_script(RECORD)
    context.route("**/generate.js", hooked_generate)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(url)
    page.wait_for_selector("body:not([data-state='loading']):not([data-upgrading])", timeout=180_000)
    return context, page, errors


@pytest.fixture(scope="module", params=sorted(STYLES) + ["llama2-base"])
def hf_site(request, tmp_path_factory):
    """(style, dist, AutoTokenizer, the compiled Tokenizer, R_q module, stop ids) for a compiled HF folder with runtime.wasm."""
    from transformers import AutoTokenizer

    from monologue_compile.artifact import add_files_to_manifest, load_model
    from monologue_compile.backends.rust_crate import build_wasm, emit_crate
    from monologue_compile.driver import build, compile_to
    from monologue_compile.parity import rq_state_dict

    style = request.param
    d = tmp_path_factory.mktemp(f"{style}-web-model")
    model_folder(style.removesuffix("-base"), d)
    if style == "llama2-base":  # a base model: no chat template, and Llama-2's `<s>` before a text
        config = json.loads((d / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (d / "tokenizer_config.json").write_text(json.dumps(config))
        (d / "chat_template.jinja").unlink(missing_ok=True)
        with_bos_post_processor(d / "tokenizer.json")
    if style == "qwen3":
        config = json.loads((d / "tokenizer_config.json").read_text())
        config["chat_template"] = QWEN3_THINKING_TEMPLATE
        (d / "tokenizer_config.json").write_text(json.dumps(config))
        (d / "chat_template.jinja").unlink(missing_ok=True)
    dist = tmp_path_factory.mktemp(f"{style}-web") / "dist"
    manifest = compile_to(d, dist, quant="int8")
    # one crate folder for both styles: cargo's incremental build recompiles only the generated code
    build_wasm(emit_crate(load_model(dist)[0], shared_crate_dir()), dist / "runtime.wasm", fast=True)
    add_files_to_manifest(dist / "model", ["../runtime.wasm"])
    c = build(d, "int8")
    rq = c.loaded.build_module(rq_state_dict(c.graph)).eval()
    tok = Tokenizer.from_json((dist / "model" / "tokenizer.json").read_text())
    return style, dist, AutoTokenizer.from_pretrained(str(d)), tok, rq, set(manifest["chat"]["stop"])


def rq_greedy(rq, prompt: list[int], stops: set[int], n: int) -> list[int]:
    out: list[int] = []
    with torch.no_grad():
        while len(out) < n:
            t = int(rq(torch.tensor([prompt + out]))[0, -1].argmax())
            if t in stops:
                break
            out.append(t)
    return out


@pytest.mark.parametrize("backend", ["webgpu", "wasm"])
def test_three_turns_prompt_ids_are_apply_chat_template_and_replies_are_r_q(browser, hf_site, backend):
    style, dist, auto, tok, rq, stops = hf_site
    with serving(dist) as url:
        context, page, errors = recording_page(browser, url)
        option = page.locator(f"#backend option[value={backend}]")
        if option.is_disabled():
            title = option.get_attribute("title") or ""
            if backend == "webgpu" and "no WebGPU" in title:
                pytest.skip(f"this Chromium has no WebGPU adapter: {title}")
            raise AssertionError(f"{backend} unavailable: {title}; status: {page.inner_text('#status')}")
        if page.input_value("#backend") != backend:
            page.select_option("#backend", backend)
        page.wait_for_selector("body[data-state='ready']", timeout=60_000)
        assert page.input_value("#backend") == backend

        if style == "llama2-base":
            assert "continues" in page.inner_text("#intro-text")
        settings(page, temperature=0, maxNewTokens=MAX_NEW_TOKENS)
        compared = 0
        for n, question in enumerate(QUESTIONS, 1):
            reply = ask_and_wait(page, question)
            turns = page.evaluate("window.turns")
            assert len(turns) == n
            turn = turns[-1]
            messages = turn["messages"]
            assert [m["content"] for m in messages if m["role"] == "user"] == QUESTIONS[:n]  # nothing dropped
            if style == "llama2-base":  # one running text, as the tokenizer encodes it on its own
                assert turn["prompt"] == auto("".join(m["content"] for m in messages))["input_ids"], (n, messages)
            else:
                assert turn["prompt"] == hf_prompt(auto, messages), (n, messages)
            want = rq_greedy(rq, turn["prompt"], stops, MAX_NEW_TOKENS)
            assert turn["tokens"] == want, (n, messages)
            compared += len(want)

            # as the page decodes (WHATWG's replacement of bad UTF-8, as Python's): transformers' ByteFallback
            # turns a whole run of byte tokens into U+FFFDs when any of them is bad
            text = tok.decode_bytes(want).decode("utf-8", errors="replace")
            shown = reply.locator(".thought-text").text_content() if reply.locator(".thought-text").count() else ""
            if style == "qwen3":
                # the generation prompt opened the thought and the model never closed it: all thought
                assert "</think>" not in text
                assert shown == text.strip() and reply.locator(".answer").text_content() == ""
            else:
                assert shown == "" and reply.locator(".answer").text_content() == text.strip()
        assert compared > 0, "every reply stopped at once: the check compared nothing"
        assert not errors, errors
        context.close()
