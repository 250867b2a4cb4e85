"""The demo model (runs/demo/checkpoint.pt, trained by `./run.sh`), when it exists: native and
runtime.wasm logits within tolerance of R_q and 64 greedy tokens identical to R_q's on held-out
conversations."""

import shutil
from pathlib import Path

import pytest

from monologue_compile.artifact import load_model
from monologue_compile.backends.native import NativeModel, WasmModel
from monologue_compile.backends.rust_crate import build_native, build_wasm, emit_crate, find_toolchain
from monologue_compile.driver import compile_to
from monologue_compile.errors import MonologueError
from monologue_compile.parity import TOLERANCES, held_out_sequences, metrics
from test_runtime_native_parity import greedy, needs_cargo, rq_model, shared_crate_dir, torch_logits

DEMO = Path(__file__).resolve().parent.parent / "runs" / "demo" / "checkpoint.pt"


@needs_cargo
@pytest.mark.skipif(not DEMO.exists(), reason="no runs/demo/checkpoint.pt (train it with ./run.sh)")
def test_demo_model_native_and_wasm_match_rq(tmp_path):
    compile_to(DEMO, tmp_path / "dist")
    dist = tmp_path / "dist"
    g, rq = rq_model(dist)
    _, _, tok_json = load_model(dist)
    cfg = g.meta["config"]
    seqs = held_out_sequences(tok_json, cfg["vocab_size"], cfg["sequence_len"], n=4)
    crate = emit_crate(g, shared_crate_dir())
    runtimes = [NativeModel.from_dist(dist, lib_path=build_native(crate, fast=True))]
    try:
        find_toolchain(wasm=True)
        if shutil.which("node"):
            build_wasm(crate, dist / "runtime.wasm", fast=True)
            runtimes.append(WasmModel.from_dist(dist))
    except MonologueError:
        pass
    for m in runtimes:
        for s in seqs:
            m.reset()
            r = metrics(m.forward(s), torch_logits(rq, s))
            assert r["rel"] <= TOLERANCES["logits_rel_vs_rq"] and r["cosine"] >= TOLERANCES["logits_cosine_vs_rq"], r
        prompt = seqs[0][:16]
        steps = min(TOLERANCES["greedy_steps"], cfg["sequence_len"] - len(prompt))
        m.reset()
        assert greedy(m, prompt, steps) == rq.generate(prompt, steps, temperature=0.0)
