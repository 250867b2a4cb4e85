"""The WebGPU backend in the page (web_shell/webgpu_executor.js running plan.json on Chromium's
SwiftShader adapter): a tiny model compiled for real and served; a greedy reply equals R_q's greedy
reply from PyTorch, token for token, on WebGPU and then on the wasm fallback; a seeded sampled reply is
the same on both; the session never leaves the page's origin.

The site is test_web_wasm's (a fast runtime.wasm build, listed in the manifest): the WebGPU backend
needs runtime.wasm too, for the tokenizer.
"""

import json
from urllib.parse import urlsplit

import pytest

from test_web_wasm import MAX_NEW_TOKENS, QUESTION, greedy_reference, have_wasm_toolchain, site  # noqa: F401
import web_helpers
from web_helpers import browser, outside, save_screenshot, serving, settings  # noqa: F401

# Longer than the plan's 64-token prefill chunk once in the chat template (1 token per byte here).
LONG_QUESTION = "Please tell me, in as few words as you can manage, what two plus two makes?"

pytestmark = pytest.mark.skipif(not have_wasm_toolchain(), reason="no Rust toolchain for wasm32")

# Every loading stage the status card shows, with its detail ("3 of 24"), as the page goes, and the
# note beside the composer while the GPU is prepared in the background.
RECORD_STAGES = """document.addEventListener("DOMContentLoaded", () => {
  window.stages = [];
  const record = (stage) => { if (stage && stage !== window.stages.at(-1)) window.stages.push(stage); };
  const observe = (node, stage) => new MutationObserver(() => record(stage())).observe(node, { subtree: true, childList: true, characterData: true });
  observe(document.getElementById("status"), () => `${document.getElementById("status-title").textContent} | ${document.getElementById("status-detail").textContent}`);
  observe(document.getElementById("backend-note"), () => document.getElementById("backend-note").textContent);
});"""


def open_page(browser, url, requests, worker_prefix=""):
    context = browser.new_context(viewport={"width": 1024, "height": 800})
    context.add_init_script(RECORD_STAGES)
    context.on("request", lambda request: requests.append(request.url))
    if worker_prefix:
        context.route("**/worker.js", lambda route: route.fulfill(
            body=worker_prefix + route.fetch().text(), content_type="text/javascript"))
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(url)
    # Ready on the CPU first, then on the GPU once its shaders are compiled.
    page.wait_for_selector("body:not([data-state='loading']):not([data-upgrading])", timeout=120_000)
    if page.input_value("#backend") != "webgpu":
        title = page.locator("#backend option[value=webgpu]").get_attribute("title")
        if "no WebGPU" in title:
            pytest.skip(f"this Chromium has no WebGPU adapter: {title}")
        raise AssertionError(f"WebGPU was not chosen: {title}; status: {page.inner_text('#status')}")
    assert page.get_attribute("body", "data-state") == "ready", page.inner_text("#status")
    settings(page, temperature=0, maxNewTokens=MAX_NEW_TOKENS)
    return context, page, errors


def switch(page, backend):
    page.select_option("#backend", backend)
    page.wait_for_selector("body[data-state='ready']", timeout=60_000)
    assert page.input_value("#backend") == backend
    page.click("#new-chat")


def ask_and_wait(page, question=QUESTION):
    return web_helpers.ask_and_wait(page, question)


def reply_of(reply):
    """What a visitor sees of a reply: thought, answer, and its token count."""
    meta = reply.locator(".reply-meta").inner_text()
    return reply.locator(".thought-text").text_content(), reply.locator(".answer").text_content(), meta.split(" tokens")[0]


def check_reply(reply, reference, backend_label):
    tokens, thought, answer = reference
    assert reply.locator(".answer").text_content() == answer
    assert reply.locator(".thought-text").text_content() == thought
    meta = reply.locator(".reply-meta").inner_text()
    assert f"{len(tokens)} tokens" in meta and f"tokens/s on {backend_label}" in meta, meta


def test_greedy_reply_on_webgpu_then_wasm_is_r_q(browser, site):  # noqa: F811
    reference = greedy_reference(site)
    requests = []
    with serving(site) as url:
        context, page, errors = open_page(browser, url, requests)
        save_screenshot(page, "webgpu-loaded.png")
        # The shaders compile after the download, and the page counts the pipelines as they do: those
        # of the plan's `cpu` profile on SwiftShader (its lists in place of the default ones).
        stages = page.evaluate("window.stages")
        plan = json.loads((site / "model" / "plan.json").read_text())
        lists = plan["dispatch"] | plan["profiles"]["cpu"]["dispatch"]
        n = len({d["pipeline"] for lst in lists.values() for d in lst})
        assert n < len(plan["pipelines"])
        preparing = "Preparing the GPU (WebGPU): shaders {} of %d compiled; the CPU answers meanwhile" % n
        assert preparing.format(n) in stages, stages
        assert stages.index(preparing.format(0)) > max(
            i for i, s in enumerate(stages) if s.startswith(("Downloading", "Verifying"))), stages
        check_reply(ask_and_wait(page), reference, "GPU (WebGPU)")
        save_screenshot(page, "webgpu-reply.png")
        # A prompt longer than a chunk: prefill in two steps.
        page.click("#new-chat")
        check_reply(ask_and_wait(page, LONG_QUESTION), greedy_reference(site, LONG_QUESTION), "GPU (WebGPU)")

        # The visitor switches to the CPU; the same question gives the same tokens there.
        switch(page, "wasm")
        check_reply(ask_and_wait(page), reference, "CPU (wasm)")

        # Sampling with a seed picks the same tokens on both: the GPU's top-k readback (top-k within
        # the plan's k) or its logits row (top-k off) go through a port of the wasm runtime's sampler.
        sampled = {}
        for backend in ("wasm", "webgpu"):
            if backend == "webgpu":
                switch(page, "webgpu")
            for top_k in (20, 0):
                page.click("#new-chat")
                settings(page, temperature=1.5, topK=top_k, topP=0.95 if top_k else 0.9, seed=7 + top_k)
                sampled[backend, top_k] = reply_of(ask_and_wait(page))
        for top_k in (20, 0):
            assert sampled["webgpu", top_k] == sampled["wasm", top_k]
        assert sampled["wasm", 0] != sampled["wasm", 20] and sampled["wasm", 0][1] != reference[2]
        assert not errors, errors
        context.close()

        # The whole session (page, worker, model files, both backends) stayed on the page's origin.
        origin = "{0.scheme}://{0.netloc}/".format(urlsplit(url))
        assert url + "model/plan.json" in requests and url + "runtime.wasm" in requests
        assert outside(requests, origin) == []


