"""The chat UI end to end, on a scripted backend injected by this test only.

engine.js is served with its backend table pointing at tests/test_web_chat_backend.js (a test
double implementing the Engine interface), so the UI can be driven without a model. Everything
else is the real page and worker: streaming, the thought panel, text-only rendering, settings,
stop, new chat, the backend switch and the device-loss fallback.
"""

import contextlib
import json
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
        # Ready on the CPU first, then on the GPU once its shaders are compiled.
        page.wait_for_selector("body[data-state='ready']:not([data-upgrading])", timeout=30_000)
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


def test_the_intro_says_what_the_model_was_trained_to_do_and_its_examples_ask_themselves(browser, tmp_path):
    about = {"summary": "Trained to add <b>numbers</b>.", "examples": ["What is 2+2?", "How many r's in strawberry?"]}
    with open_chat(browser, tmp_path / "about", model={"source": {"about": about}}) as page:
        assert page.is_visible("#intro")
        assert page.inner_text("#about") == about["summary"]  # the manifest's words are text, not markup
        assert page.locator("#about b").count() == 0
        examples = page.locator("#examples button.example")
        assert examples.all_inner_texts() == about["examples"]
        examples.nth(1).click()
        wait_done(page)
        assert page.locator(".message.user").inner_text() == about["examples"][1]
        assert last_reply(page).locator(".thought-text").text_content().startswith("The user asked: How many r's")
        assert page.is_hidden("#intro")
    with open_chat(browser, tmp_path / "plain") as page:  # a model that says nothing about itself
        assert page.is_visible("#intro") and page.is_hidden("#about") and page.is_hidden("#examples")


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
    assert last_reply(page).locator(".reply-meta").inner_text().startswith("Reached the max new tokens setting (12) · 12 tokens")

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


def test_thinking_setting_only_where_the_template_can_switch_it_off(browser, tmp_path):
    with open_chat(browser, tmp_path / "plain") as page:
        page.click("#open-settings")
        assert page.is_hidden("#thinking-setting")
    chat = {"template": {"generation": "<|im_start|>assistant\n",
                         "generation_no_thinking": "<|im_start|>assistant\n<think>\n\n</think>\n\n"}, "stop": []}
    with open_chat(browser, tmp_path / "switch", chat=chat) as page:
        page.click("#open-settings")
        assert page.is_visible("#thinking-setting")
        page.uncheck("input[name=thinking]")
        page.click("#settings button[type=submit]")
        ask(page, "What is 2+2?")
        wait_done(page)
        assert last_reply(page).locator(".answer").inner_text().startswith(ANSWER)
        assert last_reply(page).locator(".thought-text").count() == 0 or \
            last_reply(page).locator(".thought-text").text_content() == ""
        page.click("#open-settings")
        page.check("input[name=thinking]")
        page.click("#settings button[type=submit]")
        ask(page, "and now?")
        page.wait_for_selector(".message.assistant >> nth=1 >> .thought .thought-text:not(:empty)")
        wait_done(page)


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


def stub_prompt_tokens(messages):
    """The test backend's prompt length: the conversation's JSON bytes plus one token."""
    return len(json.dumps(messages, separators=(",", ":"), ensure_ascii=False).encode()) + 1


def test_a_reply_cut_by_the_context_is_told_apart_from_max_new_tokens(browser, tmp_path):
    with open_chat(browser, tmp_path / "dist", model={"config": {"sequence_len": 150}}) as page:
        ask(page, "a long one")
        wait_done(page)
        prompt_tokens = stub_prompt_tokens([{"role": "user", "content": "a long one"}])
        meta = last_reply(page).locator(".reply-meta").inner_text()
        assert meta.startswith(f"Cut short: the model's context (150 tokens) is full · {150 - prompt_tokens} tokens"), meta
        assert page.inner_text("#context-use") == "Context 150 of 150 tokens"

        # The next question does not fit beside the cut reply: that turn goes, and the page says so.
        ask(page, "hi")
        wait_done(page)
        notes = page.locator(".message.note")
        assert notes.count() == 1
        assert notes.first.inner_text() == (
            "The conversation outgrew what the model reads at a time (150 tokens): from here on it no longer sees the oldest turn."
        )
        # The note stands just before the question that needed the room.
        assert page.locator(".message.note + .message.user").inner_text() == "hi"
        assert "The user asked: hi." in last_reply(page).locator(".thought-text").text_content()


