"""Our backends beside the peers, on the same weights, in one run: `monologue bench DIST --peers`.

Prefill (one forward over a random 128-token prompt) and greedy batch-1 decode (64 tokens after
it) tokens/s of
  ours:        the native runtime on 1 and 2 cores (a child process pinned with sched_setaffinity:
               the runtime sizes its thread pool from the cores it may use), runtime.wasm under Node
               (one thread), the WGSL plan on wgpu-py (lavapipe here: a CPU emulating a GPU);
  llama.cpp:   `llama-bench` (pp128 at depth 0, tg64 at depth 128) on GGUFs written from the Hugging
               Face folder with llama.cpp's own convert_hf_to_gguf.py (F32, Q8_0) and llama-quantize
               (Q4_0); where they come from: benchmarks/bench_peers.py --build-llama-cpp;
  ONNX Runtime: the folder's model exported with torch.onnx (one graph, KV cache as inputs and
               outputs), dynamic int8 quantization (onnxruntime.quantization), CPU provider;
  PyTorch:     eager fp32 with its KV cache (the folder's model, or DIST's R_q without a folder).
Runs are interleaved (every engine once per round, best and median of the rounds): on a shared
machine a quiet moment then favours no engine. Each engine's decode is also given as a share of the
bandwidth roofline: memcpy bandwidth measured in the same run (best of one copy before each round) /
the bytes a decode token reads (every matmul weight in the engine's own format, one embedding row).
A peer that cannot run is one line saying why; none of them is a dependency of the compiler
(pip install monologue[peers]).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPT, STEPS = 128, 64
WGSL_BUDGET_S = 300  # an adapter whose run would take longer is reported, not timed
CACHE = Path(os.environ.get("MONOLOGUE_PEERS_CACHE", Path.home() / ".cache" / "monologue-peers"))


class CannotRun(Exception):
    """An engine that cannot run here; the message is the reason, one line."""


def memcpy_bandwidth() -> float:
    """Bytes/s a 256 MiB copy moves (read + write), best of 3."""
    a = np.ones(1 << 26, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(4):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best


def prompt_ids(vocab: int, n: int = PROMPT) -> list[int]:
    return np.random.default_rng(0).integers(0, vocab, n).tolist()


def graph_bytes_per_token(g) -> int:
    """Bytes of our format a decode token reads: every matmul weight (+ scales), one embedding row."""
    total = 0
    for n in g.nodes:
        if n.op == "matmul":
            total += g.weights[n.inputs[1]].nbytes()
        elif n.op == "embedding":
            w = g.weights[n.inputs[0]]
            total += w.nbytes() // w.shape[0]
    return total


def module_bytes_per_token(model) -> int:
    """fp32 bytes a torch module's decode token reads: every Linear weight, one embedding row."""
    import torch.nn as nn

    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
        elif isinstance(m, nn.Embedding):
            total += m.weight[0].numel() * m.weight.element_size()
    return total


class Engine:
    """One row of the table: `measure()` -> (prefill tok/s, decode tok/s) of one run."""

    name = "?"
    threads = 1
    family = "ours"
    bytes_per_token = 0
    max_runs = 1 << 30

    def measure(self) -> tuple[float, float]:
        raise NotImplementedError

    def close(self) -> None:
        pass


# --- ours ----------------------------------------------------------------------------------------

def _native_worker(lib: str, dist: str, cores: str, prompt_len: int, steps: int) -> None:
    """Child process: pin to `cores`, load DIST, answer one JSON timing per stdin line."""
    os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
    from .backends.native import NativeModel

    m = NativeModel.from_dist(dist, lib_path=lib)
    m.set_sampler(temperature=0.0)
    prompt = prompt_ids(m.vocab, prompt_len)
    print(json.dumps({"ready": True, "kernels": m.info()["kernels"]}), flush=True)
    for _ in sys.stdin:
        m.reset()
        t0 = time.perf_counter()
        m.forward(prompt, all_rows=False)
        t1 = time.perf_counter()
        for _ in range(steps):
            m.next_token()
        t2 = time.perf_counter()
        print(json.dumps({"prefill": prompt_len / (t1 - t0), "decode": steps / (t2 - t1)}), flush=True)


