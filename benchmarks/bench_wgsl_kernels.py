"""Time the int8 matvec kernel against an f32 matvec of the same shape, on whatever adapter wgpu-py
finds (lavapipe on CPU machines: those are correctness-device timings and do not rank kernels the way
a GPU does; run it on a GPU machine for GPU figures).

    python benchmarks/bench_wgsl_kernels.py [--reps 50] [--shapes 1280x1280,5120x1280]
    python benchmarks/bench_wgsl_kernels.py --browser [--rounds 3]

Prints per-dispatch time (dispatches batched in one compute pass, one submit), the weight bytes each
kernel streams, the GB/s that implies, and the f32 / int8 time ratio. Shapes are N x K (out x in).
Then the int8 prefill matmul at the same shapes for --tokens tokens (GFLOP/s, 2*T*N*K flops).

--browser: headless Chromium's adapter instead (SwiftShader without a GPU): the decode kernels of
benchmarks/bench_browser.py's model in both forms (cooperative, the plan's default lists; and
per-invocation, its `cpu` profile), 4 dispatches per submit, best of --rounds rounds taken in turn
so that load on a shared machine hits both forms alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monologue_compile.wgsl import device as wdev  # noqa: E402
from monologue_compile.wgsl import kernels  # noqa: E402

# Baseline only (not a project kernel): f32 weights read as vec4<f32>, same row-blocking and
# two-level reduction as the int8 kernel's portable path, so the comparison isolates the weight format.
F32_MATVEC = """
const N: u32 = {N}u;
const K4: u32 = {K4}u;
const ROWS: u32 = {rows}u;
const WG: u32 = {wg}u;
@group(0) @binding(0) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
const SEG: u32 = {seg}u;
var<workgroup> red: array<array<f32, WG>, ROWS>;
var<workgroup> seg: array<array<f32, SEG>, ROWS>;
@compute @workgroup_size({wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
    let row0 = (wid.x + wid.y * nwg.x) * ROWS;
    var acc: array<f32, ROWS>;
    for (var v = lid; v < K4; v += WG) {{
        let xv = x[v];
        for (var r = 0u; r < ROWS; r++) {{
            acc[r] += dot(w[min(row0 + r, N - 1u) * K4 + v], xv);
        }}
    }}
    for (var r = 0u; r < ROWS; r++) {{ red[r][lid] = acc[r]; }}
    workgroupBarrier();
    for (var i = lid; i < ROWS * SEG; i += WG) {{
        var t = 0.0;
        for (var j = 0u; j < WG / SEG; j++) {{ t += red[i / SEG][(i % SEG) * (WG / SEG) + j]; }}
        seg[i / SEG][i % SEG] = t;
    }}
    workgroupBarrier();
    if (lid < ROWS && row0 + lid < N) {{
        var t = 0.0;
        for (var j = 0u; j < SEG; j++) {{ t += seg[lid][j]; }}
        y[row0 + lid] = t;
    }}
}}
"""


def time_dispatches(dev, pipeline, bind_group, workgroups, reps, out):
    def once(n):
        enc = dev.create_command_encoder()
        p = enc.begin_compute_pass()
        p.set_pipeline(pipeline)
        p.set_bind_group(0, bind_group)
        for _ in range(n):
            p.dispatch_workgroups(*workgroups)
        p.end()
        dev.queue.submit([enc.finish()])
        dev.queue.read_buffer(out, 0, 16)  # waits for the submit (the output is small)

    once(2)  # warm-up: first submit pays pipeline and memory setup
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        once(reps)
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def bench_shape(N, K, reps, rows, wg, subgroups):
    rng = np.random.default_rng(0)
    feats = frozenset(["subgroup"]) if subgroups != "off" else frozenset()
    dev = wdev.get_device(feats)
    # int8 kernel
    k = kernels.matvec_int8(N, K, rows=rows, wg=wg, subgroups=subgroups, covers=["bench"])
    prog = wdev.Program(k, dev)
    kv4 = -(-K // 16)
    w8 = rng.integers(0, 2**32, (N, kv4 * 4), dtype=np.uint32)
    bufs = {"w": wdev.make_buffer(dev, w8), "scale": wdev.make_buffer(dev, np.ones(N, np.float32)),
            "x": wdev.make_buffer(dev, rng.standard_normal(K).astype(np.float32)),
            "y": wdev.make_buffer(dev, nbytes=4 * N)}
    t8 = time_dispatches(dev, prog.pipeline, prog.bind(bufs), k.workgroups, reps, bufs["y"])
    bytes8 = w8.nbytes + 4 * N + 4 * K
    # f32 baseline
    w32 = rng.standard_normal((N, K)).astype(np.float32)
    src = F32_MATVEC.format(N=N, K4=K // 4, rows=rows, wg=wg, seg=k.params["seg"])
    mod = dev.create_shader_module(code=src)
    pipe = dev.create_compute_pipeline(layout="auto", compute={"module": mod, "entry_point": "main"})
    b32 = [wdev.make_buffer(dev, w32), bufs["x"], wdev.make_buffer(dev, nbytes=4 * N)]
    bg = dev.create_bind_group(layout=pipe.get_bind_group_layout(0),
                               entries=[{"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}}
                                        for i, b in enumerate(b32)])
    t32 = time_dispatches(dev, pipe, bg, kernels.grid(-(-N // rows)), reps, b32[2])
    bytes32 = w32.nbytes + 4 * K
    return t8, bytes8, t32, bytes32


def bench_matmul(N, K, T, reps):
    rng = np.random.default_rng(0)
    dev = wdev.get_device()
    k = kernels.matmul_int8(T, N, K, covers=["bench"])
    prog = wdev.Program(k, dev)
    bufs = {"w": wdev.make_buffer(dev, rng.integers(0, 2**32, (N, kernels.k_pad(K) // 4), dtype=np.uint32)),
            "scale": wdev.make_buffer(dev, np.ones(N, np.float32)),
            "x": wdev.make_buffer(dev, rng.standard_normal((T, K)).astype(np.float32)),
            "y": wdev.make_buffer(dev, nbytes=4 * T * N),
            "step": wdev.make_buffer(dev, np.frombuffer(wdev.step_bytes(0, T), np.uint32), uniform=True)}
    return time_dispatches(dev, prog.pipeline, prog.bind(bufs), k.workgroups, reps, bufs["y"])


# One kernel, `reps` dispatches in one pass and one submit, on buffers of the given sizes (weights
# filled with arbitrary bytes, floats with small values, the step uniform with pos).
BROWSER_TIME_JS = """async (k) => {
  const {pipeline, bgl, errors} = await makePipeline(k);
  if (errors.length) return {errors};
  const bufs = {};
  for (const b of k.bindings) {
    const size = Math.max(16, Math.ceil(k.sizes[b.name] / 16) * 16);
    const usage = (b.kind === 'uniform' ? GPUBufferUsage.UNIFORM : GPUBufferUsage.STORAGE) | GPUBufferUsage.COPY_DST;
    bufs[b.name] = dev.createBuffer({size, usage});
    const data = new Uint8Array(size);
    if (b.kind === 'uniform') new Uint32Array(data.buffer).set([k.pos, 1, 0, 0]);
    else if (b.name === 'w') for (let i = 0; i < size; i++) data[i] = (i * 2654435761) >>> 24;
    else { const f = new Float32Array(data.buffer); for (let i = 0; i < f.length; i++) f[i] = ((i * 7919) % 100) / 100; }
    dev.queue.writeBuffer(bufs[b.name], 0, data);
  }
  const bg = dev.createBindGroup({layout: bgl, entries: k.bindings.map((b, i) => ({binding: i, resource: {buffer: bufs[b.name]}}))});
  const once = async (n) => {
    const enc = dev.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bg);
    for (let i = 0; i < n; i++) pass.dispatchWorkgroups(...k.workgroups);
    pass.end();
    dev.queue.submit([enc.finish()]);
    await dev.queue.onSubmittedWorkDone();
  };
  await once(1);
  const t = performance.now();
  await once(k.reps);
  for (const b of Object.values(bufs)) b.destroy();
  return {ms: (performance.now() - t) / k.reps};
}"""


def browser_cases():
    """(label, [cooperative kernels], [per-invocation kernels], buffer sizes, pos) for the decode step
    of bench_browser's model (C 512, 8 heads of 64, MLP 2048, vocab 32768, context 512)."""
    from monologue_compile.backends.wgsl_plan import CPU_KERNELS

    def both(fn, *args, **kw):
        k0, k1 = fn(*args, covers=["bench"], **kw), fn(*args, covers=["bench"], **kw, **CPU_KERNELS[fn.__name__])
        return [k0] if not isinstance(k0, list) else k0, [k1] if not isinstance(k1, list) else k1

    mv = {"step": 16}
    cases = []
    for label, N, K, kw in (("lm_head matvec 32768x512 +norm +softcap", 32768, 512, dict(norm=True, softcap=15.0)),
                            ("qkv matvec 1536x512 +norm", 1536, 512, dict(norm=True)),
                            ("fc matvec 2048x512 +norm +relu2", 2048, 512, dict(norm=True, act="relu2")),
                            ("proj matvec 512x2048 +residual", 512, 2048, dict(residual=True))):
        cases.append((label, *both(kernels.matvec_int8, N, K, **kw), dict(mv, w=N * K, scale=4 * N, x=4 * K, y=4 * N), 0))
    att = kernels.attn_decode(8, 8, 64, 512)[0].info
    for pos in (100, 500):
        cases.append((f"attn_decode at position {pos}", *both(kernels.attn_decode, 8, 8, 64, 512, scale=0.125),
                      dict(q=2048, k=4 << 18, v=4 << 18, ml=4 * att["ml"], o=4 * att["o"], out=2048, step=16), pos))
    cases.append(("argmax over 32768 logits (both stages)", *both(kernels.argmax, 32768),
                  dict(x=4 * 32768, pairs=4 * 32768, out=16), 0))
    return cases


