"""Run a compiled model on the Rust runtime: the native library through cffi (ABI mode,
`ffi.dlopen`), or runtime.wasm under Node; both with the numpy interpreter's interface
(`forward(ids) -> logits (T, V)`, `reset()`, `pos`, `max_len`), so parity and chat use them alike.

    m = NativeModel.from_dist("dist")          # builds the installed crate + dist's model (cached) and loads
    m.forward([1, 2, 3])                        # prefill: logits (3, V)
    m.forward([4])                              # decode step
    m.chat_start(prompt_ids); m.chat_step()     # {"token", "pieces": [[part, text]], "done"}

Status codes of the C ABI (runtime_rs/src/model_abi.rs): 0 ok, 1 bad input, 2 internal error
(a caught panic), 3 context full; anything but 0 raises `RuntimeCallError` with the code.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ..errors import MonologueError

CDEF = """
typedef struct MonoModel MonoModel;
const char *mono_model_last_error(void);
int mono_model_new(MonoModel **out);
void mono_model_free(MonoModel *h);
int mono_model_load_manifest(MonoModel *h, const uint8_t *p, size_t n, uint32_t *out_shards);
int mono_model_add_shard(MonoModel *h, uint32_t index, const uint8_t *p, size_t n);
int mono_model_load_tokenizer(MonoModel *h, const uint8_t *p, size_t n);
int mono_model_finish(MonoModel *h);
int mono_model_info(MonoModel *h, const uint8_t **out, size_t *out_len);
int mono_model_reset(MonoModel *h);
int mono_model_forward(MonoModel *h, const uint8_t *ids, size_t n, int all, const float **out, size_t *out_len);
int mono_model_set_sampler(MonoModel *h, float temperature, uint32_t top_k, float top_p, float repetition_penalty, uint32_t seed);
int mono_model_next_token(MonoModel *h, uint32_t *out_id);
int mono_chat_start(MonoModel *h, const uint8_t *ids, size_t n, uint32_t max_tokens);
int mono_chat_start_messages(MonoModel *h, const uint8_t *p, size_t n, uint32_t max_tokens);
int mono_chat_step(MonoModel *h, const uint8_t **out, size_t *out_len);
int mono_sha256(const uint8_t *p, size_t n, uint8_t *out);
"""

OK, ERROR, PANIC, CONTEXT_FULL = 0, 1, 2, 3

_LIBS: dict[str, tuple] = {}


class RuntimeCallError(ValueError):
    """A C ABI call returned a non-zero status (`code`): 1 bad input, 2 internal error, 3 context full."""

    def __init__(self, code: int, message: str):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


def load_library(path) -> tuple:
    """(ffi, lib) for a built native runtime (cached per path)."""
    path = str(path)
    if path not in _LIBS:
        from cffi import FFI

        ffi = FFI()
        ffi.cdef(CDEF)
        _LIBS[path] = (ffi, ffi.dlopen(path))
    return _LIBS[path]


def sha256(lib_path, data: bytes) -> str:
    """The runtime's own SHA-256 of data (hex), as its loader computes it."""
    ffi, lib = load_library(lib_path)
    out = ffi.new("uint8_t[32]")
    if lib.mono_sha256(data, len(data), out) != OK:
        raise RuntimeCallError(ERROR, ffi.string(lib.mono_model_last_error()).decode())
    return bytes(ffi.buffer(out, 32)).hex()


def model_files(dist) -> tuple[bytes, list[bytes], bytes | None]:
    """(manifest, shards in order, tokenizer) bytes of a compiled model dir (dist or dist/model); the
    tokenizer is None for a model compiled without one (its tokenizer.json is `{}`)."""
    from ..artifact import read_site

    # the runtime's loader checks every sha256 itself; read_site confines and sizes the reads
    _, manifest, doc, files = read_site(dist, verify_sha=False)
    tok = files[doc["tokenizer"]]
    return manifest, [files[s] for s in doc["weights"]["shards"]], None if tok.strip() == b"{}" else tok


