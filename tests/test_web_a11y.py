"""Accessibility: axe-core (from npm, tests/package.json) finds nothing to report on the chat page,
loaded, with a reply and its thought, and with the settings dialog open.

The page runs on test_web_chat's scripted backend. axe is added as a script, so this test's browser
context bypasses the page's CSP; what is checked (the DOM and its styles) is the same.
"""

from pathlib import Path

import pytest

from test_web_chat import ask, inject_backend, wait_done
from web_helpers import browser, make_site, pseudo_random_bytes, serving  # noqa: F401

AXE = Path(__file__).with_name("node_modules") / "axe-core" / "axe.min.js"

pytestmark = pytest.mark.skipif(not AXE.exists(), reason="axe-core is not installed (npm ci --prefix tests)")


def violations(page):
    return page.evaluate("async () => (await axe.run(document)).violations.map((v) => ({id: v.id, nodes: v.nodes.map((n) => n.target.join(' '))}))")


def test_the_chat_page_has_no_axe_violations(browser, tmp_path):
    site = make_site(tmp_path / "dist", {"model/weights-00.bin": pseudo_random_bytes(1000, 1)})
    with serving(site) as url:
        context = browser.new_context(bypass_csp=True, viewport={"width": 1024, "height": 800})
        inject_backend(context)
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-state='ready']", timeout=30_000)
        page.add_script_tag(path=str(AXE))
        assert violations(page) == []

        ask(page, "What is 2+2?")
        wait_done(page)
        page.locator(".message.assistant .thought summary").click()
        assert violations(page) == []

        page.click("#open-settings")
        assert violations(page) == []
        context.close()
