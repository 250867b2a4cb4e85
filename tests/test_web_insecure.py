"""Opened over plain http from another machine (not localhost), the browser withholds crypto.subtle
and the Cache API; the page says plainly why it cannot start instead of running unverified files."""

import socket

import pytest

from web_helpers import browser, make_site, pseudo_random_bytes, serving  # noqa: F401


def lan_address():
    """This machine's address on its network, or None (then there is nothing to test here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))  # no packet is sent: this only picks a route
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_insecure_origin_is_explained(browser, tmp_path):
    address = lan_address()
    if address is None:
        pytest.skip("no non-loopback address to serve on")
    site = make_site(tmp_path / "dist", {"model/weights-00.bin": pseudo_random_bytes(1000, 1)})
    with serving(site, address) as url:
        context = browser.new_context()
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-state='error']", timeout=30_000)
        status = page.inner_text("#status")
        assert "This page cannot verify the model here" in status
        assert "must be opened over https:// or from localhost" in status
        context.close()
