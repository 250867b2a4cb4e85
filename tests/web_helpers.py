"""Helpers for browser tests: headless Debian Chromium via playwright, and a served site.

Use the `browser` fixture by importing it into a test module (`from web_helpers import browser`);
tests that use it are skipped, with the reason, where Chromium or playwright is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from monologue_compile.resources import web_shell_dir
from monologue_compile.serve import make_server, server_url
from monologue_compile.site import copy_web_shell

CHROMIUM = "/usr/bin/chromium"
# WebGPU on (SwiftShader here), and nothing that phones home: the network log must only show the page.
CHROMIUM_ARGS = [
    "--enable-unsafe-webgpu",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
]


def launch_chromium(playwright):
    """A headless Chromium from playwright's sync API; skips the test when it cannot run here."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM}")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


def file_entry(path: str, data: bytes) -> dict:
    return {"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def make_site(dist: Path, files: dict[str, bytes], **manifest_fields) -> Path:
    """A compiled-site stand-in: the real web shell plus `files` (paths relative to dist) and a
    model/manifest.json that lists them with their true sizes and hashes, in the compiler's format."""
    copy_web_shell(dist)
    for path, data in files.items():
        (dist / path).parent.mkdir(parents=True, exist_ok=True)
        (dist / path).write_bytes(data)
    # As the compiler writes them (monologue_compile/artifact.py), paths are relative to model/.
    listed = [file_entry(posixpath.relpath(p, "model"), d) for p, d in files.items()]
    manifest = {"format": "monologue-model", "version": 1, "files": listed, **manifest_fields}
    (dist / "model").mkdir(parents=True, exist_ok=True)
    (dist / "model" / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dist


def pseudo_random_bytes(n: int, seed: int) -> bytes:
    out = bytearray()
    block = seed.to_bytes(8, "little")
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def serving(root: Path, host: str = "127.0.0.1"):
    """Serves `root` (with `monologue serve`'s server) on a free port; yields the base URL."""
    return running(make_server(root, host, 0))


@contextlib.contextmanager
def running(server):
    """Runs `server` in a thread until the block ends; yields its base URL."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_url(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def recorded_page(browser, url: str, **context_options):
    """(context, page, requests): a new browser context whose every request URL goes into
    `requests`, its page opened at `url`."""
    context = browser.new_context(**context_options)
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    page = context.new_page()
    page.goto(url)
    return context, page, requests


def settings(page, **values):
    """Sets the page's generation settings (`temperature=0`, `maxNewTokens=8`, ...) through its dialog."""
    page.click("#open-settings")
    for name, value in values.items():
        page.fill(f"input[name={name}]", str(value))
    page.click("#settings button[type=submit]")


def ask_and_wait(page, question: str):
    """Sends `question` as the user would and waits for the reply; returns the reply's element."""
    page.fill("#prompt", question)
    page.press("#prompt", "Enter")
    page.wait_for_selector("body[data-state='ready']", timeout=180_000)
    return page.locator(".message.assistant").last


def outside(requests: list[str], prefix: str) -> list[str]:
    """The request URLs not under `prefix`. The page's worker starts from a blob: URL the page made
    itself (app.js); one of the page's own origin is local, not a request to anywhere."""
    blob = "blob:{0.scheme}://{0.netloc}/".format(urlsplit(prefix))
    return [u for u in requests if not u.startswith((prefix, blob))]


def save_screenshot(page, name: str) -> Path:
    """Saves a full-page screenshot for people to look at: under $MONOLOGUE_ARTIFACTS, else tmp/artifacts/
    at the repository root."""
    out = Path(os.environ.get("MONOLOGUE_ARTIFACTS", Path(__file__).resolve().parent.parent / "tmp" / "artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    page.screenshot(path=str(path), full_page=True)
    return path


def run_node_tests(test_file: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """Runs a `node --test` file that imports ../web_shell/*.js, in a copy beside a package.json
    that marks .js files as ES modules (any Node from 18 on, whatever its module detection)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    (tmp_path / "package.json").write_text('{"type": "module"}\n')
    shutil.copytree(web_shell_dir(), tmp_path / "web_shell")
    (tmp_path / "tests").mkdir()
    shutil.copy(test_file, tmp_path / "tests" / test_file.name)
    return subprocess.run(
        ["node", "--test", "--test-timeout=30000", f"tests/{test_file.name}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
