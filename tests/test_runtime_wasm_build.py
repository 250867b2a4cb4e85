"""runtime_rs builds for wasm32-unknown-unknown with Debian's Rust 1.63 toolchain, offline, and
the module exports the C ABI the browser glue calls."""

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


def test_builds_for_wasm32_with_rust_1_63(tmp_path):
    crate = tmp_path / "runtime_rs"
    shutil.copytree(runtime_rs_dir(), crate, ignore=shutil.ignore_patterns("target"))
    env = {
        "PATH": "/usr/bin:/bin",  # Debian's toolchain, not rustup's
        "RUSTC": str(DEBIAN_RUSTC),
        "CARGO_HOME": str(tmp_path / "cargo_home"),
        "HOME": str(tmp_path),
    }
    result = subprocess.run(
        [str(DEBIAN_CARGO), "build", "--offline", "--locked", "--release", "--target", "wasm32-unknown-unknown"],
        cwd=crate,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    wasm = (crate / "target/wasm32-unknown-unknown/release/runtime_rs.wasm").read_bytes()
    assert wasm[:4] == b"\0asm"
    for export in (b"mono_tokenizer_from_json", b"mono_tokenizer_encode", b"mono_render_for_completion", b"mono_alloc"):
        assert export in wasm
