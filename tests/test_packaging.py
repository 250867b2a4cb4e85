"""The wheel installs only `monologue_compile` (its resources inside it), and the compiler run from
an unpacked wheel finds its templates, page and crate sources there; `monologue train/eval/data`
without the repository's training/ package say so in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, tiny_model, write_checkpoint
from monologue_compile import parity

RESOURCES = ("templates/wgsl/norm.wgsl.j2", "web_shell/index.html", "runtime_rs/Cargo.toml", "runtime_rs/build.rs",
             "runtime_rs/src/lib.rs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel .` of this checkout (with the installed maturin: no download of build requirements)."""
    pytest.importorskip("maturin")
    if shutil.which("cargo") is None:
        pytest.skip("no cargo to build the wheel's Rust extension")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, capture_output=True, timeout=600)
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def unpacked(wheel, tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("site")
    zipfile.ZipFile(wheel).extractall(where)
    return where


def _run(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The unpacked wheel first on the path (not this checkout), run outside the repository."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_holds_only_monologue_compile_at_top(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert len(top) == 2 and "monologue_compile" in top and any(t.endswith(".dist-info") for t in top), top
    for r in RESOURCES:
        assert f"monologue_compile/_resources/{r}" in names
    assert not any("/target/" in n for n in names), "cargo build output in the wheel"
    assert not any(n.startswith("monologue_compile/_resources/runtime_rs/src/model_gen") for n in names)


def test_unpacked_wheel_compiles_from_its_own_resources(unpacked, tmp_path):
    found = _run(unpacked, "-c", "from monologue_compile import resources as r; "
                 "print(r.templates_dir(), r.web_shell_dir(), r.runtime_rs_dir(), sep='\\n')", cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    for line in found.stdout.split():
        assert Path(line).is_relative_to(unpacked), line
    ops = _run(unpacked, "-m", "monologue_compile", "ops", cwd=tmp_path)
    assert ops.returncode == 0 and "rms_norm" in ops.stdout, ops.stderr
    ckpt = write_checkpoint(tmp_path / "ckpt.pt", tiny_model())
    out = _run(unpacked, "-m", "monologue_compile", "compile", str(ckpt), "-o", str(tmp_path / "dist"), "--no-wasm",
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "dist" / "index.html").is_file()
    assert (tmp_path / "dist" / "runtime_rs" / "src" / "model_gen.rs").is_file()


HIDE_TRAINING = "import sys; sys.modules['training'] = None; from monologue_compile.cli import main; main()"


@pytest.mark.parametrize("args", [["train", "--preset", "demo", "--out", "x"], ["eval", "ckpt.pt"],
                                  ["data", "prepare", "--out", "x"]])
def test_training_commands_without_training_package_say_they_need_the_checkout(args, tmp_path):
    r = subprocess.run([sys.executable, "-c", HIDE_TRAINING, *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "repository checkout" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


def test_compiler_commands_work_without_training_package(tmp_path):
    r = subprocess.run([sys.executable, "-c", HIDE_TRAINING, "ops"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "rms_norm" in r.stdout, r.stderr


def test_eval_check_skipped_with_reason_without_training_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "training.evaluate", None)
    check = parity._eval_accuracy(None, None, "{}", 5)
    assert check["ok"] and "repository checkout" in check["skipped"]
