"""When the browser's storage is full, the page says so plainly and still runs from memory."""

from urllib.parse import urlsplit

from web_helpers import browser, make_site, pseudo_random_bytes, save_screenshot, serving  # noqa: F401


def test_storage_full_is_explained(browser, tmp_path):
    site = make_site(tmp_path / "dist", {"model/weights-00.bin": pseudo_random_bytes(2_000_000, 1)})
    with serving(site) as url:
        context = browser.new_context()
        page = context.new_page()
        # Chromium's own knob for a small disk: this origin may store 100 kB.
        cdp = context.new_cdp_session(page)
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        cdp.send("Storage.overrideQuotaForOrigin", {"origin": origin, "quotaSize": 100_000})
        page.goto(url)
        page.wait_for_selector("body[data-state='no-backend']", timeout=30_000)
        status = page.inner_text("#status")
        assert "downloaded and verified (1 file, 1.9 MB" in status
        assert "Storage is full: the model (1.9 MB) does not fit" in status
        assert "downloaded again on the next visit" in status
        save_screenshot(page, "storage-full-desktop.png")
        context.close()
