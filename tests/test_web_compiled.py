"""`monologue compile` writes a whole static site: the page, the model, its WebGPU plan and
runtime.wasm, every file listed with its sha256. Chromium loads it as is and gets a backend."""

import json

from click.testing import CliRunner

from monologue_compile.cli import main
from web_helpers import browser, outside, recorded_page, serving  # noqa: F401


def test_compiled_dist_is_a_site_the_page_runs(browser, tmp_path, tiny_checkpoint):
    dist = tmp_path / "dist"
    result = CliRunner().invoke(main, ["compile", str(tiny_checkpoint), "-o", str(dist)])
    assert result.exit_code == 0, result.output
    assert (dist / "index.html").is_file() and (dist / "runtime.wasm").is_file()
    assert (dist / "runtime_rs" / "src" / "model_gen.rs").is_file()
    manifest = json.loads((dist / "model" / "manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert {"../runtime.wasm", "plan.json", "weights-00.bin"} <= paths
    with serving(dist) as url:
        context, page, requests = recorded_page(browser, url)
        page.wait_for_selector("body:not([data-state='loading'])", timeout=120_000)
        status = page.inner_text("#status")
        assert page.get_attribute("body", "data-state") == "ready", status
        assert sorted(u for u in requests if u.endswith(".bin")) == sorted(
            f"{url}model/{f['path']}" for f in manifest["files"] if f["path"].endswith(".bin")
        )
        assert outside(requests, url) == []
        context.close()
