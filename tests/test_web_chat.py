"""The chat UI end to end, on a scripted backend injected by this test only.

engine.js is served with its backend table pointing at tests/test_web_chat_backend.js (a test
double implementing the Engine interface), so the UI can be driven without a model. Everything
else is the real page and worker: streaming, the thought panel, text-only rendering, settings,
stop, new chat, the backend switch and the device-loss fallback.
"""

import contextlib
import re
from pathlib import Path

import pytest

from web_helpers import browser, make_site, pseudo_random_bytes, save_screenshot, serving  # noqa: F401

DOUBLE = Path(__file__).with_name("test_web_chat_backend.js").read_text()
BACKEND_TABLE = re.compile(r"const BACKEND_MODULES = \{.*?\n\};", re.S)
TEST_TABLE = (
    'const BACKEND_MODULES = { webgpu: () => import("./test-backend.js?kind=webgpu"),'
    ' wasm: () => import("./test-backend.js?kind=wasm") };'
)
ANSWER = "The answer is <b>4</b> — ça fait 4 🎉. <img src=x onerror=\"document.title='pwned'\"> "


def inject_backend(context):
    def engine(route):
        body, replaced = BACKEND_TABLE.subn(TEST_TABLE, route.fetch().text())
        assert replaced == 1, "engine.js changed: update this test's injection"
        route.fulfill(body=body, content_type="text/javascript")

    context.route("**/engine.js", engine)
    context.route("**/test-backend.js*", lambda route: route.fulfill(body=DOUBLE, content_type="text/javascript"))


@contextlib.contextmanager
def open_chat(browser, site_dir, **manifest_fields):
    """The page on a site whose manifest has `manifest_fields`, ready to chat on the test backend."""
    site = make_site(site_dir, {"model/weights-00.bin": pseudo_random_bytes(10_000, 1)}, **manifest_fields)
    with serving(site) as url:
        context = browser.new_context(viewport={"width": 1024, "height": 800})
        inject_backend(context)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(error))
        page.goto(url)
        page.wait_for_selector("body[data-state='ready']", timeout=30_000)
        yield page
        assert not errors, errors
        context.close()


@pytest.fixture
def chat(browser, tmp_path):
    with open_chat(browser, tmp_path / "dist") as page:
        yield page


def last_reply(page):
    return page.locator(".message.assistant").last


def ask(page, text):
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def wait_done(page):
    page.wait_for_selector("body[data-state='ready']", timeout=30_000)


def test_reply_streams_with_thought_panel(browser, tmp_path):
    with open_chat(browser, tmp_path / "dist", test_think_ms=35) as page:
        check_reply_streams_with_thought_panel(page)


def check_reply_streams_with_thought_panel(page):
    backend = page.input_value("#backend")
    label = {"webgpu": "GPU (WebGPU)", "wasm": "CPU (wasm)"}[backend]
    page.click("#open-settings")
    page.fill("input[name=temperature]", "0")
    page.fill("input[name=seed]", "123")
    page.click("#settings button[type=submit]")

    ask(page, "What is 2+2?")
    reply = last_reply(page)
    # While thinking: the panel is open and live, and no answer is shown yet.
    page.wait_for_selector(".message.assistant .thought[open] .thought-text:not(:empty)")
    assert "Thinking" in reply.locator(".thought-label").inner_text()
    assert reply.locator(".answer").inner_text() == ""
    assert page.is_visible("#stop") and not page.is_visible("#send")
    save_screenshot(page, "reply-thinking-desktop.png")

    # At the answer the panel folds away and says how long the model thought.
    page.wait_for_selector(".message.assistant .thought:not([open])")
    wait_done(page)
    assert reply.locator(".thought-label").inner_text().startswith("Thought for ")
    assert reply.locator(".thought-text").text_content() == (
        "The user asked: What is 2+2?. Two plus two is four, so I will say so."
    )
    # Model output is text: the markup in it is shown, never run or rendered.
    assert reply.locator(".answer").inner_text() == ANSWER + "[turns=1 thoughts=0 temperature=0 topK=50 topP=0.95 seed=123]"
    assert page.locator(".messages img, .messages b").count() == 0
    assert page.text_content("#announce") == reply.locator(".answer").inner_text()  # read out once, when done
    assert page.title() == "Monologue"
    assert "tokens · " in reply.locator(".reply-meta").inner_text()
    assert f"tokens/s on {label}" in page.inner_text("#speed")
    assert page.evaluate("() => document.activeElement.id") == "prompt"
    save_screenshot(page, "reply-collapsed-desktop.png")

    # The visitor can reopen the thought.
    reply.locator(".thought summary").click()
    assert reply.locator(".thought").get_attribute("open") is not None

    page.set_viewport_size({"width": 375, "height": 740})
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    save_screenshot(page, "reply-375px.png")