class NativeModel:
    """One loaded model in the native runtime (its own KV cache)."""

    def __init__(self, lib_path, manifest: bytes, shards: list[bytes], tokenizer: bytes | None):
        self.ffi, self.lib = load_library(lib_path)
        out = self.ffi.new("MonoModel **")
        self._check(self.lib.mono_model_new(out))
        self.h = out[0]
        n = self.ffi.new("uint32_t *")
        self._check(self.lib.mono_model_load_manifest(self.h, manifest, len(manifest), n))
        if n[0] != len(shards):
            raise RuntimeCallError(ERROR, f"the manifest lists {n[0]} shards, {len(shards)} given")
        for i, s in enumerate(shards):
            self._check(self.lib.mono_model_add_shard(self.h, i, s, len(s)))
        if tokenizer is not None:
            self._check(self.lib.mono_model_load_tokenizer(self.h, tokenizer, len(tokenizer)))
        self._check(self.lib.mono_model_finish(self.h))
        info = self.info()
        self.vocab, self.max_len, self.chunk = info["vocab"], info["seq_len"], info["chunk"]

    @classmethod
    def from_dist(cls, dist, fast: bool = False, lib_path=None) -> "NativeModel":
        """Build the runtime for DIST's model natively (rust_crate.trusted_crate: never DIST's own
        crate) and load DIST's model."""
        from .rust_crate import build_native, trusted_crate

        dist = Path(dist)
        if lib_path is None:
            from ..artifact import load_model

            g, _, _ = load_model(dist)
            lib_path = build_native(trusted_crate(g), fast=fast)
        manifest, shards, tok = model_files(dist)
        return cls(lib_path, manifest, shards, tok)

    def __del__(self):
        h = getattr(self, "h", None)
        if h is not None and h != self.ffi.NULL:
            self.lib.mono_model_free(h)
            self.h = None

    def _check(self, status: int) -> None:
        if status != OK:
            msg = self.ffi.string(self.lib.mono_model_last_error()).decode("utf-8", "replace")
            raise RuntimeCallError(status, msg)

    def _bytes_out(self, call) -> bytes:
        p = self.ffi.new("const uint8_t **")
        n = self.ffi.new("size_t *")
        self._check(call(p, n))
        return bytes(self.ffi.buffer(p[0], n[0]))

    # --- the interpreter's interface ---------------------------------------------------------
    def info(self) -> dict:
        return json.loads(self._bytes_out(lambda p, n: self.lib.mono_model_info(self.h, p, n)))

    @property
    def pos(self) -> int:
        return self.info()["pos"]

    def reset(self) -> None:
        self._check(self.lib.mono_model_reset(self.h))

    def forward(self, ids, all_rows: bool = True) -> np.ndarray:
        """Logits (T, V) of the next len(ids) tokens (only the last row when all_rows is False)."""
        ids = np.asarray(ids, dtype="<u4").reshape(-1)
        raw = ids.tobytes()
        p = self.ffi.new("const float **")
        n = self.ffi.new("size_t *")
        self._check(self.lib.mono_model_forward(self.h, raw, len(ids), 1 if all_rows else 0, p, n))
        out = np.frombuffer(self.ffi.buffer(p[0], n[0] * 4), dtype=np.float32).copy()
        return out.reshape(-1, self.vocab)

    # --- sampling and chat -------------------------------------------------------------------------
    def set_sampler(self, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=0) -> None:
        self._check(self.lib.mono_model_set_sampler(self.h, float(temperature), int(top_k or 0),
                                                    float(top_p if top_p is not None else 1.0),
                                                    float(repetition_penalty), int(seed) & 0xFFFFFFFF))

    def next_token(self) -> int:
        out = self.ffi.new("uint32_t *")
        self._check(self.lib.mono_model_next_token(self.h, out))
        return int(out[0])

    def chat_start(self, prompt, max_tokens: int = 512) -> None:
        """prompt: token ids, messages, or {"messages", "enable_thinking"} (rendered in Rust with the
        manifest's chat template)."""
        if isinstance(prompt, dict) or (isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], dict)):
            raw = json.dumps(prompt if isinstance(prompt, dict) else list(prompt)).encode()
            self._check(self.lib.mono_chat_start_messages(self.h, raw, len(raw), max_tokens))
        else:
            raw = np.asarray(prompt, dtype="<u4").tobytes()
            self._check(self.lib.mono_chat_start(self.h, raw, len(raw) // 4, max_tokens))

    def chat_step(self) -> dict:
        return json.loads(self._bytes_out(lambda p, n: self.lib.mono_chat_step(self.h, p, n)))


def _graph_dir(graph) -> Path:
    """The graph written in the compiled format (weights, manifest) with its crate, in a temp dir."""
    from ..artifact import write_model
    from .rust_crate import emit_crate

    tmp = Path(tempfile.mkdtemp(prefix="monologue-rt-"))
    write_model(graph, tmp / "model", json.dumps({}), {"model": {"config": graph.meta.get("config", {})}})
    emit_crate(graph, tmp / "runtime_rs")
    return tmp


def wasm_session_for_graph(graph) -> "WasmModel":
    """runtime.wasm for a graph with weights, run by Node (`monologue chat --backend wasm`)."""
    from .rust_crate import build_wasm

    tmp = _graph_dir(graph)
    build_wasm(tmp / "runtime_rs", tmp / "runtime.wasm")
    return WasmModel(tmp / "runtime.wasm", tmp / "model", tokenizer=False)


def require_built(dist) -> Path:
    dist = Path(dist)
    if not (dist / "runtime_rs" / "src" / "model_gen.rs").exists():
        raise MonologueError(f"{dist}: no runtime_rs/ crate; compile with the Rust backend first")
    return dist / "runtime_rs"


# --- runtime.wasm under Node ------------------------------------------------------------------------

# A line-oriented host: one JSON request per stdin line, one JSON answer per stdout line. It
# drives web_shell/wasm_runtime.js, the same glue the browser uses.
_NODE_HOST = r"""
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
const { instantiate } = await import(process.env.MONO_GLUE);
const dir = process.env.MONO_MODEL_DIR;
const manifestBytes = readFileSync(dir + "/manifest.json");
const manifest = JSON.parse(manifestBytes.toString("utf8"));
const rt = await instantiate(readFileSync(process.env.MONO_WASM));
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
let model;
try {
  model = rt.createModel({ manifest: manifestBytes, shards: manifest.weights.shards.map((s) => readFileSync(dir + "/" + s)),
                           tokenizer: process.env.MONO_TOKENIZER ? readFileSync(dir + "/" + manifest.tokenizer) : null });
  say({ ok: true, info: model.info() });
} catch (e) {
  say({ ok: false, code: e.code ?? 2, message: String(e.message) });
  process.exit(0);
}
for await (const line of createInterface({ input: process.stdin })) {
  let r;
  try {
    r = JSON.parse(line); // inside the try: a malformed request is answered, not the host's end
    let out = {};
    if (r.op === "forward") {
      const l = model.forward(r.ids, r.all);
      out.logits = Buffer.from(l.buffer, l.byteOffset, l.byteLength).toString("base64");
    } else if (r.op === "reset") model.reset();
    else if (r.op === "info") out.info = model.info();
    else if (r.op === "sampler") model.setSampler(r.config);
    else if (r.op === "next") out.id = model.nextToken();
    else if (r.op === "chat_start") model.chatStart(r.prompt, r.max_tokens);
    else if (r.op === "chat_step") out.step = model.chatStep();
    else if (r.op === "bench") {
      // decode speed inside Node, without the pipe: prefill, then greedy next-token steps
      model.reset();
      model.setSampler({ temperature: 0 });
      model.forward(r.prompt, false);
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      for (let i = 0; i < r.steps; i++) model.nextToken();
      out.seconds = (performance.now() - t0) / 1000;
      const c = process.cpuUsage(c0);
      out.cpu_seconds = (c.user + c.system) / 1e6;
    } else if (r.op === "quit") break;
    else throw Object.assign(new Error(`unknown op ${JSON.stringify(r.op)}`), { code: 1 });
    say({ ok: true, ...out });
  } catch (e) {
    say({ ok: false, code: e.code ?? 2, message: String(e.message) });
  }
}
"""


class WasmModel:
    """runtime.wasm run by Node through web_shell/wasm_runtime.js; NativeModel's interface."""

    def __init__(self, wasm_path, model_dir, node: str = "node", tokenizer: bool = True):
        import os
        import subprocess

        from ..resources import web_shell_dir

        env = dict(os.environ, MONO_GLUE=(web_shell_dir() / "wasm_runtime.js").resolve().as_uri(),
                   MONO_MODEL_DIR=str(Path(model_dir).resolve()), MONO_WASM=str(Path(wasm_path).resolve()),
                   MONO_TOKENIZER="1" if tokenizer else "")
        try:
            self.proc = subprocess.Popen([node, "--input-type=module", "-e", _NODE_HOST], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
        except FileNotFoundError:
            raise MonologueError("Node.js (node) is needed to run runtime.wasm outside a browser") from None
        first = self._read()
        info = first["info"]
        self.vocab, self.max_len, self.chunk = info["vocab"], info["seq_len"], info["chunk"]

    @classmethod
    def from_dist(cls, dist) -> "WasmModel":
        from ..artifact import checked_manifest, site_file

        dist = Path(dist)
        model_dir, _, doc = checked_manifest(dist)  # the Node host reads only confined, listed files
        wasm = dist / "runtime.wasm"
        if not wasm.exists():
            raise MonologueError(f"{wasm}: missing; compile with the wasm build")
        # a model compiled without a tokenizer has `{}` there
        tok = site_file(model_dir, doc["tokenizer"])
        return cls(wasm, model_dir, tokenizer=tok.stat().st_size > 16 or tok.read_bytes().strip() != b"{}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeCallError(PANIC, "the Node runtime host exited")
        r = json.loads(line)
        if not r["ok"]:
            raise RuntimeCallError(r["code"], r["message"])
        return r

    def _call(self, **req) -> dict:
        try:
            line = json.dumps(req, allow_nan=False)
        except ValueError:  # NaN or an infinity: JSON has no such number, and the glue would refuse it
            raise RuntimeCallError(ERROR, f"{req.get('op')}: arguments must be finite numbers") from None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.wait(timeout=10)

    def __del__(self):
        if getattr(self, "proc", None) is not None:
            try:
                self.close()
            except Exception:
                self.proc.kill()

    def info(self) -> dict:
        return self._call(op="info")["info"]

    @property
    def pos(self) -> int:
        return self.info()["pos"]

    def reset(self) -> None:
        self._call(op="reset")

    def forward(self, ids, all_rows: bool = True) -> np.ndarray:
        import base64

        r = self._call(op="forward", ids=[int(i) for i in ids], all=bool(all_rows))
        return np.frombuffer(base64.b64decode(r["logits"]), dtype=np.float32).reshape(-1, self.vocab)

    def set_sampler(self, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=0) -> None:
        self._call(op="sampler", config={"temperature": temperature, "topK": top_k or 0,
                                         "topP": 1.0 if top_p is None else top_p,
                                         "repetitionPenalty": repetition_penalty, "seed": seed})

    def next_token(self) -> int:
        return self._call(op="next")["id"]

    def chat_start(self, prompt, max_tokens: int = 512) -> None:
        self._call(op="chat_start", prompt=list(prompt), max_tokens=max_tokens)

    def chat_step(self) -> dict:
        return self._call(op="chat_step")["step"]

    def bench_decode(self, prompt, steps: int) -> tuple[float, float]:
        """(wall, CPU) seconds of `steps` greedy decode steps after `prompt`, timed inside Node."""
        r = self._call(op="bench", prompt=[int(i) for i in prompt], steps=steps)
        return r["seconds"], r["cpu_seconds"]


# --- decode speed (used by `monologue bench DIR` and benchmarks/bench_runtime.py) ----------------------------------

def time_decode(model, prompt, steps: int, repeats: int = 3) -> tuple[float, float]:
    """(wall, CPU) seconds of `steps` greedy decode steps after `prompt`, the best of `repeats`
    runs: the first run of runtime.wasm also pays for the engine compiling hot functions."""
    import time

    runs = []
    model.set_sampler(temperature=0.0)
    for _ in range(repeats):
        if isinstance(model, WasmModel):
            runs.append(model.bench_decode(prompt, steps))
            continue
        model.reset()
        model.forward(prompt, all_rows=False)
        w, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            model.next_token()
        runs.append((time.perf_counter() - w, time.process_time() - c))
    return min(runs)


def _torch_decode_speed(model, prompt: list[int], steps: int) -> dict:
    """PyTorch eager greedy decode tokens/s at its best thread count: on a busy machine all-cores
    OpenMP can be 10x slower than one thread."""
    import time

    import torch

    default_threads = torch.get_num_threads()
    best, out = 0.0, {}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        with torch.no_grad():
            model.generate(prompt, 2)  # warm-up
            t0 = time.perf_counter()
            model.generate(prompt, 1)
            t1 = time.perf_counter()
            model.generate(prompt, steps + 1)
            t2 = time.perf_counter()
        rate = steps / max((t2 - t1) - (t1 - t0), 1e-9)
        if rate > best:
            best, out["torch_threads"] = rate, threads
    torch.set_num_threads(default_threads)
    out["torch_fp32_tok_s"] = best
    return out


def decode_speeds(dist, steps: int = 32, wasm: bool = True) -> dict:
    """Greedy decode tokens/s of PyTorch CPU eager fp32 (the model rebuilt from DIST with its
    dequantized weights: the same fp32 compute as the original), the native runtime and
    runtime.wasm under Node, measured in the same run after a 16-token prompt."""
    import shutil

    from ..artifact import load_model
    from ..frontend.load import build_module
    from ..parity import rq_state_dict
    from .rust_crate import build_native, build_wasm, trusted_crate

    dist = Path(dist)
    g, _, _ = load_model(dist)
    cfg = g.meta["config"]
    steps = max(2, min(steps, cfg["sequence_len"] - 17))
    prompt = np.random.default_rng(0).integers(0, cfg["vocab_size"], 16).tolist()
    out: dict = {"steps": steps}

    try:
        model = build_module(g.meta.get("arch", "gpt"), cfg, rq_state_dict(g)).eval()
    except MonologueError as e:
        # a weight folded into a position table at compile time (GPT-2's wpe) is not in R_q's state
        # dict, so PyTorch cannot be rebuilt from the dist alone; the runtimes are still measured
        out["torch_skipped"] = str(e)
        model = None
    if model is not None:
        out.update(_torch_decode_speed(model, prompt, steps))
        del model

    crate = trusted_crate(g)
    m = NativeModel.from_dist(dist, lib_path=build_native(crate))
    out["native_tok_s"] = steps / time_decode(m, prompt, steps)[0]
    out["native_kernels"] = m.info()["kernels"]
    del m
    if wasm and shutil.which("node"):
        if not (dist / "runtime.wasm").exists():
            build_wasm(crate, dist / "runtime.wasm")
        w = WasmModel.from_dist(dist)
        try:
            out["wasm_tok_s"] = steps / time_decode(w, prompt, steps)[0]
            out["wasm_kernels"] = w.info()["kernels"]
        finally:
            w.close()
        out["wasm_bytes"] = (dist / "runtime.wasm").stat().st_size
    return out
