"""`-o` never costs the user data: the compiler replaces only a previous output of its own (every
file listed in its manifest), or what --force names, and never a file, the input or the folder it
runs in."""

import os

import pytest
from click.testing import CliRunner

from monologue_compile.cli import main
from test_runtime_native_parity import needs_cargo


def _compile(ckpt, out, *extra, cwd=None):
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(main, ["compile", str(ckpt), "-o", str(out), "--no-wasm", *extra])
    finally:
        os.chdir(old)


def _refused(r, *words):
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _no_temporaries(folder):
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], list(folder.iterdir())


def test_folder_with_user_files_is_refused_and_kept(tmp_path, tiny_checkpoint):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    _refused(_compile(tiny_checkpoint, notes), "not a previous Monologue output", "--force")
    assert (notes / "todo.txt").read_text() == "mine"
    _no_temporaries(tmp_path)


def test_output_at_the_checkpoint_folder_is_refused(tmp_path, tiny_checkpoint):
    before = tiny_checkpoint.read_bytes()
    for out in (tmp_path, tiny_checkpoint):  # the folder holding the input, and the input itself
        _refused(_compile(tiny_checkpoint, out, "--force"), "input")
    assert tiny_checkpoint.read_bytes() == before


def test_output_at_a_file_is_refused_and_not_hidden(tmp_path, tiny_checkpoint):
    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF")
    _refused(_compile(tiny_checkpoint, report, "--force"), "is a file")
    assert report.read_bytes() == b"%PDF"
    _no_temporaries(tmp_path)


def test_output_dot_is_one_line(tmp_path, tiny_checkpoint):
    work = tmp_path / "work"
    work.mkdir()
    (work / "x.txt").write_text("x")
    _refused(_compile(tiny_checkpoint, ".", "--force", cwd=work), "current folder")
    _refused(_compile(tiny_checkpoint, "..", cwd=work))  # holds the checkpoint too: either reason
    assert (work / "x.txt").read_text() == "x"


def test_unwritable_output_is_one_line(tmp_path, tiny_checkpoint):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root, who writes anywhere")
        _refused(_compile(tiny_checkpoint, parent / "dist"), "cannot write")
    finally:
        parent.chmod(0o700)


def test_previous_output_is_replaced_but_not_with_a_user_file_inside(tmp_path, tiny_checkpoint):
    out = tmp_path / "dist"
    assert _compile(tiny_checkpoint, out).exit_code == 0
    assert _compile(tiny_checkpoint, out).exit_code == 0  # a previous output: replaced
    (out / "parity.md").write_text("a report verify wrote")  # written by `verify`: still ours
    assert _compile(tiny_checkpoint, out).exit_code == 0
    (out / "model" / "my-notes.md").write_text("mine")
    _refused(_compile(tiny_checkpoint, out), "model/my-notes.md")
    assert (out / "model" / "my-notes.md").read_text() == "mine"
    r = _compile(tiny_checkpoint, out, "--force")
    assert r.exit_code == 0, r.output
    assert not (out / "model" / "my-notes.md").exists()
    _no_temporaries(tmp_path)


def test_manifest_lists_every_site_file_with_its_hash(tmp_path, tiny_checkpoint):
    import json

    from monologue_compile.files import sha256_file

    out = tmp_path / "dist"
    assert _compile(tiny_checkpoint, out).exit_code == 0
    site = json.loads((out / "model" / "manifest.json").read_text())["site"]
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert [f["path"] for f in site] == [p for p in on_disk if p != "model/manifest.json"]
    assert any(f["path"].startswith("runtime_rs/src/") for f in site)
    for f in site:
        assert f["sha256"] == sha256_file(out / f["path"]) and f["bytes"] == (out / f["path"]).stat().st_size


@needs_cargo
def test_chat_native_never_builds_the_dists_crate(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MONOLOGUE_RUST_FAST", "1")
    dist = tmp_path / "dist"
    assert _compile(tiny_checkpoint, dist).exit_code == 0
    marker = tmp_path / "build-rs-ran"
    # what a hostile site would ship: a build script cargo runs as the user
    (dist / "runtime_rs" / "build.rs").write_text(
        f'fn main() {{ std::fs::write({str(marker)!r}, "pwned").unwrap(); }}\n'.replace("'", '"'))
    r = CliRunner().invoke(main, ["chat", str(dist), "--backend", "native", "--prompt", "hi", "--max-tokens", "3"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert not marker.exists()
