"""End to end on the demo model (runs/demo/checkpoint.pt, trained by `./run.sh`; skipped until it
exists): compiled into a fresh dist (with runtime.wasm), served, asked a question in headless Chromium.
On WebGPU and then on wasm, greedy decoding writes exactly R_q's tokens; the thought panel is open
and live while the model thinks and folds away when the answer starts; the answer shown is the
decoded tokens'; nothing leaves the origin. Saves screenshots of the loaded page and of the reply
with its thought collapsed and opened.

About a minute on 2 cores (a 2M-parameter model), so it runs whenever the checkpoint is there.
"""

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from monologue_compile.driver import compile_to
from test_web_wasm import have_wasm_toolchain
from test_web_wasm import greedy_reference
from web_helpers import ask_and_wait, browser, outside, save_screenshot, serving, settings  # noqa: F401

DEMO = Path(__file__).resolve().parent.parent / "runs" / "demo" / "checkpoint.pt"
QUESTION = "What is 37 + 48?"
MAX_NEW_TOKENS = 160

pytestmark = [
    pytest.mark.skipif(not DEMO.exists(), reason="no runs/demo/checkpoint.pt (train it with ./run.sh)"),
    pytest.mark.skipif(not have_wasm_toolchain(), reason="no Rust toolchain for wasm32"),
]

# Records the reply's thought panel at every change, to check what a visitor saw while it streamed.
WATCH = """() => {
  window.panelStates = [];
  new MutationObserver(() => {
    const reply = document.querySelector(".message.assistant:last-child");
    if (!reply) return;
    window.panelStates.push({
      open: reply.querySelector(".thought").open,
      thought: reply.querySelector(".thought-text").textContent.length,
      answer: reply.querySelector(".answer").textContent.length,
    });
  }).observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true, attributes: true });
}"""


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory):
    """The site as `monologue compile` writes it: web shell, plan, runtime.wasm, all in the manifest."""
    tmp = tmp_path_factory.mktemp("demo_site")
    checkpoint = shutil.copy(DEMO, tmp / "checkpoint.pt")  # training may rewrite it meanwhile
    compile_to(checkpoint, tmp / "dist", wasm=True)
    return tmp / "dist"


def ask(page):
    page.evaluate(WATCH)
    return ask_and_wait(page, QUESTION), page.evaluate("window.panelStates")


def test_demo_reply_in_the_browser(browser, demo_site):
    tokens, thought, answer = greedy_reference(demo_site, QUESTION, MAX_NEW_TOKENS)
    assert thought and answer, f"the demo model does not think then answer: {(thought, answer)}"
    requests = []
    with serving(demo_site) as url:
        context = browser.new_context(viewport={"width": 1024, "height": 800})
        context.on("request", lambda request: requests.append(request.url))
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(error))
        page.goto(url)
        page.wait_for_selector("body:not([data-state='loading']):not([data-upgrading])", timeout=120_000)
        save_screenshot(page, "demo-loaded.png")
        backends = ["webgpu", "wasm"]
        if page.input_value("#backend") != "webgpu":
            title = page.locator("#backend option[value=webgpu]").get_attribute("title")
            assert "no WebGPU" in title, title  # only a Chromium without an adapter may skip it
            backends = ["wasm"]
        settings(page, temperature=0, maxNewTokens=MAX_NEW_TOKENS)

        for backend in backends:
            if page.input_value("#backend") != backend:
                page.select_option("#backend", backend)
                page.wait_for_selector("body[data-state='ready']", timeout=60_000)
                page.click("#new-chat")
            reply, states = ask(page)
            label = {"webgpu": "GPU (WebGPU)", "wasm": "CPU (wasm)"}[backend]
            meta = reply.locator(".reply-meta").inner_text()
            assert f"{len(tokens)} tokens" in meta and f"tokens/s on {label}" in meta, meta
            assert reply.locator(".thought-text").text_content() == thought
            assert reply.locator(".answer").text_content() == answer
            # Open and live while thinking (text growing, no answer yet); folded once the thought
            # ends, before the answer, and stays so; it says how long the model thought.
            folded = next(i for i, s in enumerate(states) if s["thought"] and not s["open"])
            thinking = [s for s in states[:folded] if s["thought"]]
            assert all(s["open"] and not s["answer"] for s in thinking), states
            assert len({s["thought"] for s in thinking}) > 1, "the thought did not stream"
            assert not any(s["open"] for s in states[folded:]), states
            assert reply.locator(".thought-label").inner_text().startswith("Thought for ")
            if backend == backends[0]:
                save_screenshot(page, "demo-reply-collapsed.png")
                reply.locator(".thought summary").click()
                save_screenshot(page, "demo-reply-thought-open.png")
        assert not errors, errors
        context.close()
    origin = "{0.scheme}://{0.netloc}/".format(urlsplit(url))
    assert outside(requests, origin) == []
