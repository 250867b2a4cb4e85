"""A second visit starts from the Cache API: no model file is downloaded again; a file whose sha256
changed is fetched anew while the stale copy is dropped; a stored copy gone bad is fetched again."""

import json

from web_helpers import browser, file_entry, make_site, pseudo_random_bytes, serving  # noqa: F401

CACHED_URLS = "async () => (await (await caches.open('monologue-model')).keys()).map((r) => r.url)"


def visit(context, url):
    """Loads the page once; returns the model-file URLs it requested and the final status text."""
    requested = []

    def record(request):
        requested.append(request.url)

    context.on("request", record)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("body:not([data-state='loading'])", timeout=30_000)
    status = page.inner_text("#status")
    cached = page.evaluate(CACHED_URLS)
    page.close()
    context.remove_listener("request", record)
    return [u for u in requested if "/model/" in u and not u.endswith("manifest.json")], status, cached


def test_second_visit_uses_cache_and_changed_file_is_refetched(browser, tmp_path):
    files = {
        "model/weights-00.bin": pseudo_random_bytes(200_000, 1),
        "model/weights-01.bin": pseudo_random_bytes(100_000, 2),
    }
    site = make_site(tmp_path / "dist", files)
    with serving(site) as url:
        context = browser.new_context()

        first, status, cached = visit(context, url)
        assert sorted(first) == [url + "model/weights-00.bin", url + "model/weights-01.bin"]
        assert "from this device's cache" not in status
        assert len(cached) == 2 and all("?sha256=" in key for key in cached)

        second, status, _ = visit(context, url)
        assert second == []
        assert "2 files, 293 KB, checked against their sha256, all from this device's cache" in status

        # A recompiled model: one shard changed, so its hash in the manifest changed too.
        new_shard = pseudo_random_bytes(100_000, 3)
        (site / "model" / "weights-01.bin").write_bytes(new_shard)
        manifest = json.loads((site / "model" / "manifest.json").read_text())
        manifest["files"][1] = file_entry("weights-01.bin", new_shard)
        (site / "model" / "manifest.json").write_text(json.dumps(manifest))

        third, status, cached = visit(context, url)
        assert third == [url + "model/weights-01.bin"]
        assert "1 from this device's cache" in status
        assert sorted(cached) == sorted(f"{url}model/{f['path']}?sha256={f['sha256']}" for f in manifest["files"])

        # A stored copy that went bad on disk is dropped and fetched again, not used.
        spoil = next(key for key in cached if "weights-00.bin" in key)
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("body:not([data-state='loading'])", timeout=30_000)  # its own load is over
        page.evaluate(
            "async (key) => (await caches.open('monologue-model')).put(key, new Response('garbage'))", spoil
        )
        page.close()
        fourth, status, cached = visit(context, url)
        assert fourth == [url + "model/weights-00.bin"]
        assert "checked against their sha256, 1 from this device's cache" in status
        assert spoil in cached
        context.close()
