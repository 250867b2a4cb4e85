"""The site works from a sub-path of its host (all its URLs are relative), with no special headers."""

from web_helpers import browser, make_site, outside, pseudo_random_bytes, serving  # noqa: F401


def test_site_under_a_sub_path(browser, tmp_path):
    make_site(tmp_path / "www" / "demos" / "monologue", {"model/weights-00.bin": pseudo_random_bytes(50_000, 1)})
    (tmp_path / "www" / "model").mkdir()  # a decoy where an absolute URL would look
    with serving(tmp_path / "www") as root_url:
        url = root_url + "demos/monologue/"
        context = browser.new_context()
        requests = []
        context.on("request", lambda request: requests.append(request.url))
        page = context.new_page()
        response = page.goto(url)
        assert "cross-origin" not in " ".join(response.headers).lower()  # no COOP/COEP needed
        page.wait_for_selector("body[data-state='no-backend']", timeout=30_000)
        assert "1 file, 49 KB, checked against their sha256" in page.inner_text("#status")
        assert url + "model/weights-00.bin" in requests and url + "worker.js" in requests
        assert outside(requests, url) == []
        assert page.evaluate("() => self.crossOriginIsolated") is False
        context.close()
