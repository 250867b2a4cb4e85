"""`monologue chat DIR --backend native|wasm`: the same conversation (two turns, greedy, the cache
carried between turns) prints the same text as the numpy interpreter backend."""

import shutil

import pytest
from click.testing import CliRunner

from conftest import tiny_model
from monologue_compile.backends.rust_crate import find_toolchain
from monologue_compile.cli import main
from monologue_compile.errors import MonologueError
from test_runtime_native_parity import compile_model, needs_cargo


def _wasm_ok() -> bool:
    try:
        find_toolchain(wasm=True)
    except MonologueError:
        return False
    return shutil.which("node") is not None


def _chat(dist, backend):
    r = CliRunner().invoke(main, ["chat", str(dist), "--backend", backend, "--prompt", "hi", "--prompt", "2+2?",
                                  "--max-tokens", "12"])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


@needs_cargo
def test_chat_backends_agree_with_numpy(tmp_path, monkeypatch):
    monkeypatch.setenv("MONOLOGUE_RUST_FAST", "1")  # the quicker (no LTO) builds the other tests share
    dist = compile_model(tmp_path, tiny_model())
    want = _chat(dist, "numpy")
    assert want.count("answer:") + want.count("thinking:") >= 2
    assert _chat(dist, "native") == want
    if _wasm_ok():
        assert _chat(dist, "wasm") == want
    else:
        pytest.skip("no wasm32 toolchain or Node: wasm backend not checked")