# The engine directly, in the page: a reply that stops leaves its next decode step in flight (step()
# submits it before returning); the next reply must wait for it, since its prefill reads back into
# the same buffer (top-k off: the logits row).
BACK_TO_BACK = """async () => {
  const { loadModel } = await import("./loader.js");
  const { createEngine } = await import("./engine.js");
  const engine = await createEngine("webgpu", await loadModel(new URL("./", location.href).href, () => {}), () => {});
  const replies = [];
  for (let round = 0; round < 2; round++) {
    engine.reset({ temperature: 1, topK: 0, topP: 1, seed: 3 });
    await engine.prefill([1, 2, 3, 4, 5]);
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push((await engine.step()).id);
    replies.push(ids);
  }
  engine.dispose();
  return replies;
}"""


def test_a_reply_can_start_while_the_last_decode_is_in_flight(browser, site):  # noqa: F811
    with serving(site) as url:
        context, page, errors = open_page(browser, url, [])
        first, second = page.evaluate(BACK_TO_BACK)
        assert first == second and len(first) == 5
        assert not errors, errors
        context.close()


def test_fifty_turns_on_webgpu_then_wasm_stay_within_the_context(browser, site):  # noqa: F811
    # The tiny model reads 96 tokens, about 90 bytes of conversation: from the third turn on, every
    # question makes the page leave older turns out, and the chat goes on.
    limit = json.loads((site / "model" / "manifest.json").read_text())["model"]["config"]["sequence_len"]
    with serving(site) as url:
        context, page, errors = open_page(browser, url, [])
        settings(page, maxNewTokens=8)
        replies = {}
        for backend in ("webgpu", "wasm"):
            if backend == "wasm":
                switch(page, "wasm")
            else:
                page.click("#new-chat")
            replies[backend] = []
            for turn in range(50):
                reply = ask_and_wait(page, f"Question {turn}?")
                meta = reply.locator(".reply-meta").inner_text()
                assert not meta.startswith("The reply failed"), (backend, turn, meta)
                used, shown_limit = page.inner_text("#context-use").removeprefix("Context ").split(" of ")
                assert int(used) <= limit and shown_limit == f"{limit} tokens", (backend, turn)
                replies[backend].append(reply_of(reply))
            assert page.locator(".message.assistant").count() == 50
            assert page.locator(".message.note").count() >= 40
        # The same greedy conversation, fitted the same way, on both backends.
        assert replies["webgpu"] == replies["wasm"]
        assert not errors, errors
        context.close()


# Prepended to worker.js: the GPU's pipelines wait until the test lets them compile.
HOLD_SHADERS = """
let __releaseShaders;
const __shadersReleased = new Promise((resolve) => (__releaseShaders = resolve));
self.releaseShaders = () => __releaseShaders();
const __createPipeline = GPUDevice.prototype.createComputePipelineAsync;
GPUDevice.prototype.createComputePipelineAsync = async function (...args) {
  await __shadersReleased;
  return __createPipeline.apply(this, args);
};
"""


def test_the_chat_starts_on_the_cpu_while_the_gpu_compiles_then_moves(browser, site):  # noqa: F811
    reference = greedy_reference(site)
    with serving(site) as url:
        context = browser.new_context()
        context.route("**/worker.js", lambda route: route.fulfill(
            body=HOLD_SHADERS + route.fetch().text(), content_type="text/javascript"))
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(error))
        with page.expect_worker() as worker_info:
            page.goto(url)
        page.wait_for_selector("body[data-state='ready']", timeout=120_000)
        if page.get_attribute("body", "data-upgrading") is None:
            title = page.locator("#backend option[value=webgpu]").get_attribute("title")
            pytest.skip(f"this Chromium has no WebGPU adapter: {title}")
        # The CPU answers while no shader has compiled yet; the menu waits.
        assert page.input_value("#backend") == "wasm" and page.is_disabled("#backend")
        assert page.inner_text("#backend-note").startswith("Preparing the GPU (WebGPU): shaders 0 of ")
        settings(page, temperature=0, maxNewTokens=MAX_NEW_TOKENS)
        check_reply(ask_and_wait(page), reference, "CPU (wasm)")
        assert page.get_attribute("body", "data-upgrading") == "webgpu"

        # Shaders done: the chat moves to the GPU between replies, and the same question gets the
        # same greedy tokens there.
        worker_info.value.evaluate("self.releaseShaders()")
        page.wait_for_selector("body:not([data-upgrading])", timeout=120_000)
        assert page.input_value("#backend") == "webgpu" and not page.is_disabled("#backend")
        assert page.inner_text("#backend-note") == ""
        page.click("#new-chat")
        check_reply(ask_and_wait(page), reference, "GPU (WebGPU)")
        assert not errors, errors
        context.close()
