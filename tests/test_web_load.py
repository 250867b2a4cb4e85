"""The web shell loads a site in headless Chromium: progress, verified files, the missing backend.

The site is the real web shell with a manifest of small random files (no model, no runtime.wasm),
served by `monologue serve`'s server. Nothing can run it, and the page must say so.
"""

import json

import pytest

from web_helpers import browser, make_site, pseudo_random_bytes, recorded_page, save_screenshot, serving  # noqa: F401

FILES = {
    "model/weights-00.bin": pseudo_random_bytes(3_000_000, 1),
    "model/weights-01.bin": pseudo_random_bytes(1_000_000, 2),
    "model/tokenizer.json": b'{"version": 1}',
    "parity.json": b"{}",  # listed as ../parity.json: outside model/, inside the site
}


def test_page_loads_verifies_and_reports_missing_backend(browser, tmp_path):
    site = make_site(tmp_path / "dist", FILES)
    with serving(site) as url:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        # Hold back one shard so the page can be seen mid-download.
        held = []
        context.route("**/weights-00.bin", lambda route: held.append(route))
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(error))
        page.goto(url)

        page.wait_for_selector("#status-title:has-text('Downloading the model')")
        page.wait_for_function("() => document.querySelector('#progress').value > 0")
        detail = page.inner_text("#status-detail")
        assert "of 3.8 MB" in detail, detail
        assert page.get_attribute("body", "data-state") == "loading"
        assert page.is_disabled("#prompt") and page.is_disabled("#send")
        save_screenshot(page, "load-progress-desktop.png")
        held[0].continue_()

        page.wait_for_selector("body[data-state='no-backend']", timeout=30_000)
        status = page.inner_text("#status")
        assert "No inference backend is available in this build" in status
        assert "4 files, 3.8 MB, checked against their sha256" in status
        # Each backend says why it is off, and the chat stays off.
        assert "GPU (WebGPU): the compiler made no GPU program for this model" in status
        assert "CPU (wasm): this site has no runtime.wasm listed in its manifest" in status
        assert page.is_disabled("#prompt") and page.is_disabled("#send")
        assert page.get_attribute("#prompt", "placeholder") == "The chat is off"
        assert page.inner_text("#backend") == "no backend\nGPU (WebGPU): unavailable\nCPU (wasm): unavailable"
        # The privacy promise is stated on the page.
        assert "Nothing you type leaves this page" in page.inner_text("header")
        assert not errors, errors
        save_screenshot(page, "loaded-desktop.png")

        page.set_viewport_size({"width": 375, "height": 740})
        # Nothing may stick out sideways at phone width.
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
        save_screenshot(page, "loaded-375px.png")
        context.close()


def test_webgpu_requirements_from_manifest_are_checked(browser, tmp_path):
    """A plan needing more than the adapter offers is refused by name (here: a 1 TiB buffer)."""
    site = make_site(
        tmp_path / "dist",
        FILES,
        webgpu={"required_limits": {"maxBufferSize": 2**40}, "features": ["no-such-feature"]},
    )
    with serving(site) as url:
        context = browser.new_context()
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("body:not([data-state='loading'])", timeout=30_000)
        status = page.inner_text("#status")
        if "this browser has no WebGPU" in status or "no WebGPU adapter" in status:
            context.close()
            pytest.skip("this Chromium has no WebGPU adapter to check against")
        assert "the WebGPU adapter lacks no-such-feature, maxBufferSize ≥ 1099511627776" in status
        context.close()


def test_tool_only_files_are_verified_by_the_tools_not_fetched_by_the_page(browser, tmp_path):
    site = make_site(tmp_path / "dist", {**FILES, "model/ir.json": b"{}"})
    manifest = json.loads((site / "model" / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "ir.json":
            entry["page"] = False  # as the compiler lists it (artifact.py)
    (site / "model" / "manifest.json").write_text(json.dumps(manifest))
    with serving(site) as url:
        context, page, requests = recorded_page(browser, url)
        page.wait_for_selector("body[data-state='no-backend']", timeout=30_000)
        assert "4 files, 3.8 MB, checked against their sha256" in page.inner_text("#status")
        assert url + "model/weights-00.bin" in requests and url + "model/ir.json" not in requests
        context.close()
