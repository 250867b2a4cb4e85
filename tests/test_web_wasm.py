"""The wasm backend in the page: a tiny model compiled for real, runtime.wasm built from it, served,
and a greedy reply in headless Chromium that is exactly R_q's greedy reply from PyTorch.

The compiler does not list runtime.wasm in the manifest yet, so this test adds it (as
"../runtime.wasm", its path from model/): the page runs nothing it has not verified.
"""

import hashlib
import json

import numpy as np
import pytest
import torch

from conftest import tiny_model
from monologue_compile.artifact import load_model
from monologue_compile.backends.rust_crate import build_wasm, emit_crate, find_toolchain
from monologue_compile.errors import MonologueError
from monologue_compile.site import copy_web_shell
from monologue_compile.tokenizer import Tokenizer
from test_runtime_native_parity import compile_model, rq_model
from web_helpers import ask_and_wait, browser, serving, settings  # noqa: F401

QUESTION = "What is 2+2?"
MAX_NEW_TOKENS = 40


def have_wasm_toolchain():
    try:
        find_toolchain(wasm=True)
        return True
    except MonologueError:
        return False


pytestmark = pytest.mark.skipif(not have_wasm_toolchain(), reason="no Rust toolchain for wasm32")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wasm_site")
    dist = compile_model(tmp, tiny_model(seed=0), "int8")
    graph, _, _ = load_model(dist)
    build_wasm(emit_crate(graph, tmp / "crate" / "runtime_rs"), dist / "runtime.wasm", fast=True)
    copy_web_shell(dist)
    manifest = json.loads((dist / "model" / "manifest.json").read_text())
    wasm = (dist / "runtime.wasm").read_bytes()
    manifest["files"].append({"path": "../runtime.wasm", "bytes": len(wasm), "sha256": hashlib.sha256(wasm).hexdigest()})
    (dist / "model" / "manifest.json").write_text(json.dumps(manifest))
    return dist


def greedy_reference(dist, question=QUESTION, max_new_tokens=MAX_NEW_TOKENS):
    """R_q's greedy reply in PyTorch: (token ids, thought, answer), the text split as the page splits it."""
    _, model = rq_model(dist)
    manifest = json.loads((dist / "model" / "manifest.json").read_text())
    tok = Tokenizer.from_json((dist / "model" / "tokenizer.json").read_text())
    stops = {tok.token_id("<|assistant_end|>"), tok.token_id("<|bos|>")}
    ids = tok.render_for_completion([{"role": "user", "content": question}])
    budget = min(max_new_tokens, manifest["model"]["config"]["sequence_len"] - len(ids))
    out = []
    with torch.no_grad():
        while len(out) < budget:
            nxt = int(np.argmax(model(torch.tensor([ids + out]))[0, -1].numpy()))
            if nxt in stops:
                break
            out.append(nxt)
    text = tok.decode_bytes(out).decode("utf-8", errors="replace").strip()
    thought, answer = "", text
    if text.startswith("<think>"):
        thought, _, answer = text[len("<think>"):].partition("</think>")
    return out, thought.strip(), answer.strip()


def test_greedy_reply_on_wasm_is_r_q(browser, site):
    tokens, thought, answer = greedy_reference(site)
    with serving(site) as url:
        context = browser.new_context()
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(error))
        page.goto(url)
        page.wait_for_selector("body:not([data-state='loading']):not([data-upgrading])", timeout=120_000)
        if page.input_value("#backend") != "wasm":
            # WebGPU would be preferred once it exists; this test is about the CPU path.
            page.select_option("#backend", "wasm")
        page.wait_for_selector("body[data-state='ready']", timeout=60_000)
        assert page.input_value("#backend") == "wasm"

        settings(page, temperature=0, maxNewTokens=MAX_NEW_TOKENS)
        reply = ask_and_wait(page, QUESTION)
        assert reply.locator(".answer").text_content() == answer
        assert reply.locator(".thought-text").text_content() == thought
        assert f"{len(tokens)} tokens" in reply.locator(".reply-meta").inner_text()
        assert "tokens/s on CPU (wasm)" in reply.locator(".reply-meta").inner_text()
        assert not errors, errors
        context.close()
