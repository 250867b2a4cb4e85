"""A GPU program the browser refuses (here: a kernel that does not compile) is not run: the page
names the kernel, marks WebGPU as failed to start, says so, and chats on the CPU instead."""

import hashlib
import json
import shutil

import pytest

from test_web_wasm import have_wasm_toolchain, site  # noqa: F401
from web_helpers import browser, serving  # noqa: F401

pytestmark = pytest.mark.skipif(not have_wasm_toolchain(), reason="no Rust toolchain for wasm32")


def test_a_kernel_that_does_not_compile_hands_over_to_wasm(browser, site, tmp_path):  # noqa: F811
    dist = shutil.copytree(site, tmp_path / "dist")
    manifest = json.loads((dist / "model" / "manifest.json").read_text())
    plan = json.loads((dist / "model" / "plan.json").read_text())
    kernel = plan["pipelines"][-1]["kernel"]
    broken = ((dist / "model" / kernel).read_text() + "\nfn broken() -> f32 { return undefined_name; }\n").encode()
    (dist / "model" / kernel).write_bytes(broken)
    # Listed with its true hash: the file is intact as far as the loader knows; the GPU refuses it.
    entry = next(f for f in manifest["files"] if f["path"] == kernel)
    entry.update(bytes=len(broken), sha256=hashlib.sha256(broken).hexdigest())
    (dist / "model" / "manifest.json").write_text(json.dumps(manifest))

    with serving(dist) as url:
        context = browser.new_context()
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(error))
        page.goto(url)
        page.wait_for_selector("body:not([data-state='loading']):not([data-upgrading])", timeout=120_000)
        title = page.locator("#backend option[value=webgpu]").get_attribute("title")
        if "no WebGPU" in title:
            pytest.skip(f"this Chromium has no WebGPU adapter: {title}")
        assert page.get_attribute("body", "data-state") == "ready", page.inner_text("#status")
        assert page.input_value("#backend") == "wasm"
        assert page.locator("#backend option[value=webgpu]").is_disabled()
        assert title.startswith(f"failed to start: {kernel} did not compile: "), title
        assert "undefined_name" in title, title
        # The fall-back is said on the page, with why, not only in the menu's tooltip.
        assert page.is_visible("#status")
        assert f"Running on the CPU: GPU (WebGPU) is unavailable ({title})." in page.inner_text("#status-notes")
        assert not errors, errors
        context.close()