class Native(Engine):
    def __init__(self, dist: Path, g, threads: int, name: str, kernels: str | None = None):
        from .backends.rust_crate import build_native, trusted_crate

        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < threads:
            raise CannotRun(f"{threads} threads asked, this process may use {len(cores)} cores")
        self.name, self.threads, self.bytes_per_token = name, threads, graph_bytes_per_token(g)
        lib = build_native(trusted_crate(g))
        code = "import sys; from monologue_compile.peers import _native_worker as w; w(*sys.argv[1:4], *map(int, sys.argv[4:]))"
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(lib), str(dist),
                                      ",".join(map(str, cores[:threads])), str(PROMPT), str(STEPS)],
                                     env=dict(os.environ, **({"MONOLOGUE_X86_KERNELS": kernels} if kernels else {})),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.kernels = self._answer()["kernels"]  # the int8 kernel set the runtime picked

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise CannotRun("native worker exited: " + (self.proc.stderr.read().strip().splitlines() or ["?"])[-1])
        return json.loads(line)

    def measure(self):
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        r = self._answer()
        return r["prefill"], r["decode"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


class Wasm(Engine):
    def __init__(self, dist: Path, g, name: str):
        from .artifact import checked_manifest
        from .backends.native import WasmModel
        from .backends.rust_crate import build_wasm, find_toolchain, trusted_crate

        if not shutil.which("node"):
            raise CannotRun("no node on PATH")
        self.name, self.bytes_per_token = name, graph_bytes_per_token(g)
        wasm = dist / "runtime.wasm"
        if not wasm.exists():  # built beside, never into, the user's DIST
            find_toolchain(wasm=True)
            self._tmp = Path(tempfile.mkdtemp(prefix="monologue-peers-"))
            wasm = build_wasm(trusted_crate(g), self._tmp / "runtime.wasm")
        model_dir, _, _ = checked_manifest(dist)
        self.m = WasmModel(wasm, model_dir)
        self.m.set_sampler(temperature=0.0)
        self.prompt = prompt_ids(self.m.vocab)

    def measure(self):
        self.m.reset()
        t0 = time.perf_counter()
        self.m.forward(self.prompt, all_rows=False)
        tp = time.perf_counter() - t0
        wall, _ = self.m.bench_decode(self.prompt, STEPS)  # timed inside Node, without the pipe
        return PROMPT / tp, STEPS / wall

    def close(self):
        self.m.close()
        shutil.rmtree(getattr(self, "_tmp", ""), ignore_errors=True)


class Wgsl(Engine):
    def __init__(self, dist: Path, g, name: str):
        from .backends.wgpu_executor import WgpuSession
        from .bench import _session_rates
        from .wgsl import device as wdev

        self.s = WgpuSession.from_dist(dist)
        device = wdev.adapter().info.get("device", "?").split(" (")[0]
        emulated = any(k in device.lower() for k in ("llvmpipe", "lavapipe", "swiftshader"))
        self.name = name + f" ({device}{', CPU-emulated' if emulated else ''})"
        self.threads = len(os.sched_getaffinity(0))  # lavapipe runs its own threads
        self.max_runs = 1  # minutes a run on a CPU-emulated adapter, whose timings rank nothing anyway
        self.bytes_per_token = graph_bytes_per_token(g)
        self.prompt = prompt_ids(self.s.plan["vocab_size"])
        self._rates = _session_rates
        # the first use compiles the pipelines; a CPU emulating a GPU can take an hour over a 0.5B
        # model, so a run is projected from these three tokens (an overestimate: the compile is in it)
        t0 = time.perf_counter()
        self.s.forward(self.prompt[:2]), self.s.decode_greedy(1)
        projected = (time.perf_counter() - t0) * (PROMPT + STEPS) / 3
        if projected > WGSL_BUDGET_S:
            raise CannotRun(f"{device}{' (CPU-emulated)' if emulated else ''}: a run would take ~{projected:.0f} s here, "
                            f"projected from the first 3 tokens (budget {WGSL_BUDGET_S} s)")

    def measure(self):
        r = self._rates(self.s, self.prompt, STEPS, greedy=self.s.decode_greedy)
        return r["prefill_tok_s"], r["decode_tok_s"]


def our_engines(dist: Path, label: str = "ours", rust: bool = True, wasm: bool = True,
                wgsl: bool = True) -> tuple[list[Engine], list[str]]:
    """Native (1, 2 threads), wasm and WGSL on DIST, named by its quantization scheme ("ours native
    int4-g32"); the ones that could not start as lines. Where the runtime picks VNNI kernels, also
    native on one thread capped at the AVX2 kernels, to show what VNNI gives; where it picks AMX's
    prefill, one capped at AVX-512 VNNI, to show what AMX gives. Elsewhere a capped row would be
    the runtime's own pick again (or a set this CPU lacks), so there is none, and no line."""
    from .artifact import load_model

    g, manifest, _ = load_model(dist)
    native, web, gpu = (f"{label} {kind} {manifest['model'].get('quant', 'int8')}" for kind in ("native", "wasm", "WGSL"))
    engines, failed = [], []

    def capped(kernels: str, title: str, beyond: str):
        def make():
            picked = next((e.kernels for e in engines if isinstance(e, Native)), None)
            if picked is None or beyond not in picked:
                return None
            return Native(dist, g, 1, f"{native} {title} kernels", kernels)
        return make

    for what, make, on in ((f"{native}, 1 thread", lambda: Native(dist, g, 1, native), rust),
                           (f"{native}, 2 threads", lambda: Native(dist, g, 2, native), rust),
                           (f"{native} AVX2 kernels, 1 thread", capped("avx2", "AVX2", "vnni"), rust),
                           (f"{native} AVX-512 VNNI kernels, 1 thread", capped("avx512-vnni", "AVX-512 VNNI", "amx"), rust),
                           (f"{web} (Node)", lambda: Wasm(dist, g, f"{web} (Node)"), rust and wasm),
                           (gpu, lambda: Wgsl(dist, g, gpu), wgsl)):
        if not on:
            failed.append(f"{what}: skipped (not asked for)")
            continue
        try:
            engine = make()
        except Exception as e:  # no toolchain, no adapter, no plan: say so and go on
            failed.append(f"{what}: could not run: {_one_line(e)}")
            continue
        if engine is not None:
            engines.append(engine)
    return engines, failed


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


# --- PyTorch ---------------------------------------------------------------------------------------

class TorchHF(Engine):
    family = "torch"

    def __init__(self, folder: Path, threads: int):
        import torch
        import transformers

        self.m = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.name, self.threads = "PyTorch eager fp32", threads
        self.bytes_per_token = module_bytes_per_token(self.m)
        self.prompt = prompt_ids(self.m.config.vocab_size)

    def measure(self):
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                t0 = time.perf_counter()
                # the last row's logits only, as every other engine's prefill
                out = self.m(torch.tensor([self.prompt]), use_cache=True, logits_to_keep=1)
                t1 = time.perf_counter()
                for _ in range(STEPS):
                    tok = out.logits[:, -1:].argmax(-1)
                    out = self.m(tok, past_key_values=out.past_key_values, use_cache=True)
                t2 = time.perf_counter()
        finally:
            torch.set_num_threads(old)
        return PROMPT / (t1 - t0), STEPS / (t2 - t1)


class TorchRq(Engine):
    """DIST's R_q (the dequantized weights in this project's GPT) when there is no HF folder."""

    family = "torch"

    def __init__(self, dist: Path, threads: int):
        from .artifact import load_model
        from .frontend.load import build_module
        from .parity import rq_state_dict

        g, _, _ = load_model(dist)
        if g.meta.get("arch") != "gpt":
            raise CannotRun(f"R_q timing needs arch gpt (this is {g.meta.get('arch')}); give --hf-folder")
        self.m = build_module("gpt", g.meta["config"], rq_state_dict(g)).eval()
        self.name, self.threads = "PyTorch eager fp32 (R_q)", threads
        self.bytes_per_token = module_bytes_per_token(self.m)
        self.prompt = prompt_ids(g.meta["config"]["vocab_size"])

    def measure(self):
        import torch

        from .models.gpt import KVCache

        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                cache = KVCache(self.m.config, 1, PROMPT + STEPS + 1)
                t0 = time.perf_counter()
                logits = self.m(torch.tensor([self.prompt]), kv_cache=cache)[0, -1]
                t1 = time.perf_counter()
                for _ in range(STEPS):
                    logits = self.m(torch.tensor([[int(torch.argmax(logits))]]), kv_cache=cache)[0, -1]
                t2 = time.perf_counter()
        finally:
            torch.set_num_threads(old)
        return PROMPT / (t1 - t0), STEPS / (t2 - t1)


# --- llama.cpp -------------------------------------------------------------------------------------

def llama_cpp_dirs() -> tuple[Path, Path]:
    """(llama.cpp source with convert_hf_to_gguf.py, folder with llama-bench and llama-quantize);
    MONOLOGUE_LLAMA_CPP_SRC / MONOLOGUE_LLAMA_CPP_BIN override benchmarks/bench_peers.py's cache."""
    src = Path(os.environ.get("MONOLOGUE_LLAMA_CPP_SRC", CACHE / "llama.cpp"))
    bin_ = Path(os.environ.get("MONOLOGUE_LLAMA_CPP_BIN", CACHE / "build" / "bin"))
    if not (bin_ / "llama-bench").exists():
        raise CannotRun(f"no llama-bench in {bin_} (benchmarks/bench_peers.py --build-llama-cpp builds it)")
    if not (src / "convert_hf_to_gguf.py").exists():
        raise CannotRun(f"no convert_hf_to_gguf.py in {src} (benchmarks/bench_peers.py --build-llama-cpp fetches it)")
    return src, bin_


def _folder_key(folder: Path) -> str:
    """Cache key of a HF folder's converted forms: its config and weight files' names, sizes, times."""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


# A folder whose tokenizer llama.cpp does not know by hash (a synthetic one on random weights) is
# written with the default pre-tokenizer: tokenization plays no part in tok/s.
_CONVERT = r"""
import runpy, sys
src = sys.argv.pop(1)
sys.path.insert(0, src)
sys.path.insert(1, src + "/gguf-py")
from conversion import base
known = base.TextModel.get_vocab_base_pre
def pre(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        return "default"
base.TextModel.get_vocab_base_pre = pre
sys.argv[0] = src + "/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def gguf_files(folder: Path) -> dict[str, Path]:
    """F32, Q8_0 and Q4_0 GGUFs of FOLDER (cached under CACHE/gguf)."""
    src, bin_ = llama_cpp_dirs()
    if not (folder / "tokenizer.json").exists() and not (folder / "tokenizer.model").exists():
        raise CannotRun(f"{folder}: no tokenizer.json or tokenizer.model (convert_hf_to_gguf.py writes the vocabulary)")
    out = CACHE / "gguf" / _folder_key(folder)
    out.mkdir(parents=True, exist_ok=True)
    files = {q: out / f"model-{q}.gguf" for q in ("F32", "Q8_0", "Q4_0")}
    for q in ("F32", "Q8_0"):
        if not files[q].exists():
            _run([sys.executable, "-c", _CONVERT, str(src), str(folder), "--outtype", q.lower(),
                  "--outfile", str(files[q]) + ".part"], f"convert_hf_to_gguf.py --outtype {q.lower()}")
            os.replace(str(files[q]) + ".part", files[q])
    if not files["Q4_0"].exists():
        _run([str(bin_ / "llama-quantize"), str(files["F32"]), str(files["Q4_0"]) + ".part", "Q4_0"], "llama-quantize Q4_0")
        os.replace(str(files["Q4_0"]) + ".part", files["Q4_0"])
    return files


def _run(cmd: list[str], what: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        said = ((r.stderr or r.stdout).strip().splitlines() or [f"exit status {r.returncode}"])[-1][:240]
        raise CannotRun(f"{what} failed: " + (f"killed by signal {-r.returncode}" if r.returncode < 0 else said))
    return r.stdout


def gguf_bytes_per_token(path: Path) -> int:
    """Bytes a decode token reads from a GGUF: every tensor but the embedding table, of which one
    row, unless the table is also the output matrix (no output.weight: tied embeddings)."""
    src, _ = llama_cpp_dirs()
    sys.path.insert(0, str(src / "gguf-py"))
    try:
        from gguf import GGUFReader
    finally:
        sys.path.remove(str(src / "gguf-py"))
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    total = 0
    for name, t in tensors.items():
        if name == "token_embd.weight" and "output.weight" in tensors:
            total += int(t.n_bytes) // int(t.shape[-1])  # ggml shapes are (row length, rows)
        else:
            total += int(t.n_bytes)
    return total


class LlamaCpp(Engine):
    family = "llama.cpp"

    def __init__(self, gguf: Path, quant: str, threads: int):
        self.gguf, self.quant, self.threads = gguf, quant, threads
        self.name = f"llama.cpp {quant}"
        self.bin = llama_cpp_dirs()[1] / "llama-bench"
        self.bytes_per_token = gguf_bytes_per_token(gguf)
        self.repack: list[str] = []

    def _ts(self, *args: str) -> float:
        def run() -> str:
            return _run([str(self.bin), "-m", str(self.gguf), "-t", str(self.threads), "-r", "1", "-o", "json",
                         *self.repack, *args], "llama-bench")
        try:
            out = run()
        except CannotRun:
            # llama.cpp 0c1e570 built natively on an AMX CPU (Sapphire Rapids) segfaults in its
            # default weight repacking (its AMX buffers), every Q8_0 / Q4_0 run: time it without,
            # from here on, and say so in its name
            if self.repack:
                raise
            self.repack = ["--repack", "0"]
            self.name += " (--repack 0: its default crashed)"
            out = run()
        return float(json.loads(out)[0]["avg_ts"])

    def measure(self):
        # decode after a prompt-length context, as ours
        return self._ts("-p", str(PROMPT), "-n", "0"), self._ts("-p", "0", "-n", str(STEPS), "-d", str(PROMPT))


# --- ONNX Runtime ----------------------------------------------------------------------------------

def onnx_folder(folder: Path) -> Path:
    """FOLDER's model exported to ONNX in the layout transformers.js loads (cached under CACHE/onnx):
    config.json and generation_config.json beside onnx/model.onnx (fp32; one graph: input_ids,
    position_ids and past_key_values.N.key/value in, the last position's logits and
    present.N.key/value out), onnx/model_quantized.onnx (dynamic int8, transformers.js's "q8") and
    onnx/model_q4.onnx (4-bit MatMulNBits, symmetric, blocks of 32, f32 activations: its "q4", made
    as its own scripts/quantize.py does). ONNX Runtime times the int8 graph natively; transformers.js
    runs these same files in the browser."""
    try:
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as e:
        raise CannotRun(f"onnxruntime is not installed ({e.name}); pip install onnxruntime onnx") from None
    out = CACHE / "onnx" / _folder_key(folder)
    fp32, q8, q4 = (out / "onnx" / f"model{s}.onnx" for s in ("", "_quantized", "_q4"))
    if not fp32.exists():
        _export_onnx(folder, out, fp32)
    # one file each (they stay under protobuf's 2 GB for the models here): transformers.js reads it whole
    if not q8.exists():
        quantize_dynamic(str(fp32), str(q8) + ".part", weight_type=QuantType.QInt8)
        os.replace(str(q8) + ".part", q8)
    if not q4.exists():
        import onnx

        quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=4, block_size=32, is_symmetric=True)
        quantizer.process()
        onnx.save(quantizer.model.model, str(q4) + ".part")
        os.replace(str(q4) + ".part", q4)
    return out


def _export_onnx(folder: Path, out: Path, fp32: Path) -> None:
    import torch
    import transformers
    from transformers import DynamicCache

    fp32.parent.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        if (folder / name).exists():
            shutil.copy(folder / name, out / name)
    m = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    cfg = m.config
    n_layer = cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, ids, pos, *past):
            cache = DynamicCache()
            for i in range(n_layer):
                cache.update(past[2 * i], past[2 * i + 1], i)
            # batch 1 without padding: the causal mask follows from the positions, so no attention_mask
            # input (transformers.js feeds the graph's inputs only); the last row's logits only, as
            # every other engine's prefill
            o = self.m(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1)
            return (o.logits,) + tuple(t for layer in o.past_key_values.layers for t in (layer.keys, layer.values))

    past = [torch.zeros(1, cfg.num_key_value_heads, 2, head_dim) for _ in range(2 * n_layer)]
    names = [f"past_key_values.{i // 2}.{'value' if i % 2 else 'key'}" for i in range(2 * n_layer)]
    outs = [n.replace("past_key_values", "present") for n in names]
    axes = {"input_ids": {1: "t"}, "position_ids": {1: "t"}, **{n: {2: "past"} for n in names},
            **{n: {2: "total"} for n in outs}}
    with torch.no_grad():
        torch.onnx.export(Step(), (torch.tensor([[1, 2]]), torch.tensor([[2, 3]]), *past), str(fp32) + ".part",
                          input_names=["input_ids", "position_ids"] + names, output_names=["logits"] + outs,
                          dynamic_axes=axes, dynamo=False, opset_version=17)
    os.replace(str(fp32) + ".part", fp32)


def onnx_bytes_per_token(path: Path) -> int:
    """Bytes a decode token reads: initializers feeding matrix products (with their scales and zero
    points), one row of each Gather (embedding) table."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {i.name: i for i in model.graph.initializer}

    def nbytes(t) -> int:
        return int(np.prod(t.dims)) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize

    total, seen = 0, set()
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name not in init or name in seen:
                continue
            seen.add(name)
            t = init[name]
            if node.op_type == "Gather" and i == 0:
                total += nbytes(t) // max(1, t.dims[0])
            elif node.op_type in ("MatMul", "MatMulInteger", "MatMulNBits", "Gemm", "DynamicQuantizeMatMul",
                                  "DequantizeLinear"):
                total += nbytes(t)
    return total


class Onnx(Engine):
    family = "onnxruntime"

    def __init__(self, path: Path, threads: int, vocab: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        self.s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.name, self.threads = "ONNX Runtime int8 (dynamic)", threads
        self.bytes_per_token = onnx_bytes_per_token(path)
        self.past = [i for i in self.s.get_inputs() if i.name.startswith("past")]
        self.prompt = np.array([prompt_ids(vocab)], np.int64)

    def measure(self):
        feed = {"input_ids": self.prompt, "position_ids": np.arange(PROMPT, dtype=np.int64)[None],
                **{i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in self.past}}
        t0 = time.perf_counter()
        o = self.s.run(None, feed)
        t1 = time.perf_counter()
        for step in range(STEPS):
            feed = {"input_ids": np.argmax(o[0][:, -1], -1)[:, None].astype(np.int64),
                    "position_ids": np.array([[PROMPT + step]], np.int64),
                    **{i.name: o[1 + k] for k, i in enumerate(self.past)}}
            o = self.s.run(None, feed)
        t2 = time.perf_counter()
        return PROMPT / (t1 - t0), STEPS / (t2 - t1)


def peer_engines(hf_folder: Path | None, dist: Path | None) -> tuple[list[Engine], list[str]]:
    """llama.cpp (F32, Q8_0, Q4_0), ONNX Runtime int8 and PyTorch fp32, 1 and 2 threads each, on
    HF_FOLDER; without one, PyTorch on DIST's R_q only."""
    engines, failed = [], []

    def add(what: str, make) -> None:
        try:
            engines.extend(make())
        except Exception as e:  # a peer that is not installed or cannot read the model
            failed.append(f"{what}: could not run: {_one_line(e)}")

    if hf_folder is None:
        for what in ("llama.cpp", "ONNX Runtime"):
            failed.append(f"{what}: could not run: it reads a Hugging Face folder (give --hf-folder)")
        add("PyTorch eager fp32 (R_q)", lambda: [TorchRq(dist, t) for t in (1, 2)])
        return engines, failed
    add("llama.cpp", lambda: [LlamaCpp(p, q, t) for q, p in gguf_files(hf_folder).items() for t in (1, 2)])
    vocab = lambda: json.loads((hf_folder / "config.json").read_text())["vocab_size"]  # noqa: E731
    add("ONNX Runtime int8", lambda: [Onnx(onnx_folder(hf_folder) / "onnx" / "model_quantized.onnx", t, vocab())
                                      for t in (1, 2)])
    add("PyTorch eager fp32", lambda: [TorchHF(hf_folder, t) for t in (1, 2)])
    return engines, failed


# --- the interleaved run and its table ---------------------------------------------------------------

def run_rounds(engines: list[Engine], rounds: int, log=None, on_round=None, before_round=None) -> list[dict]:
    """Every engine once per round; an engine that fails is reported and dropped. ON_ROUND gets the
    rows so far after each round, so a run cut short still leaves its numbers; BEFORE_ROUND runs
    while every engine is idle."""
    runs: dict[int, list] = {id(e): [] for e in engines}
    errors: dict[int, str] = {}
    for r in range(rounds):
        if before_round:
            before_round()
        for e in engines:
            if id(e) in errors or len(runs[id(e)]) >= e.max_runs:
                continue
            try:
                runs[id(e)].append(e.measure())
            except Exception as ex:  # a peer crashing mid-run is a row, not the end of the run
                errors[id(e)] = _one_line(ex)
        if log:
            log(f"round {r + 1}/{rounds} done")
        if on_round and r + 1 < rounds:
            on_round(r + 1, _rows(engines, runs, errors))
    return _rows(engines, runs, errors)


def _rows(engines: list[Engine], runs: dict, errors: dict) -> list[dict]:
    rows = []
    for e in engines:
        row = {"engine": e.name, "family": e.family, "threads": e.threads, "bytes_per_token": e.bytes_per_token}
        rs = runs[id(e)]
        if rs:
            pre, dec = zip(*rs)
            row.update(prefill_best=max(pre), prefill_median=statistics.median(pre),
                       decode_best=max(dec), decode_median=statistics.median(dec), runs=len(rs))
        if id(e) in errors:
            row["error"] = errors[id(e)]
        rows.append(row)
    return rows


# (column, reference engine, measure): the native table's ratio columns
LLAMA_CPP_RATIOS = (("pre/Q8", "llama.cpp Q8_0", "prefill_best"), ("dec/Q8", "llama.cpp Q8_0", "decode_best"),
                    ("dec/Q4", "llama.cpp Q4_0", "decode_best"))


def table(rows: list[dict], bandwidth: float, failed: list[str], title: str = "",
          ratios: tuple = LLAMA_CPP_RATIOS) -> str:
    """One line per engine: best/median tok/s, ratios to the RATIOS reference engines (its row at
    the same thread count, else its one-thread row), decode's share of the bandwidth roofline."""
    # a reference by its whole name ("ours wasm int8 (Chromium, main)"), else by the name before a
    # note in parentheses ("llama.cpp Q8_0" for "llama.cpp Q8_0 (--repack 0: ..)")
    ref = {}
    for r in rows:
        if "decode_best" not in r:
            continue
        ref[(r["engine"], r["threads"])] = r
        ref.setdefault((r["engine"].split(" (")[0], r["threads"]), r)

    def ratio(r, name, key):
        q = ref.get((name, r["threads"])) or ref.get((name, 1))
        return f"{r[key] / q[key]:.2f}" if q else "-"

    lines = [title] if title else []
    lines.append(f"prompt {PROMPT}, generate {STEPS}, greedy, batch 1; best/median of interleaved rounds; "
                 f"memcpy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write), load average {os.getloadavg()[0]:.1f}")
    w = max([len(r["engine"]) for r in rows] + [6])
    cw = max([len(c) for c, _, _ in ratios] + [6])
    lines.append(f"{'engine':<{w}} {'thr':>3} {'MB/tok':>7} {'prefill tok/s':>15} {'decode tok/s':>15} "
                 + " ".join(f"{c:>{cw}}" for c, _, _ in ratios) + f" {'roofline':>8}")
    for r in rows:
        mb = f"{r['bytes_per_token'] / 1e6:7.1f}" if r["bytes_per_token"] else f"{'-':>7}"
        if "decode_best" not in r:
            lines.append(f"{r['engine']:<{w}} {r['threads']:>3} {mb} failed: {r.get('error', '?')}")
            continue
        roof = f"{100 * r['decode_best'] * r['bytes_per_token'] / bandwidth:7.0f}%" if r["bytes_per_token"] else f"{'-':>8}"
        lines.append(f"{r['engine']:<{w}} {r['threads']:>3} {mb} "
                     f"{r['prefill_best']:>7.0f}/{r['prefill_median']:<7.0f} {r['decode_best']:>7.1f}/{r['decode_median']:<7.1f} "
                     + " ".join(f"{ratio(r, name, key):>{cw}}" for _, name, key in ratios) + f" {roof}")
    lines += failed
    return "\n".join(lines)


def compare(engines: list[Engine], failed: list[str], rounds: int, title: str = "", log=None,
            ratios: tuple = LLAMA_CPP_RATIOS) -> tuple[str, dict]:
    """Interleaved rounds of ENGINES; (table, numbers). The roofline's bandwidth is the best of one
    copy before each round, like the engines' figures: one taken once, as the engines had just
    started (Node, ONNX Runtime still warming up), read 8.6 GB/s on a VM that copies at 34."""
    copies: list[float] = []
    try:
        partial = (lambda done, rows: log(f"table after {done} of {rounds} rounds:\n"
                                          + table(rows, max(copies), failed, title, ratios))) if log else None
        rows = run_rounds(engines, rounds, log, partial, before_round=lambda: copies.append(memcpy_bandwidth()))
    finally:
        for e in engines:
            e.close()
    bandwidth = max(copies, default=float("nan"))
    return table(rows, bandwidth, failed, title, ratios), {"bandwidth_bytes_s": bandwidth, "rows": rows,
                                                           "failed": failed, "prompt": PROMPT, "steps": STEPS,
                                                           "rounds": rounds}


def bench_peers(dist: Path, hf_folder: Path | None, rounds: int = 5, rust: bool = True, wasm: bool = True,
                log=None) -> tuple[str, dict]:
    """`monologue bench DIST --peers [--hf-folder F]`: ours on DIST, the peers on F."""
    from .errors import MonologueError
    from .frontend.hf import is_hf_folder

    if hf_folder is not None and not is_hf_folder(hf_folder):
        raise MonologueError(f"{hf_folder}: not a Hugging Face model folder (no config.json)")
    engines, failed = our_engines(dist, rust=rust, wasm=wasm)
    pe, pf = peer_engines(hf_folder, dist)
    return compare(engines + pe, failed + pf, rounds, log=log)
