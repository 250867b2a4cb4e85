"""Headless Chromium (Dawn/Tint over SwiftShader) as a second WebGPU implementation for the tests.

A blank page is served from a temp dir on 127.0.0.1 (WebGPU needs a secure context, and localhost
is one); kernels go in and results come out through page.evaluate, buffers as base64 so values
cross exactly. `Browser.open()` returns None with a reason when playwright or chromium is missing.
"""

from __future__ import annotations

import base64
import functools
import http.server
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--enable-unsafe-webgpu", "--no-sandbox", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-quic"]

SETUP_JS = """
async () => {
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) return 'no WebGPU adapter';
  const wanted = ['subgroups'].filter(f => adapter.features.has(f));
  window.dev = await adapter.requestDevice({requiredFeatures: wanted});
  window.kinds = {read: 'read-only-storage', read_write: 'storage', uniform: 'uniform'};
  window.lacking = (needs) => needs.filter(n => n.startsWith('wgsl:')
      ? !navigator.gpu.wgslLanguageFeatures.has(n.slice(5))
      : !dev.features.has(n === 'subgroup' ? 'subgroups' : n));
  window.makePipeline = async (k) => {
    const errors = [];
    dev.pushErrorScope('validation');
    const module = dev.createShaderModule({code: k.wgsl});
    const info = await module.getCompilationInfo();
    for (const m of info.messages) if (m.type === 'error') errors.push(`${m.lineNum}:${m.linePos} ${m.message}`);
    const bgl = dev.createBindGroupLayout({entries: k.bindings.map((b, i) => (
      {binding: i, visibility: GPUShaderStage.COMPUTE, buffer: {type: kinds[b.kind]}}))});
    let pipeline = null;
    try {
      pipeline = await dev.createComputePipelineAsync({
        layout: dev.createPipelineLayout({bindGroupLayouts: [bgl]}), compute: {module, entryPoint: 'main'}});
    } catch (e) { errors.push(String(e.message || e)); }
    const err = await dev.popErrorScope();
    if (err) errors.push(err.message);
    return {pipeline, bgl, errors};
  };
  const b64 = async (s) => new Uint8Array(
      await (await fetch('data:application/octet-stream;base64,' + s)).arrayBuffer());
  window.runKernel = async (k) => {
    const miss = lacking(k.needs);
    if (miss.length) return {skip: 'Chromium lacks ' + miss.join(', ')};
    const {pipeline, bgl, errors} = await makePipeline(k);
    if (errors.length) return {errors};
    const bufs = {};
    for (const b of k.bindings) {
      const data = k.inputs[b.name] !== undefined ? await b64(k.inputs[b.name]) : null;
      const size = Math.max(16, Math.ceil((data ? data.length : k.outputs[b.name]) / 16) * 16);
      const usage = (b.kind === 'uniform' ? GPUBufferUsage.UNIFORM : GPUBufferUsage.STORAGE)
                    | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
      bufs[b.name] = dev.createBuffer({size, usage});
      if (data) {
        const padded = new Uint8Array(size); padded.set(data);
        dev.queue.writeBuffer(bufs[b.name], 0, padded);
      }
    }
    const bg = dev.createBindGroup({layout: bgl, entries: k.bindings.map((b, i) => (
      {binding: i, resource: {buffer: bufs[b.name]}}))});
    const enc = dev.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline); pass.setBindGroup(0, bg); pass.dispatchWorkgroups(...k.workgroups); pass.end();
    const reads = {};
    for (const [name, n] of Object.entries(k.outputs)) {
      const size = bufs[name].size;
      reads[name] = dev.createBuffer({size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST});
      enc.copyBufferToBuffer(bufs[name], 0, reads[name], 0, size);
    }
    dev.queue.submit([enc.finish()]);
    const out = {};
    for (const [name, n] of Object.entries(k.outputs)) {
      await reads[name].mapAsync(GPUMapMode.READ);
      const bytes = new Uint8Array(reads[name].getMappedRange()).slice(0, n);
      let s = ''; for (const c of bytes) s += String.fromCharCode(c);
      out[name] = btoa(s);
    }
    return {out};
  };
  return 'ok';
}
"""


class Browser:
    def __init__(self, pw, browser, page, server):
        self._pw, self._browser, self.page, self._server = pw, browser, page, server
        self.closed = False

    @classmethod
    def open(cls) -> tuple["Browser | None", str]:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            return None, "playwright is not installed"
        if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
            return None, f"{CHROMIUM} not found"

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        tmp = tempfile.mkdtemp(prefix="wgsl-page-")
        Path(tmp, "index.html").write_text("<!doctype html><title>wgsl kernel check</title>")
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=tmp))
        srv.tmp = tmp
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        pw = sync_playwright().start()
        try:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{srv.server_address[1]}/index.html")
            status = page.evaluate(SETUP_JS)
        except Exception as e:
            pw.stop()
            cls._stop_server(srv)
            return None, f"chromium failed to start: {e}"
        self = cls(pw, browser, page, srv)
        if status != "ok":
            self.close()
            return None, status
        return self, ""

    @staticmethod
    def _stop_server(srv):
        srv.shutdown()
        srv.server_close()
        shutil.rmtree(srv.tmp, ignore_errors=True)

    def close(self):
        self.closed = True
        self._browser.close()
        self._pw.stop()
        self._stop_server(self._server)

    def compile(self, kernel, needs) -> dict:
        """{'errors': [...]} (empty when it compiled) or {'skip': why}."""
        spec = {"wgsl": kernel.wgsl, "bindings": [{"name": b.name, "kind": b.kind} for b in kernel.bindings],
                "needs": needs}
        return self.page.evaluate("""async (k) => { const miss = lacking(k.needs);
            if (miss.length) return {skip: 'Chromium lacks ' + miss.join(', ')};
            return {errors: (await makePipeline(k)).errors}; }""", spec)

    def run(self, kernel, needs, inputs: dict, outputs: dict, pos: int = 0, n_tokens: int = 1) -> dict:
        """Like wgsl device.run; returns {'out': {name: array}} or {'errors'|'skip': ...}."""
        enc = {n: base64.b64encode(np.ascontiguousarray(a).tobytes()).decode() for n, a in inputs.items()}
        for b in kernel.bindings:
            if b.kind == "uniform":
                enc[b.name] = base64.b64encode(np.array([pos, n_tokens, 0, 0], np.uint32).tobytes()).decode()
        spec = {"wgsl": kernel.wgsl, "bindings": [{"name": b.name, "kind": b.kind} for b in kernel.bindings],
                "needs": needs, "inputs": enc, "workgroups": list(kernel.workgroups),
                "outputs": {n: int(np.prod(s)) * np.dtype(d).itemsize for n, (s, d) in outputs.items()}}
        res = self.page.evaluate("(k) => runKernel(k)", spec)
        if "out" in res:
            res["out"] = {n: np.frombuffer(base64.b64decode(res["out"][n]), d).reshape(s).copy()
                          for n, (s, d) in outputs.items()}
        return res
