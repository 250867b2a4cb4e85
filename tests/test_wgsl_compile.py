"""Every template, rendered once per family and per switch, compiles under naga (wgpu-py) and under
Tint (headless Chromium): the two disagree on features (see shared/WEBGPU.md), so both are checked.
A variant whose feature an implementation lacks is skipped with the reason."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from monologue_compile.wgsl.render import template_dir
from wgsl_harness import device_or_skip
from wgsl_harness.catalog import catalog, needs

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--enable-unsafe-webgpu", "--no-sandbox", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-quic"]
NAMES = sorted(catalog("naga"))


def test_catalog_uses_every_template():
    used = {k.template for k in catalog("naga").values()}
    used |= {"_step.wgsl.j2", "_int8.wgsl.j2", "_epilogue.wgsl.j2"}  # included by the kernels above
    assert {p.name for p in template_dir().glob("*.wgsl.j2")} == used


def test_headers_name_shapes_and_covers():
    for name, k in catalog("naga").items():
        body = k.wgsl.split("\n")
        first = next(i for i, line in enumerate(body) if line.startswith("// "))
        assert body[first].startswith(f"// {k.name}:"), name
        assert any(line.startswith("// covers: catalog") for line in body[:12]), name
        assert any(line.startswith("// shapes: ") for line in body[:12]), name


@pytest.mark.parametrize("name", NAMES)
def test_compiles_under_naga(name):
    from monologue_compile.wgsl.device import Program, adapter_features

    k = catalog("naga")[name]
    missing = [f for f in k.features if f not in adapter_features()]
    if missing:
        pytest.skip(f"{name}: wgpu-py adapter lacks {missing}")
    Program(k, device_or_skip(k.features))  # raises on a WGSL or pipeline error


PAGE_JS = """
async (kernels) => {
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) return {error: 'no WebGPU adapter'};
  const lang = navigator.gpu.wgslLanguageFeatures;
  const wanted = ['subgroups'].filter(f => adapter.features.has(f));
  const device = await adapter.requestDevice({requiredFeatures: wanted});
  const kinds = {read: 'read-only-storage', read_write: 'storage', uniform: 'uniform'};
  const out = {};
  for (const k of kernels) {
    const lacking = k.needs.filter(n => n.startsWith('wgsl:') ? !lang.has(n.slice(5))
                                        : !device.features.has(n === 'subgroup' ? 'subgroups' : n));
    if (lacking.length) { out[k.name] = {skip: 'Chromium lacks ' + lacking.join(', ')}; continue; }
    device.pushErrorScope('validation');
    const module = device.createShaderModule({code: k.wgsl});
    const info = await module.getCompilationInfo();
    const msgs = info.messages.filter(m => m.type === 'error')
                     .map(m => `${m.lineNum}:${m.linePos} ${m.message}`);
    const bgl = device.createBindGroupLayout({entries: k.bindings.map((b, i) => (
      {binding: i, visibility: GPUShaderStage.COMPUTE, buffer: {type: kinds[b]}}))});
    try {
      await device.createComputePipelineAsync({
        layout: device.createPipelineLayout({bindGroupLayouts: [bgl]}),
        compute: {module, entryPoint: 'main'}});
    } catch (e) { msgs.push(String(e.message || e)); }
    const err = await device.popErrorScope();
    if (err) msgs.push(err.message);
    out[k.name] = {errors: msgs};
  }
  return out;
}
"""


@functools.lru_cache(maxsize=1)
def _tint_results() -> dict:
    """Compile the whole Tint catalog in one browser session; {'error': why} when there is no browser."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"error": "playwright is not installed"}
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        return {"error": f"{CHROMIUM} not found"}
    kernels = [{"name": n, "wgsl": k.wgsl, "bindings": [b.kind for b in k.bindings], "needs": needs(k)}
               for n, k in catalog("tint").items()]

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    with tempfile.TemporaryDirectory() as d:
        Path(d, "index.html").write_text("<!doctype html><title>wgsl compile check</title>")
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=d))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page()
                    # WebGPU needs a secure context; http://127.0.0.1 is one.
                    page.goto(f"http://127.0.0.1:{srv.server_address[1]}/index.html")
                    return page.evaluate(PAGE_JS, kernels)
                finally:
                    browser.close()
        finally:
            srv.shutdown()
            srv.server_close()


@pytest.mark.parametrize("name", NAMES)
def test_compiles_under_tint(name):
    res = _tint_results()
    if "error" in res:
        pytest.skip(f"Tint check unavailable: {res['error']}")
    r = res[name]
    if "skip" in r:
        pytest.skip(f"{name}: {r['skip']}")
    assert not r["errors"], f"{name} under Tint:\n" + json.dumps(r["errors"], indent=1) + "\n" + catalog("tint")[name].wgsl
