"""The native Rust runtime (generated model code + kernels, driven through the C ABI) against R_q
on the tiny-model matrix: logits within the parity tolerances, decode with the cache equal to
prefill, prefill across chunk boundaries, and 64 greedy tokens identical to R_q's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_model, write_checkpoint
from monologue_compile.artifact import load_model
from monologue_compile.backends.native import NativeModel
from monologue_compile.backends.rust_crate import build_native, emit_crate, find_toolchain
from monologue_compile.driver import compile_to
from monologue_compile.errors import MonologueError
from monologue_compile.frontend.load import build_module
from monologue_compile.interpreter import Session
from monologue_compile.parity import TOLERANCES, metrics, rq_state_dict

try:
    find_toolchain(wasm=False)
    HAVE_CARGO = True
except MonologueError:
    HAVE_CARGO = False

needs_cargo = pytest.mark.skipif(not HAVE_CARGO, reason="no Rust toolchain (cargo)")

# Same knobs as tests/test_parity_matrix.py: every GPTConfig option and quantization scheme.
MATRIX = [
    (dict(), "int8"),
    (dict(tie_embeddings=True, n_kv_head=1, activation="gelu", softcap=0.0), "int8"),
    (dict(activation="silu", qk_norm=False, rope_theta=100000.0, n_kv_head=4, mlp_ratio=2.5), "int8"),
    (dict(n_embd=64, n_head=2, n_kv_head=1, n_layer=3), "int8-g64"),
    # an MLP 2560 wide: its projection's rows span two column tiles of the blocked layout
    (dict(n_embd=64, n_head=2, n_kv_head=1, n_layer=2, mlp_ratio=40.0), "int8"),
    (dict(n_embd=64, n_head=4, n_kv_head=2, tie_embeddings=True), "int8-g128"),
    (dict(activation="gelu", n_kv_head=2), "none"),
    (dict(), "int4-g32"),
    # int4 rows over two column tiles, a tied table kept int8
    (dict(n_embd=64, n_head=2, n_kv_head=1, n_layer=2, mlp_ratio=40.0, tie_embeddings=True), "int4-g64"),
    # the tied table at 4 bits: the logits from int4 rows, the embedding gathered from them
    (dict(tie_embeddings=True, n_kv_head=1), "int4-g32-all"),
    (dict(n_kv_head=1), "int4-g64-all"),  # an untied table at 4 bits, gathered only
]


def compile_model(tmp: Path, model, quant: str = "int8") -> Path:
    """checkpoint -> DIR (the real compiler)."""
    ck = write_checkpoint(tmp / "checkpoint.pt", model)
    out = tmp / "dist"
    compile_to(ck, out, quant=quant)
    return out


def native_for(dist: Path, crate_dir: Path) -> NativeModel:
    """Emit DIST's crate into a shared crate dir (incremental rebuilds stay fast) and load it."""
    g, _, _ = load_model(dist)
    emit_crate(g, crate_dir)
    return NativeModel.from_dist(dist, lib_path=build_native(crate_dir, fast=True))


def rq_model(dist: Path):
    g, _, _ = load_model(dist)
    return g, build_module(g.meta.get("arch", "gpt"), g.meta["config"], rq_state_dict(g)).eval()


def torch_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].float().numpy()


def greedy(m, prompt, steps) -> list[int]:
    logits = m.forward(prompt)[-1]
    out = []
    for _ in range(steps):
        t = int(np.argmax(logits))
        out.append(t)
        if len(prompt) + len(out) >= m.max_len:
            break
        logits = m.forward([t])[-1]
    return out


_SHARED: list[Path] = []


def shared_crate_dir() -> Path:
    """One crate dir for every native build of the test session: each model's crate is emitted
    over the previous one, so cargo's incremental build only recompiles the generated code."""
    if not _SHARED:
        import atexit
        import shutil
        import tempfile

        d = Path(tempfile.mkdtemp(prefix="monologue-test-crate-"))
        atexit.register(shutil.rmtree, d, True)
        _SHARED.append(d / "runtime_rs")
    return _SHARED[0]


@pytest.fixture(scope="module")
def crate_dir():
    return shared_crate_dir()


@needs_cargo
@pytest.mark.parametrize("overrides,quant", MATRIX, ids=[f"{q}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}"
                                                         for o, q in MATRIX])
