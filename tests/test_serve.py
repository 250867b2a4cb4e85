"""`monologue serve DIR`: MIME types, nothing outside DIR, no listings, one-line errors."""

import http.client
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from monologue_compile.cli import main
from web_helpers import make_site, serving

CLI = [sys.executable, "-c", "from monologue_compile.cli import main; main()", "serve"]


@pytest.fixture
def site(tmp_path):
    return make_site(
        tmp_path / "dist",
        {
            "runtime.wasm": b"\0asm\1\0\0\0",
            "model/weights-00.bin": b"\1\2\3\4",
            "model/plan.json": b"{}",
            "model/kernels/matvec.wgsl": b"// kernel",
        },
    )


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers, response.read()


def status_of(url):
    try:
        return get(url)[0]
    except urllib.error.HTTPError as e:
        return e.code


def test_mime_types(site):
    expected = {
        "": "text/html; charset=utf-8",
        "index.html": "text/html; charset=utf-8",
        "app.js": "text/javascript; charset=utf-8",
        "worker.js": "text/javascript; charset=utf-8",
        "style.css": "text/css; charset=utf-8",
        "runtime.wasm": "application/wasm",
        "model/manifest.json": "application/json",
        "model/plan.json": "application/json",
        "model/weights-00.bin": "application/octet-stream",
        "model/kernels/matvec.wgsl": "text/plain; charset=utf-8",
    }
    with serving(site) as url:
        for path, mime in expected.items():
            status, headers, body = get(url + path)
            assert status == 200, path
            assert headers["Content-Type"] == mime, path
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Cache-Control"] == "no-cache"
        assert get(url + "runtime.wasm")[2] == b"\0asm\1\0\0\0"


def test_page_csp_is_also_sent_as_a_header(site):
    """The worker takes its policy from headers only, so the server repeats the page's meta policy."""
    with serving(site) as url:
        csp = get(url + "worker.js")[1]["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    assert csp in (site / "index.html").read_text()


def test_no_listing_and_nothing_outside_dir(site, tmp_path):
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", site / "model" / "link.txt")
    with serving(site) as url:
        assert status_of(url + "model/") == 404
        assert status_of(url + "model/link.txt") == 404
        assert status_of(url + "no-such-file.js") == 404
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        for raw in ("/../secret.txt", "/model/../../secret.txt", "/%2e%2e/secret.txt"):
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("GET", raw)
            response = conn.getresponse()
            assert response.status == 404 and b"outside" not in response.read(), raw
            conn.close()


def run_cli(*args):
    return CliRunner().invoke(main, ["serve", *args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_dir_is_one_line_exit_2(tmp_path):
    assert_one_line_error(run_cli(str(tmp_path / "missing")), "no such directory")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "index.html").write_text("<!doctype html>")
    assert_one_line_error(run_cli(str(tmp_path / "half")), "not a compiled Monologue site", "model/manifest.json")
    assert_one_line_error(run_cli(str(tmp_path)), "not a compiled Monologue site", "index.html")


def test_port_in_use_is_one_line_exit_2(site):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_error(run_cli(str(site), "--port", str(port)), f"port {port}", "in use", "--port")


def test_serve_prints_url_and_serves(site):
    proc = subprocess.Popen([*CLI, str(site), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"Serving {site} at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        status, _, body = get(url)
        assert status == 200 and b"Monologue" in body
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_nul_in_path_is_a_clean_400_and_the_server_lives_on(site):
    with serving(site) as url:
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/model/%00plan.json")
        assert conn.getresponse().status == 400
        conn.close()
        assert status_of(url + "model/plan.json") == 200


def test_fifo_in_the_site_is_not_waited_on(site):
    os.mkfifo(site / "model" / "pipe.json")
    with serving(site) as url:
        assert status_of(url + "model/pipe.json") == 404


def test_half_sent_request_is_dropped_after_the_timeout(site, monkeypatch):
    from monologue_compile.serve import SiteHandler

    monkeypatch.setattr(SiteHandler, "timeout", 1)
    with serving(site) as url:
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\n")  # never finished
            assert s.recv(1024) == b""  # the server closed it (recv would time out at 10 s otherwise)