def test_keyboard_stop_limit_and_new_chat(chat):
    page = chat
    page.fill("#prompt", "first line")
    page.press("#prompt", "Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#prompt") == "first line\nsecond line"

    page.click("#open-settings")
    save_screenshot(page, "settings-dialog-desktop.png")
    page.fill("input[name=maxNewTokens]", "12")
    page.press("input[name=maxNewTokens]", "Enter")  # submits the dialog form
    page.press("#prompt", "Enter")
    wait_done(page)
    assert page.locator(".message.user").last.inner_text() == "first line\nsecond line"
    assert last_reply(page).locator(".reply-meta").inner_text().startswith("Reached the token limit · 12 tokens")

    page.click("#open-settings")
    page.fill("input[name=maxNewTokens]", "4000")
    page.click("#settings button[type=submit]")
    ask(page, "a long one")
    last_reply(page).locator(".thought[open] .thought-text:not(:empty)").wait_for()
    page.click("#stop")
    wait_done(page)
    meta = last_reply(page).locator(".reply-meta").inner_text()
    assert meta.startswith("Stopped · "), meta
    assert last_reply(page).locator(".thought-label").inner_text().startswith("Thought for ")

    # The conversation so far goes with each question, the model's earlier thoughts included.
    ask(page, "and then?")
    wait_done(page)
    assert "[turns=5 thoughts=2 " in last_reply(page).locator(".answer").inner_text()

    ask(page, "a long one")
    last_reply(page).locator(".thought[open] .thought-text:not(:empty)").wait_for()
    assert page.inner_text("#hint") == "Esc to stop"
    page.keyboard.press("Escape")
    wait_done(page)
    assert last_reply(page).locator(".reply-meta").inner_text().startswith("Stopped · ")

    # New chat in the middle of a reply: the reply stops and is not part of the next conversation.
    ask(page, "a long one")
    last_reply(page).locator(".thought[open] .thought-text:not(:empty)").wait_for()
    page.click("#new-chat")
    assert page.locator(".message").count() == 0
    wait_done(page)
    assert page.is_visible("#intro")
    ask(page, "fresh start")
    wait_done(page)
    assert "[turns=1 thoughts=0 " in last_reply(page).locator(".answer").inner_text()


def test_switch_backend_and_device_loss_fallback(chat):
    page = chat
    if page.input_value("#backend") != "webgpu":
        pytest.skip("this Chromium has no WebGPU adapter")
    ask(page, "lose-gpu: what is 2+2?")
    page.wait_for_selector("#status:has-text('The GPU stopped responding; the reply continues on the CPU.')")
    wait_done(page)
    assert page.input_value("#backend") == "wasm"
    # The reply is whole: what the GPU wrote and what the CPU continued make one answer.
    assert last_reply(page).locator(".answer").inner_text().startswith(ANSWER)
    assert "on CPU (wasm)" in last_reply(page).locator(".reply-meta").inner_text()

    # A switch re-reads the files from the Cache API: nothing is downloaded again.
    downloads = []
    page.context.on("request", lambda request: downloads.append(request.url) if request.url.endswith(".bin") else None)
    page.select_option("#backend", "webgpu")
    wait_done(page)
    assert page.input_value("#backend") == "webgpu"
    assert downloads == []
    ask(page, "again")
    wait_done(page)
    assert "on GPU (WebGPU)" in last_reply(page).locator(".reply-meta").inner_text()


def test_replies_fit_the_models_context(browser, tmp_path):
    with open_chat(browser, tmp_path / "dist", model={"config": {"sequence_len": 150}}) as page:
        ask(page, "a long one")
        wait_done(page)
        # The stub's prompt is the conversation's JSON bytes plus one token.
        prompt_tokens = len('[{"role":"user","content":"a long one"}]') + 1
        meta = last_reply(page).locator(".reply-meta").inner_text()
        assert meta.startswith(f"Reached the token limit · {150 - prompt_tokens} tokens"), meta

        page.click("#new-chat")
        ask(page, "x" * 400)
        wait_done(page)
        meta = last_reply(page).locator(".reply-meta").inner_text()
        assert meta == "The reply failed: the conversation is longer than the model can read (150 tokens); start a new chat"
        ask(page, "short again")
        wait_done(page)
        assert "The user asked: short again." in last_reply(page).locator(".thought-text").text_content()


def test_a_backend_that_fails_to_start_hands_over(browser, tmp_path):
    with open_chat(browser, tmp_path / "dist", test_refuse=["webgpu"]) as page:
        assert page.input_value("#backend") == "wasm"
        webgpu = page.locator("#backend option[value=webgpu]")
        assert webgpu.is_disabled()
        title = webgpu.get_attribute("title")
        if "no WebGPU" in title:
            pytest.skip("this Chromium has no WebGPU adapter")
        assert title == "failed to start: the device refused the plan's limits"