def test_native_matches_rq(tmp_path, crate_dir, overrides, quant):
    model = tiny_model(seed=len(overrides), **overrides)
    dist = compile_model(tmp_path, model, quant)
    native = native_for(dist, crate_dir)
    g, rq = rq_model(dist)
    rng = np.random.default_rng(len(overrides))
    vocab, seq_len = g.meta["config"]["vocab_size"], g.meta["config"]["sequence_len"]

    # logits vs R_q (80 tokens: two prefill chunks of 64 + 16) and vs the interpreter
    for n in (80, 9):
        ids = rng.integers(0, vocab, size=n).tolist()
        native.reset()
        ours = native.forward(ids)
        m = metrics(ours, torch_logits(rq, ids))
        assert m["rel"] <= TOLERANCES["logits_rel_vs_rq"] and m["cosine"] >= TOLERANCES["logits_cosine_vs_rq"], m
        mi = metrics(ours, Session(g).forward(ids))
        assert mi["rel"] <= TOLERANCES["decode_vs_prefill_rel"], mi
        # the last row alone (prefill runs the output tail for that token only): the same bits
        native.reset()
        last = native.forward(ids, all_rows=False)
        assert last.shape == (1, vocab) and np.array_equal(last[0], ours[-1])

    # decode step by step with the cache == prefill of the whole sequence
    ids = rng.integers(0, vocab, size=40).tolist()
    native.reset()
    whole = native.forward(ids)
    native.reset()
    parts = [native.forward(ids[:17])] + [native.forward([t]) for t in ids[17:]]
    assert native.pos == len(ids)
    m = metrics(np.concatenate(parts), whole)
    assert m["rel"] <= TOLERANCES["decode_vs_prefill_rel"], m

    # greedy tokens identical to R_q's own generate (its KV cache) for 64 steps
    prompt = ids[:8]
    steps = min(TOLERANCES["greedy_steps"], seq_len - 8)
    native.reset()
    ours = greedy(native, prompt, steps)
    theirs = rq.generate(prompt, steps, temperature=0.0)
    assert len(ours) == TOLERANCES["greedy_steps"]
    assert ours == theirs


@needs_cargo
def test_emitted_crate_builds_with_plain_cargo(tmp_path, crate_dir):
    """DIST/runtime_rs is a normal crate: `cargo build --offline --release` in it works."""
    import subprocess

    dist = compile_model(tmp_path, tiny_model())
    g, _, _ = load_model(dist)
    crate = emit_crate(g, dist / "runtime_rs")
    src = (crate / "src" / "model_gen.rs").read_text()
    assert src.startswith("// Generated by monologue_compile/backends/rust_crate.py")
    assert src.count("k::matmul(") == 4 * 2 + 1  # qkv, c_proj, c_fc, mlp c_proj per layer + lm_head
    assert "k::attention(" in src and "k::rope(" in src
    tc = find_toolchain(wasm=False)
    r = subprocess.run([tc.cargo, "check", "--offline", "--release", "--target-dir", str(tmp_path / "target")],
                       cwd=crate, capture_output=True, text=True, env=tc.env())
    assert r.returncode == 0, r.stderr[-3000:]


@needs_cargo
def test_the_kernel_sets_give_the_same_tokens(tmp_path, crate_dir):
    """The runtime names the int8 kernel set it picked (on x86: AMX's prefill or VNNI where the CPU
    and compiler have them, else AVX2), MONOLOGUE_X86_KERNELS caps it (at avx2; at avx512-vnni
    where AMX was picked), and the sets give the same greedy tokens (a 20-token prompt: prefill
    takes AMX from 8)."""
    import json
    import os
    import subprocess
    import sys

    dist = compile_model(tmp_path, tiny_model(seed=3))
    m = native_for(dist, crate_dir)
    lib = build_native(crate_dir, fast=True)
    prompt = [5, 9, 2, 7, 11, 3, 8, 1, 4, 6, 10, 12, 5, 2, 9, 7, 3, 11, 1, 8]
    picked, tokens = m.info()["kernels"], greedy(m, prompt, 12)
    assert picked in ("avx512-vnni+amx", "avx512-vnni", "avx-vnni", "avx2", "scalar")
    code = ("import json, sys; from monologue_compile.backends.native import NativeModel; "
            "from test_runtime_native_parity import greedy; "
            "m = NativeModel.from_dist(sys.argv[1], lib_path=sys.argv[2]); "
            "print(json.dumps([m.info()['kernels'], greedy(m, json.loads(sys.argv[3]), 12)]))")
    for cap in ["avx2"] + (["avx512-vnni"] if "amx" in picked else []):
        r = subprocess.run([sys.executable, "-c", code, str(dist), str(lib), json.dumps(prompt)], capture_output=True,
                           text=True, cwd=Path(__file__).parent, env=dict(os.environ, MONOLOGUE_X86_KERNELS=cap))
        assert r.returncode == 0, r.stderr[-2000:]
        capped, capped_tokens = json.loads(r.stdout.splitlines()[-1])
        assert capped == ("scalar" if picked == "scalar" else cap)
        assert capped_tokens == tokens, cap


@needs_cargo
def test_bench_names_the_kernel_set_it_timed(tmp_path, monkeypatch):
    """`monologue bench DIST`'s native row says which int8 kernels ran (numbers differ by set)."""
    from click.testing import CliRunner

    from monologue_compile.cli import main

    monkeypatch.setenv("MONOLOGUE_RUST_FAST", "1")
    dist = compile_model(tmp_path, tiny_model(seed=5))
    r = CliRunner().invoke(main, ["bench", str(dist), "--no-wasm", "--steps", "4"])
    assert r.exit_code == 0, (r.output, r.exception)
    native = [line for line in r.stdout.splitlines() if line.startswith("native ")]
    assert len(native) == 1 and any(f"{k} kernels" in native[0] for k in ("avx512-vnni+amx", "avx512-vnni", "avx-vnni", "avx2", "scalar")), native
