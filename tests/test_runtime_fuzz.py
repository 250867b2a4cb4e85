"""Hostile inputs through the native runtime's loader (benchmarks/fuzz_runtime.py, in a child
process so a crash would show as its death): ~300 mutated/truncated shards, manifests and
tokenizer files on a model spread over several shards. Zero crashes, zero caught panics, every
must-reject mutation rejected with status 1; a harmless byte flip may load, with unchanged logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import tiny_model
from monologue_compile.artifact import load_model, write_model
from monologue_compile.backends.native import NativeModel
from monologue_compile.backends.rust_crate import build_native, emit_crate
from test_runtime_native_parity import compile_model, needs_cargo

ROOT = Path(__file__).resolve().parent.parent


@needs_cargo
def test_fuzzed_inputs_are_rejected_without_crashing(tmp_path):
    dist = compile_model(tmp_path, tiny_model())
    g, manifest, tok = load_model(dist)
    lib = build_native(emit_crate(g, tmp_path / "runtime_rs"), fast=True)
    # rewrite with small shards: tensors split across shards, several shards to check
    small = tmp_path / "small"
    extra = {k: manifest[k] for k in ("compiler", "model", "special_tokens")}
    write_model(g, small / "model", tok, extra, shard_max=20000)
    m = json.loads((small / "model" / "manifest.json").read_text())
    assert len(m["weights"]["shards"]) >= 3
    assert NativeModel.from_dist(small, lib_path=lib).forward([1, 2, 3]).shape == (3, 288)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuzz_runtime.py"), str(small), "--count", "300",
                        "--seed", "11", "--lib", str(lib)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert stats["cases"] == 300
    assert stats["panics"] == 0 and stats["must_reject_accepted"] == 0, stats["failures"]
    assert stats["accepted_different"] == 0, stats
    assert stats["rejected"] + stats["accepted_same_logits"] == 300
    assert stats["rejected"] >= 270  # nearly every case is a must-reject one
    assert len(stats["by_kind"]) == 12
