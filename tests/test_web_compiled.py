"""The page loads what the compiler really writes: a tiny model compiled to dist/, the web shell
copied beside it, every file of its manifest fetched and verified in Chromium."""

import json

from click.testing import CliRunner

from monologue_compile.cli import main
from monologue_compile.site import copy_web_shell
from web_helpers import browser, serving  # noqa: F401


def test_page_loads_a_compiled_model(browser, tmp_path, tiny_checkpoint):
    dist = tmp_path / "dist"
    result = CliRunner().invoke(main, ["compile", str(tiny_checkpoint), "-o", str(dist)])
    assert result.exit_code == 0, result.output
    copy_web_shell(dist)
    manifest = json.loads((dist / "model" / "manifest.json").read_text())
    with serving(dist) as url:
        context = browser.new_context()
        requests = []
        context.on("request", lambda request: requests.append(request.url))
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("body:not([data-state='loading'])", timeout=60_000)
        status = page.inner_text("#status")
        assert page.get_attribute("body", "data-state") == "no-backend", status
        assert f"{len(manifest['files'])} files, " in status and "checked against their sha256" in status
        assert sorted(u for u in requests if u.endswith(".bin")) == sorted(
            f"{url}model/{f['path']}" for f in manifest["files"] if f["path"].endswith(".bin")
        )
        context.close()
