"""copy_web_shell puts the page into a dist/: every file the page loads, nothing else, byte for byte."""

import re

from monologue_compile.resources import web_shell_dir
from monologue_compile.site import copy_web_shell


def test_copy_web_shell(tmp_path):
    written = copy_web_shell(tmp_path / "dist")
    names = sorted(p.relative_to(tmp_path / "dist").as_posix() for p in written)
    assert {"index.html", "style.css", "app.js", "worker.js", "loader.js", "engine.js", "think.js", "generate.js"} <= set(names)
    for name in names:
        assert (tmp_path / "dist" / name).read_bytes() == (web_shell_dir() / name).read_bytes()
    # Every module the page imports is in the copy (relative imports only: the site may live anywhere).
    for name in names:
        if name.endswith(".js"):
            for target in re.findall(r'from "(\.[^"]+)"|new URL\("(\.[^"]+)"', (tmp_path / "dist" / name).read_text()):
                target = next(t for t in target if t)
                if not target.endswith("/"):
                    assert target.removeprefix("./") in names, (name, target)
    # Copying twice gives the same tree (the compiler's output must be reproducible).
    again = copy_web_shell(tmp_path / "again")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in written]


def test_page_urls_are_relative():
    html = (web_shell_dir() / "index.html").read_text()
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert not url.startswith(("/", "http:", "https:", "//")), url
    assert '<script type="module" src="app.js">' in html
    assert "<script>" not in html  # the CSP allows no inline script