def test_a_message_too_long_for_the_model_is_refused_and_kept_for_editing(browser, tmp_path):
    with open_chat(browser, tmp_path / "dist", model={"config": {"sequence_len": 600}}) as page:
        ask(page, "short")
        wait_done(page)
        long_text = "x" * 700
        ask(page, long_text)
        wait_done(page)
        tokens = stub_prompt_tokens([{"role": "user", "content": long_text}])
        assert page.inner_text("#composer-note") == (
            f"This message is {tokens} tokens long, but the model reads at most 600 tokens at a time, its reply "
            "included. Shorten it and send it again."
        )
        # Not sent: gone from the conversation, back in the composer.
        assert page.locator(".message.user").all_inner_texts() == ["short"]
        assert page.locator(".message.assistant").count() == 1
        assert page.input_value("#prompt") == long_text
        page.fill("#prompt", "short again")
        page.press("#prompt", "Enter")
        wait_done(page)
        assert page.inner_text("#composer-note") == ""
        assert "[turns=3 " in last_reply(page).locator(".answer").inner_text()


def test_fifty_turns_drop_thoughts_then_turns(browser, tmp_path):
    # The real backends run 50 turns in test_web_webgpu.py; this checks what the page says meanwhile.
    with open_chat(browser, tmp_path / "dist", model={"config": {"sequence_len": 900}}, test_think_ms=0, test_answer_ms=0) as page:
        for turn in range(50):
            ask(page, f"q{turn}")
            wait_done(page)
            answer = last_reply(page).locator(".answer").inner_text()
            assert answer.startswith("The answer is"), (turn, answer)
            used, limit = re.fullmatch(r"Context (\d+) of (\d+) tokens", page.inner_text("#context-use")).groups()
            assert int(used) <= int(limit) == 900
        assert page.locator(".message.assistant").count() == 50
        notes = page.locator(".message.note").all_inner_texts()
        assert all(note.startswith("The conversation outgrew what the model reads at a time (900 tokens)") for note in notes)
        # Thoughts go first, then whole turns, oldest first.
        assert "its thought in an earlier reply" in notes[0] and "oldest turn" in notes[0], notes


def test_the_backend_menu_switches_on_enter_not_at_each_arrow(chat):
    page = chat
    if page.locator("#backend option[value=webgpu]").is_disabled():
        pytest.skip("this Chromium has no WebGPU adapter: one backend, nothing to switch")
    assert page.input_value("#backend") == "webgpu"
    page.focus("#backend")
    page.keyboard.press("ArrowDown")
    assert page.input_value("#backend") == "wasm"
    assert page.inner_text("#hint") == "Enter to switch backend"
    assert page.get_attribute("body", "data-state") == "ready"  # nothing started
    # Moving on without Enter leaves the running backend as it was.
    page.keyboard.press("Tab")
    assert page.input_value("#backend") == "webgpu"
    ask(page, "which one?")
    wait_done(page)
    assert "on GPU (WebGPU)" in last_reply(page).locator(".reply-meta").inner_text()

    page.focus("#backend")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    wait_done(page)
    assert page.input_value("#backend") == "wasm"
    ask(page, "and now?")
    wait_done(page)
    assert "on CPU (wasm)" in last_reply(page).locator(".reply-meta").inner_text()


def test_a_backend_that_fails_to_start_hands_over(browser, tmp_path):
    with open_chat(browser, tmp_path / "dist", test_refuse=["webgpu"]) as page:
        assert page.input_value("#backend") == "wasm"
        webgpu = page.locator("#backend option[value=webgpu]")
        assert webgpu.is_disabled()
        title = webgpu.get_attribute("title")
        if "no WebGPU" in title:
            pytest.skip("this Chromium has no WebGPU adapter")
        assert title == "failed to start: the device refused the plan's limits"
        assert page.inner_text("#status-notes") == (
            "Running on the CPU: GPU (WebGPU) is unavailable (failed to start: the device refused the plan's limits).")
