"""The Rust backend's build plumbing: `monologue build-runtime` (with --no-wasm), the message when no
wasm32 toolchain exists, a model the runtime cannot run failing before anything is written, and
runtime.wasm's size and exports."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from conftest import tiny_model
from monologue_compile.artifact import load_model
from monologue_compile.backends import rust_crate
from monologue_compile.backends.rust_crate import CodegenError, emit_crate, find_toolchain
from monologue_compile.cli import main
from monologue_compile.errors import MonologueError
from monologue_compile.resources import runtime_rs_dir
from test_runtime_native_parity import compile_model, needs_cargo


def test_no_wasm_toolchain_says_what_to_install(monkeypatch):
    monkeypatch.setattr(rust_crate, "_has_wasm_std", lambda rustc: False)
    with pytest.raises(MonologueError) as e:
        find_toolchain(wasm=True)
    msg = str(e.value)
    assert "libstd-rust-dev-wasm32" in msg and "rustup target add wasm32-unknown-unknown" in msg and "--no-wasm" in msg
    assert "\n" not in msg  # one line, as every user error


def test_unsupported_op_fails_before_writing(tmp_path, monkeypatch):
    from monologue_compile.backends import rust_crate

    dist = compile_model(tmp_path, tiny_model())
    g, _, _ = load_model(dist)
    att = next(n for n in g.nodes if n.op == "attention")
    att.attrs["layout"] = "BHTD"
    with pytest.raises(CodegenError, match=att.name):
        emit_crate(g, tmp_path / "crate")
    assert not (tmp_path / "crate").exists()
    # every IR op has a Rust kernel now: take one away, as a new op would arrive without one
    g, _, _ = load_model(dist)
    monkeypatch.delitem(rust_crate.KERNELS, "rope")
    with pytest.raises(CodegenError, match="op 'rope' has no kernel in the Rust runtime"):
        emit_crate(g, tmp_path / "crate")
    assert not (tmp_path / "crate").exists()


@needs_cargo
def test_build_runtime_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MONOLOGUE_RUST_FAST", "1")
    dist = compile_model(tmp_path, tiny_model())
    r = CliRunner().invoke(main, ["build-runtime", str(dist), "--no-wasm"])
    assert r.exit_code == 0, r.output
    assert (dist / "runtime_rs" / "src" / "model_gen.rs").exists() and not (dist / "runtime.wasm").exists()
    assert not (dist / "runtime_rs" / "target").exists()  # build output stays out of the static site
    try:
        find_toolchain(wasm=True)
    except MonologueError:
        pytest.skip("no wasm32 toolchain")
    # a downloaded site's build script and cargo config (a rustc wrapper) must not run
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.sh"
    evil.write_text(f'#!/bin/sh\ntouch {marker}\nexec "$@"\n')
    evil.chmod(0o755)
    (dist / ".cargo").mkdir()
    (dist / ".cargo" / "config.toml").write_text(f'[build]\nrustc-wrapper = "{evil}"\n')
    (dist / "runtime_rs" / "build.rs").write_text(f'fn main() {{ std::fs::write("{marker}", "").unwrap(); }}\n')
    r = CliRunner().invoke(main, ["build-runtime", str(dist)])
    assert r.exit_code == 0, r.output
    # the crate written back is the package's own: its build.rs (rustc's version) replaced the site's
    assert not marker.exists()
    assert (dist / "runtime_rs" / "build.rs").read_text() == (runtime_rs_dir() / "build.rs").read_text()
    wasm = (dist / "runtime.wasm").read_bytes()
    assert wasm[:4] == b"\0asm" and len(wasm) <= 1_000_000  # the goal: at most 1 MB without weights
    for export in (b"mono_model_new", b"mono_model_forward", b"mono_chat_step", b"mono_tokenizer_from_json",
                   b"mono_alloc", b"memory"):
        assert export in wasm
