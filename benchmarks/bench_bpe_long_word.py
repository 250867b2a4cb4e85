"""BPE time on one long word without spaces (10k, 100k and 1M characters), native (the Python
extension on PYTHONPATH) and wasm (the crate built for wasm32 with Debian's toolchain, run in Node).

    python benchmarks/bench_bpe_long_word.py [--crate runtime_rs] [--sizes 10000,100000,1000000]

A whole message pasted without spaces is one pre-tokenizer piece; tiktoken's merge loop rescans
every pair after each merge, quadratic in its length. Point --crate and PYTHONPATH at an older
checkout to measure the before column.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from monologue_compile.tokenizer import Tokenizer

NODE_TIMER = r"""
import fs from 'fs';
const [wasmPath, tokenizerPath, ...sizes] = process.argv.slice(2);
const { instance: { exports: w } } = await WebAssembly.instantiate(fs.readFileSync(wasmPath), {});
const put = (bytes) => {
  const p = w.mono_alloc(bytes.length);
  new Uint8Array(w.memory.buffer, p, bytes.length).set(bytes);
  return [p, bytes.length];
};
const out = w.mono_alloc(8);
const tokJson = new TextEncoder().encode(fs.readFileSync(tokenizerPath, 'utf8'));
if (w.mono_tokenizer_from_json(...put(tokJson), out) !== 0) throw new Error('load failed');
const tok = new Uint32Array(w.memory.buffer, out, 1)[0];
const result = {};
for (const size of sizes) {
  const text = fs.readFileSync(tokenizerPath + '.' + size, 'utf8');
  const [p, n] = put(new TextEncoder().encode(text));
  const t0 = performance.now();
  if (w.mono_tokenizer_encode_ordinary(tok, p, n, out, out + 4) !== 0) throw new Error('encode failed');
  result[size] = (performance.now() - t0) / 1000;
}
console.log(JSON.stringify(result));
"""


def long_word(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=n))


def build_wasm(crate: Path, work: Path) -> Path:
    copy = work / "runtime_rs"
    shutil.copytree(crate, copy, ignore=shutil.ignore_patterns("target"))
    env = {"PATH": "/usr/bin:/bin", "RUSTC": "/usr/bin/rustc", "CARGO_HOME": str(work / "cargo_home"), "HOME": str(work)}
    subprocess.run(["/usr/bin/cargo", "build", "--release", "--offline", "--target", "wasm32-unknown-unknown"],
                   cwd=copy, env=env, check=True, capture_output=True)
    return copy / "target/wasm32-unknown-unknown/release/runtime_rs.wasm"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--crate", type=Path, default=Path(__file__).resolve().parents[1] / "runtime_rs")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--no-wasm", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tok = Tokenizer.train([long_word(40, seed=i) + " " for i in range(1, 3001)], vocab_size=1024)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok_path = work / "tokenizer.json"
        tok.save(tok_path)
        native = {}
        for size in sizes:
            text = long_word(size)
            (work / f"tokenizer.json.{size}").write_text(text)
            started = time.thread_time()  # the encode runs on this thread; CPU time ignores load
            tok.encode_ordinary(text)
            native[size] = time.thread_time() - started
        wasm = {}
        if not args.no_wasm:
            wasm_path = build_wasm(args.crate, work)
            (work / "timer.mjs").write_text(NODE_TIMER)
            run = subprocess.run(["node", str(work / "timer.mjs"), str(wasm_path), str(tok_path), *map(str, sizes)],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                raise SystemExit(f"node failed: {run.stderr[-2000:]}")
            wasm = {int(k): v for k, v in json.loads(run.stdout).items()}
    print(f"{'chars':>9} {'native s':>10} {'wasm s':>10}   (native: thread CPU time; wasm: Node wall time)")
    for size in sizes:
        w = f"{wasm[size]:10.3f}" if size in wasm else f"{'-':>10}"
        print(f"{size:>9} {native[size]:10.3f} {w}")


if __name__ == "__main__":
    main()
