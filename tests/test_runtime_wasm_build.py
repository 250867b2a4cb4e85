"""runtime_rs builds for wasm32-unknown-unknown with Debian's Rust 1.63 toolchain, offline, and
the module exports the C ABI the browser glue calls; its Rust unit tests pass on that toolchain."""

import shutil
import subprocess
from pathlib import Path

import pytest

from monologue_compile.resources import runtime_rs_dir

DEBIAN_CARGO = Path("/usr/bin/cargo")
DEBIAN_RUSTC = Path("/usr/bin/rustc")
WASM_STD = Path("/usr/lib/rustlib/wasm32-unknown-unknown")

pytestmark = pytest.mark.skipif(
    not (DEBIAN_CARGO.exists() and DEBIAN_RUSTC.exists() and WASM_STD.exists()),
    reason="Debian's rustc/cargo with libstd-rust-dev-wasm32 is not installed",
)


def debian_cargo(tmp_path, *args):
    """Run Debian's cargo on a fresh copy of the crate; returns (crate dir, completed process)."""
    crate = tmp_path / "runtime_rs"
    if not crate.exists():
        shutil.copytree(runtime_rs_dir(), crate, ignore=shutil.ignore_patterns("target"))
    env = {
        "PATH": "/usr/bin:/bin",  # Debian's toolchain, not rustup's
        "RUSTC": str(DEBIAN_RUSTC),
        "CARGO_HOME": str(tmp_path / "cargo_home"),
        "HOME": str(tmp_path),
    }
    result = subprocess.run([str(DEBIAN_CARGO), *args, "--offline", "--locked"], cwd=crate, env=env, capture_output=True, text=True)
    return crate, result


def test_builds_for_wasm32_with_rust_1_63(tmp_path):
    crate, result = debian_cargo(tmp_path, "build", "--release", "--target", "wasm32-unknown-unknown")
    assert result.returncode == 0, result.stderr[-3000:]
    wasm = (crate / "target/wasm32-unknown-unknown/release/runtime_rs.wasm").read_bytes()
    assert wasm[:4] == b"\0asm"
    for export in (b"mono_tokenizer_from_json", b"mono_tokenizer_encode", b"mono_render_for_completion", b"mono_alloc"):
        assert export in wasm


def test_unit_tests_pass_with_rust_1_63(tmp_path):
    _, result = debian_cargo(tmp_path, "test")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test result: ok" in result.stdout
