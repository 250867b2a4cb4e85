"""Bad model files (corrupt, truncated, missing) and unreadable manifests are named in the page; nothing runs."""

import pytest

from web_helpers import browser, make_site, pseudo_random_bytes, save_screenshot, serving  # noqa: F401

CACHED_URLS = "async () => (await (await caches.open('monologue-model')).keys()).map((r) => r.url)"


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda data: data[:1000] + bytes([data[1000] ^ 1]) + data[1001:], "its sha256 does not match the manifest"),
        (lambda data: data[:-10], "it has 99990 bytes, the manifest says 100000"),
    ],
    ids=["flipped-bit", "truncated"],
)
def test_corrupt_file_is_named_and_not_used(browser, tmp_path, damage, reason):
    good = pseudo_random_bytes(100_000, 2)
    site = make_site(tmp_path / "dist", {"model/weights-00.bin": pseudo_random_bytes(50_000, 1), "model/weights-01.bin": good})
    (site / "model" / "weights-01.bin").write_bytes(damage(good))
    with serving(site) as url:
        context, page, status = open_until_error(browser, url)
        assert "A model file is corrupt" in status
        assert f"model/weights-01.bin is corrupt: {reason}. Nothing was run." in status
        assert "Reload the page to download it again" in status
        assert page.inner_text("#backend") == "not started"
        assert page.is_disabled("#prompt") and page.is_disabled("#send")
        assert not any("weights-01.bin" in key for key in page.evaluate(CACHED_URLS))
        if reason.startswith("its sha256"):
            save_screenshot(page, "corrupt-file-desktop.png")
        context.close()


def open_until_error(browser, url):
    """Load the page in a fresh context and wait for it to give up; (context, page, status text)."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("body[data-state='error']", timeout=30_000)
    return context, page, page.inner_text("#status")


def test_missing_file_is_named(browser, tmp_path):
    site = make_site(tmp_path / "dist", {"model/weights-00.bin": pseudo_random_bytes(1000, 1)})
    (site / "model" / "weights-00.bin").unlink()
    with serving(site) as url:
        context, page, status = open_until_error(browser, url)
        # A 404 is not the visitor's connection: the site is incomplete, and the file is named.
        assert "This site is incomplete" in status
        assert "model/weights-00.bin is missing from this site (HTTP 404), although its manifest lists it." in status
        assert "upload all of the compiled site" in status and "connection" not in status
        context.close()


def test_manifest_of_another_version_is_refused(browser, tmp_path):
    site = make_site(tmp_path / "dist", {"model/weights-00.bin": b"1234"}, version=2)
    with serving(site) as url:
        context, page, status = open_until_error(browser, url)
        assert "This site's model manifest is unusable" in status
        assert "model/manifest.json is not a version-1 monologue-model manifest" in status
        context.close()
