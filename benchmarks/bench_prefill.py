"""Prefill and decode speed of the native runtime (and runtime.wasm under Node), this tree against
a base revision, int8 and int4, at 1 and 2 threads, measured in the same run.

    python benchmarks/bench_prefill.py [--base main] [--quants int8,int4-g32] [--rounds 5]
        [--prompt 128] [--steps 64] [--wasm] [--config n_layer=8,n_embd=512,...]
        [--source HF_FOLDER] [--llama-cpp GGUF]

The model is a nanochat GPT with random weights (default: 8 layers of 512, vocab 32768: 25M
parameters in the blocks, 59M with the embeddings). Each tree (this one, and `git archive BASE`)
compiles it and builds its own release library; every measurement runs in its own process pinned
to 1 or 2 cores (`taskset`: the runtime sizes its thread pool from the affinity mask), and the
rounds interleave trees, quantizations and thread counts, so a busy neighbour slows all alike.
Reported: the best of the rounds; prefill = one forward of the prompt (the last row's logits),
decode = `steps` greedy next_token calls after it (wasm: timed inside Node, with Node's own CPU
seconds beside the wall time). `--source` compiles that checkpoint or Hugging
Face folder instead (e.g. bench_peers.py's llama-30m); `--llama-cpp` also times llama.cpp's
llama-bench on a GGUF of the same weights, one thread, in every round, and prints each engine's
decode as a ratio of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = "n_layer=8,n_embd=512,n_head=4,n_kv_head=4,vocab_size=32768,sequence_len=512"


def _config(text: str) -> dict:
    out = {}
    for item in text.split(","):
        k, v = item.split("=")
        out[k] = float(v) if "." in v else int(v)
    return out


def make_checkpoint(path: Path, config: dict) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch

    from bench_runtime import tokenizer_json
    from conftest import write_checkpoint
    from monologue_compile.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(**config)).init_weights(zero_init_outputs=False).eval()
    write_checkpoint(path, model, tokenizer=tokenizer_json(model.config.vocab_size))


def prepare(ckpt: Path, dist: Path, quant: str, wasm: bool) -> dict:
    """(run inside the tree being measured) compile, then build the release library (and wasm)."""
    from monologue_compile.artifact import load_model
    from monologue_compile.backends.rust_crate import build_native, build_wasm, emit_crate
    from monologue_compile.driver import compile_to

    if not (dist / "model" / "manifest.json").exists():
        compile_to(ckpt, dist, quant=quant)
    g, _, _ = load_model(dist)
    crate = emit_crate(g, dist.parent / (dist.name + "-crate") / "runtime_rs")
    out = {"lib": str(build_native(crate))}
    if wasm:
        build_wasm(crate, dist / "runtime.wasm")
    return out


def measure(lib: str, dist: Path, prompt_len: int, steps: int, reps: int, wasm: bool) -> dict:
    """(run inside the tree, pinned) best-of-reps prefill and decode tok/s, per wall second and
    (native) per CPU second of this process: on a shared machine the CPU time says what the code
    costs when other jobs take the cores."""
    import numpy as np

    from monologue_compile.backends.native import NativeModel, WasmModel

    m = WasmModel.from_dist(dist) if wasm else NativeModel.from_dist(dist, lib_path=lib)
    try:
        prompt = np.random.default_rng(0).integers(0, m.vocab if not wasm else m.info()["vocab"], prompt_len).tolist()
        m.set_sampler(temperature=0.0)
        clocks = {"prefill": [], "decode": []}
        for _ in range(reps + 1):  # the first round warms up (and compiles, in V8)
            m.reset()
            w, c = time.perf_counter(), time.process_time()
            m.forward(prompt, all_rows=False)
            clocks["prefill"].append((time.perf_counter() - w, time.process_time() - c))
            if wasm:  # timed inside Node, as a page runs it, without a pipe round trip per token
                clocks["decode"].append(m.bench_decode(prompt, steps))
                continue
            w, c = time.perf_counter(), time.process_time()
            for _ in range(steps):
                m.next_token()
            clocks["decode"].append((time.perf_counter() - w, time.process_time() - c))
        out = {}
        for what, n in (("prefill", prompt_len), ("decode", steps)):
            out[f"{what}_tok_s"] = n / min(w for w, _ in clocks[what][1:])
            # (this process's CPU time; for wasm, the decode's is Node's own, from inside it)
            if not wasm or what == "decode":
                out[f"{what}_tok_cpu_s"] = n / min(c for _, c in clocks[what][1:])
        return out
    finally:
        if wasm:
            m.close()


def _run(tree: Path, args: list[str], cpus: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_prefill.py"), *args]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def base_tree(rev: str, into: Path) -> Path:
    """`git archive REV` unpacked, with this tree's built Python extension (tokenizer, sha256)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    shutil.copytree(ROOT / "monologue_compile" / "_runtime", into / "monologue_compile" / "_runtime", dirs_exist_ok=True)
    return into


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="main", help="git revision to compare against ('' for none)")
    ap.add_argument("--quants", default="int8,int4-g32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2, help="timed repeats inside each measuring process")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--wasm", action="store_true", help="also runtime.wasm under Node (one thread)")
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--source", type=Path, help="compile this checkpoint or Hugging Face folder instead of --config's GPT")
    ap.add_argument("--llama-cpp", type=Path, metavar="GGUF", help="also time llama.cpp (one thread) on this GGUF")
    ap.add_argument("--work", type=Path, default=ROOT / "bench_out" / "prefill")
    ap.add_argument("--json", type=Path)
    # internal: the per-tree steps
    ap.add_argument("--prepare", nargs=3, metavar=("CKPT", "DIST", "QUANT"))
    ap.add_argument("--measure", nargs=2, metavar=("LIB", "DIST"))
    ap.add_argument("--measure-wasm", metavar="DIST")
    a = ap.parse_args()
    if a.prepare:
        print(json.dumps(prepare(Path(a.prepare[0]), Path(a.prepare[1]), a.prepare[2], a.wasm)))
        return
    if a.measure or a.measure_wasm:
        lib, dist = (a.measure[0], Path(a.measure[1])) if a.measure else ("", Path(a.measure_wasm))
        print(json.dumps(measure(lib, dist, a.prompt, a.steps, a.reps, bool(a.measure_wasm))))
        return

    a.work = a.work.resolve()  # the base tree runs its steps in its own folder
    a.work.mkdir(parents=True, exist_ok=True)
    ckpt = a.source.resolve() if a.source else a.work / "checkpoint.pt"
    if not ckpt.exists():
        make_checkpoint(ckpt, _config(a.config))
    llama = None
    if a.llama_cpp:
        from monologue_compile.peers import LlamaCpp

        llama = LlamaCpp(a.llama_cpp, a.llama_cpp.stem, 1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-prefill-"))
    trees = {"this": ROOT}
    if a.base:
        trees["base"] = base_tree(a.base, tmp / "base")
    threads = [int(t) for t in a.threads.split(",")]
    cpus = {t: ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:t]) for t in threads}
    from bench_peers import compiler_sources

    builds = {}
    for tree_name, tree in trees.items():
        for quant in a.quants.split(","):
            # (the base's dist is compiled afresh, and kept in --work for other benchmarks to time;
            # this tree's is kept for the same source, scheme and compiler only: a dist of another
            # --source once stood in for this one's)
            dist = a.work / f"{tree_name}-{quant}" / "dist"
            stamp, want = dist.parent / "made-from", f"{ckpt}\n{quant}\n{compiler_sources()}"
            if tree_name == "base" or not stamp.exists() or stamp.read_text() != want:
                shutil.rmtree(dist.parent, ignore_errors=True)
            try:
                r = _run(tree, ["--prepare", str(ckpt), str(dist), quant] + (["--wasm"] if a.wasm else []))
            except SystemExit as e:
                print(f"{tree_name} {quant}: not measured ({str(e).strip().splitlines()[-1][:160]})")
                continue
            stamp.write_text(want)
            builds[(tree_name, quant)] = (tree, r["lib"], dist)
    best: dict = {}
    common = ["--prompt", str(a.prompt), "--steps", str(a.steps), "--reps", str(a.reps)]
    for _ in range(a.rounds):
        for (tree_name, quant), (tree, lib, dist) in builds.items():
            for t in threads:
                r = _run(tree, ["--measure", lib, str(dist)] + common, cpus[t])
                for k, v in r.items():
                    key = (tree_name, quant, f"native-{t}t", k)
                    best[key] = max(best.get(key, 0.0), v)
            if a.wasm:
                r = _run(tree, ["--measure-wasm", str(dist)] + common, cpus[1])
                for k, v in r.items():
                    key = (tree_name, quant, "wasm", k)
                    best[key] = max(best.get(key, 0.0), v)
        if llama:
            every = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {min(every)})  # llama-bench inherits it, as our runs get taskset's
            try:
                pre, dec = llama.measure()  # llama-bench's own prompt 128 and 64 steps after it
            finally:
                os.sched_setaffinity(0, every)
            for k, v in (("prefill_tok_s", pre), ("decode_tok_s", dec)):
                best[("llama.cpp", "", "1t", k)] = max(best.get(("llama.cpp", "", "1t", k), 0.0), v)
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nmodel {a.source or a.config}; prompt {a.prompt}, decode {a.steps}; best of {a.rounds} interleaved rounds "
          f"x {a.reps}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    engines = [f"native-{t}t" for t in threads] + (["wasm"] if a.wasm else [])
    metrics = ("prefill_tok_s", "decode_tok_s", "prefill_tok_cpu_s", "decode_tok_cpu_s")
    print(f"{'quant':10}{'engine':11}{'metric':18}{'base':>9}{'this':>9}{'this/base':>11}")
    for quant in a.quants.split(","):
        for eng in engines:
            for metric in metrics:
                b, t = best.get(("base", quant, eng, metric)), best.get(("this", quant, eng, metric))
                if t is None:
                    continue
                ratio = f"{t / b:11.2f}" if b else f"{'-':>11}"
                print(f"{quant:10}{eng:11}{metric:18}{b or float('nan'):9.1f}{t:9.1f}{ratio}")
    ref = best.get(("llama.cpp", "", "1t", "decode_tok_s"))
    if ref:
        print(f"llama.cpp {a.llama_cpp.name}, 1 thread: prefill {best[('llama.cpp', '', '1t', 'prefill_tok_s')]:.1f}, "
              f"decode {ref:.1f} tok/s; decode (wall) as a ratio of it:")
        for (tree_name, quant, eng, metric), v in sorted(best.items()):
            if metric == "decode_tok_s" and tree_name != "llama.cpp":
                print(f"  {tree_name:5} {quant:10}{eng:11}{v:8.1f} tok/s {v / ref:6.2f}x")
    quants = a.quants.split(",")
    for q4 in [q for q in quants if q.startswith("int4")]:
        for eng in engines:
            for metric in metrics:
                n8, n4 = best.get(("this", "int8", eng, metric)), best.get(("this", q4, eng, metric))
                if n8 and n4:
                    print(f"{q4}/int8 {eng} {metric}: {n4 / n8:.2f}")
    if a.json:
        a.json.write_text(json.dumps([{"tree": k[0], "quant": k[1], "engine": k[2], "metric": k[3], "value": v}
                                      for k, v in sorted(best.items())], indent=1) + "\n")


if __name__ == "__main__":
    main()
