"""The newest nanochat architecture (residual/x0 lambdas, sliding windows, value embeddings with
gates, smear as a token shift, backout) chatting in the page on WebGPU in headless Chromium: the
page's worker prefills a prompt longer than one plan chunk and its greedy reply equals R_q's
(PyTorch, the dequantized weights) token for token. wgpu-py covers the same plan in
test_wgpu_nanochat.py; this is the browser's executor (web_shell/webgpu_executor.js) on it.

The ids are read as test_web_hf_chat.py reads them: generate.js is wrapped as it is served and the
page's Worker constructor records what the worker posts; the page itself is not changed."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tiktoken")

from test_nanochat import LATER, SIZES, _random_later, write_nanochat_dir  # noqa: E402
from test_runtime_native_parity import shared_crate_dir  # noqa: E402
from test_web_hf_chat import recording_page, rq_greedy  # noqa: E402
from test_web_wasm import have_wasm_toolchain  # noqa: E402
from web_helpers import ask_and_wait, browser, serving, settings  # noqa: E402, F401

pytestmark = pytest.mark.skipif(not have_wasm_toolchain(), reason="no Rust toolchain for wasm32")

SEQ = 192
MAX_NEW_TOKENS = 24
# One byte per token here (the test tokenizer has no merges): longer than a prefill chunk.
QUESTION = "Please tell me, in as few words as you can manage, what two plus two makes, and why it does?"


@pytest.fixture(scope="module")
def newest_site(tmp_path_factory):
    from monologue_compile.artifact import add_files_to_manifest, load_model, read_manifest
    from monologue_compile.backends.rust_crate import build_wasm, emit_crate
    from monologue_compile.driver import compile_to
    from monologue_compile.frontend.load import build_module
    from monologue_compile.parity import rq_state_dict

    features, pattern = LATER["mar2026b-smear-backout"]
    model = _random_later(features, pattern)
    model.config.sequence_len = SEQ
    d = tmp_path_factory.mktemp("nanochat-web")
    write_nanochat_dir(d / "ckpt", model.state_dict(), {**SIZES, "sequence_len": SEQ, "window_pattern": pattern},
                       prefix="")
    manifest = compile_to(d / "ckpt", d / "dist", quant="int8")
    g = load_model(d / "dist")[0]
    assert "token_shift" in {n.op for n in g.nodes}
    assert read_manifest(d / "dist" / "model")["webgpu"]["plan"] == "plan.json"
    build_wasm(emit_crate(g, shared_crate_dir()), d / "dist" / "runtime.wasm", fast=True)
    add_files_to_manifest(d / "dist" / "model", ["../runtime.wasm"])
    chunk = json.loads((d / "dist" / "model" / "plan.json").read_text())["chunk"]
    rq = build_module(g.meta["arch"], g.meta["config"], rq_state_dict(g)).eval()
    return d / "dist", rq, set(manifest["chat"]["stop"]), chunk


def test_newest_nanochat_replies_as_r_q_on_webgpu_in_chromium(browser, newest_site):
    dist, rq, stops, chunk = newest_site
    with serving(dist) as url:
        context, page, errors = recording_page(browser, url)
        if page.input_value("#backend") != "webgpu":
            title = page.locator("#backend option[value=webgpu]").get_attribute("title") or ""
            if "no WebGPU" in title:
                pytest.skip(f"this Chromium has no WebGPU adapter: {title}")
            raise AssertionError(f"WebGPU was not chosen: {title}; status: {page.inner_text('#status')}")
        settings(page, temperature=0, maxNewTokens=MAX_NEW_TOKENS)
        ask_and_wait(page, QUESTION)
        assert page.input_value("#backend") == "webgpu"
        turn = page.evaluate("window.turns")[-1]
        assert len(turn["prompt"]) > chunk, (len(turn["prompt"]), chunk)
        want = rq_greedy(rq, turn["prompt"], stops, MAX_NEW_TOKENS)
        assert want and turn["tokens"] == want
        assert not errors, errors
        context.close()
