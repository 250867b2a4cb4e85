"""`monologue serve DIR`: serve a compiled site (a `dist/`) to the browser on this machine.

Any static host can serve `dist/`; this one exists so that trying a build needs nothing else, and so
that it gets the details right that the page depends on: `application/wasm` (streaming wasm
compilation refuses anything else), JavaScript modules as `text/javascript`, no directory listings,
nothing outside DIR, and `Cache-Control: no-cache` so a recompiled site is never served stale.
It binds to 127.0.0.1 by default: localhost is a secure context, which the page needs for
crypto.subtle (hash checks) and the Cache API.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import socket
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click

from .errors import MonologueError

MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".bin": "application/octet-stream",
    ".wgsl": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

_CSP_META = re.compile(
    r"""<meta\s+http-equiv=["']?Content-Security-Policy["']?\s+content=(?:"([^"]*)"|'([^']*)')""",
    re.I,
)


def check_site(root: Path) -> None:
    """Raise a one-line MonologueError unless `root` looks like a compiled site."""
    if not root.is_dir():
        raise MonologueError(f"{root}: no such directory (give the dist/ folder the compiler wrote)")
    for needed in ("index.html", "model/manifest.json"):
        if not (root / needed).is_file():
            raise MonologueError(
                f"{root} is not a compiled Monologue site: it has no {needed} "
                f"(build one with `monologue-compile CHECKPOINT -o {root}`)"
            )


def page_csp(root: Path) -> str | None:
    """The Content-Security-Policy of the site's index.html meta tag, if any.

    A meta-tag policy does not reach the Web Worker (a worker takes its policy from the headers of
    its own script), so the server repeats it as a header on every response.
    """
    try:
        match = _CSP_META.search((root / "index.html").read_text(encoding="utf-8"))
    except OSError:
        return None
    return (match.group(1) or match.group(2)) if match else None


class SiteHandler(SimpleHTTPRequestHandler):
    """Serves files under `directory` only, with the site's MIME types and no listings."""

    csp: str | None = None
    # seconds a connection may sit without sending: a half-sent request must not hold a thread forever
    timeout = 30

    def guess_type(self, path):
        return MIME_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")

    def list_directory(self, path):
        self.send_error(404, "Not found")
        return None

    def send_head(self):
        # translate_path already drops "..", but a symlink inside DIR may still point out of it.
        root = os.path.realpath(self.directory)
        try:
            real = os.path.realpath(self.translate_path(self.path))
        except ValueError:  # a NUL byte (%00) or the like: no file has such a name
            self.send_error(400, "Bad request path")
            return None
        if real != root and not real.startswith(root + os.sep):
            self.send_error(404, "Not found")
            return None
        if not os.path.isdir(real) and not os.path.isfile(real):  # a FIFO or device would block or never end
            self.send_error(404, "Not found")
            return None
        return super().send_head()

    def end_headers(self):
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.csp:
            self.send_header("Content-Security-Policy", self.csp)
        super().end_headers()

    def log_request(self, code="-", size="-"):
        # A page load is dozens of requests; only failures are worth a line.
        if isinstance(code, int) and code >= 400:
            super().log_request(code, size)


def make_server(root: Path, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A server for `root` bound to host:port (port 0: any free port); call serve_forever() on it."""
    handler = type("Handler", (SiteHandler,), {"csp": page_csp(root)})

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    try:
        return Server((host, port), functools.partial(handler, directory=str(root)))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise MonologueError(
                f"port {port} on {host} is already in use; choose another with --port"
            ) from None
        raise MonologueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def server_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


@click.command("serve")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on (0: any free port)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def serve_cmd(directory: Path, port: int, host: str):
    """Serve a compiled site DIRECTORY (the compiler's dist/) on this machine."""
    check_site(directory)
    server = make_server(directory, host, port)
    click.echo(f"Serving {directory} at {server_url(server)}  (Ctrl+C to stop)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            "note: browsers only verify and cache the model on https:// or localhost pages; "
            "other machines need an https host in front of this server"
        )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.server_close()