def browser_main(rounds: int):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from wgsl_harness.browser import Browser
    from wgsl_harness.catalog import needs

    browser, why = Browser.open()
    if browser is None:
        sys.exit(f"no Chromium WebGPU: {why}")
    adapter = browser.page.evaluate("async () => { const a = (await navigator.gpu.requestAdapter()).info; "
                                    "return `${a.vendor} ${a.architecture}`; }")
    print(f"adapter: {adapter} (Chromium); ms per dispatch, best of {rounds} rounds, 4 dispatches per submit")

    def time(k, sizes, pos):
        spec = {"wgsl": k.wgsl, "bindings": [{"name": b.name, "kind": b.kind} for b in k.bindings], "needs": needs(k),
                "workgroups": list(k.workgroups), "sizes": sizes, "reps": 4, "pos": pos}
        res = browser.page.evaluate(BROWSER_TIME_JS, spec)
        if "errors" in res:
            raise RuntimeError(f"{k.name}: {res['errors']}")
        return res["ms"]

    try:
        print(f"{'decode kernel':<46} | {'cooperative':>11} | {'per-invocation':>14} | speed-up")
        for label, coop, per, sizes, pos in browser_cases():
            best = [float("inf"), float("inf")]
            for _ in range(rounds):
                for i, ks in enumerate((coop, per)):
                    best[i] = min(best[i], sum(time(k, sizes, pos) for k in ks))
            print(f"{label:<46} | {best[0]:11.2f} | {best[1]:14.2f} | {best[0] / best[1]:6.1f}x", flush=True)
    finally:
        browser.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1280x1280,5120x1280,1280x5120,16384x1280",
                    help="comma-separated NxK (d20: 1280 wide, MLP 5120)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--wg", type=int, default=64)
    ap.add_argument("--subgroups", choices=["off", "naga"], default="off")
    ap.add_argument("--tokens", type=int, default=64, help="prefill matmul tokens (0 skips the matmul table)")
    ap.add_argument("--browser", action="store_true", help="time both kernel forms on Chromium's WebGPU adapter")
    ap.add_argument("--rounds", type=int, default=3, help="--browser: rounds, the best kept")
    a = ap.parse_args(argv)
    if a.browser:
        return browser_main(a.rounds)
    info = wdev.adapter().info
    print(f"adapter: {info.get('device', '?')} ({info.get('adapter_type', '?')}, {info.get('backend_type', '?')})")
    if info.get("adapter_type") == "CPU":
        print("NOTE: CPU adapter (lavapipe): correctness-device timings, not GPU rankings.")
    print(f"matvec rows/workgroup={a.rows} wg={a.wg} subgroups={a.subgroups} reps={a.reps} "
          "(the f32 baseline always uses the portable reduction)")
    print(f"{'N x K':>13} | {'int8 ms':>8} {'MB':>7} {'GB/s':>6} | {'f32 ms':>8} {'MB':>7} {'GB/s':>6} | f32/int8")
    for shape in a.shapes.split(","):
        N, K = (int(v) for v in shape.lower().split("x"))
        t8, b8, t32, b32 = bench_shape(N, K, a.reps, a.rows, a.wg, a.subgroups)
        print(f"{N:>6} x {K:<5} | {t8 * 1e3:8.3f} {b8 / 1e6:7.2f} {b8 / t8 / 1e9:6.2f} | "
              f"{t32 * 1e3:8.3f} {b32 / 1e6:7.2f} {b32 / t32 / 1e9:6.2f} | {t32 / t8:6.2f}x")
    if a.tokens:
        print(f"\nint8 matmul (prefill), T={a.tokens}, tiles 32 tokens x 64 outputs, 4 x 4 per thread")
        print(f"{'N x K':>13} | {'ms':>8} {'GFLOP/s':>8} {'us/token':>9}")
        for shape in a.shapes.split(","):
            N, K = (int(v) for v in shape.lower().split("x"))
            t = bench_matmul(N, K, a.tokens, max(2, a.reps // 4))
            print(f"{N:>6} x {K:<5} | {t * 1e3:8.3f} {2 * a.tokens * N * K / t / 1e9:8.2f} {t / a.tokens * 1e6:9.1f}")


if __name__ == "__main__":
    main()
