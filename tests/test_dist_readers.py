"""Reading a compiled site on the host (`monologue chat`, `verify`, the native runner) stays inside
the site: no absolute paths, no symlinks or `..` out of it, regular files only, sizes checked against
the manifest before reading; a malformed manifest is one line, exit code 2."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import tiny_model, write_checkpoint
from monologue_compile.cli import main
from monologue_compile.driver import compile_to


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    d = tmp_path_factory.mktemp("site")
    compile_to(write_checkpoint(d / "c.pt", tiny_model()), d / "dist")
    return d / "dist"


@pytest.fixture
def dist(compiled, tmp_path):
    return shutil.copytree(compiled, tmp_path / "dist")


def _manifest(dist):
    return json.loads((dist / "model" / "manifest.json").read_text())


def _set_manifest(dist, m):
    (dist / "model" / "manifest.json").write_text(json.dumps(m))


def _chat_refuses(dist, *words):
    r = CliRunner().invoke(main, ["chat", str(dist), "--prompt", "hi", "--max-tokens", "2"])
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _repoint_shard(dist, new_path):
    m = _manifest(dist)
    m["weights"]["shards"] = [new_path]
    for f in m["files"]:
        if f["path"] == "weights-00.bin":
            f["path"] = new_path
    _set_manifest(dist, m)


def test_the_untouched_site_chats(dist):
    r = CliRunner().invoke(main, ["chat", str(dist), "--prompt", "hi", "--max-tokens", "2"])
    assert r.exit_code == 0, (r.output, r.exception)


def test_absolute_shard_path_outside_is_refused(dist, tmp_path):
    outside = tmp_path / "elsewhere.bin"
    shutil.copyfile(dist / "model" / "weights-00.bin", outside)  # same bytes: the sha256 would match
    _repoint_shard(dist, str(outside))
    _chat_refuses(dist, "not a relative path")


def test_dotdot_shard_path_out_of_the_site_is_refused(dist, tmp_path):
    shutil.copyfile(dist / "model" / "weights-00.bin", tmp_path / "up.bin")
    _repoint_shard(dist, "../../up.bin")
    _chat_refuses(dist, "leaves the site")


def test_symlinked_shard_is_refused(dist, tmp_path):
    outside = tmp_path / "elsewhere.bin"
    shard = dist / "model" / "weights-00.bin"
    shutil.move(shard, outside)
    shard.symlink_to(outside)
    _chat_refuses(dist, "not a regular file")


def test_fifo_shard_is_refused_without_waiting(dist):
    shard = dist / "model" / "weights-00.bin"
    shard.unlink()
    os.mkfifo(shard)
    # in a subprocess: opening a FIFO blocks until a writer comes, which would hang this test run
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "chat", str(dist), "--prompt", "hi"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not a regular file" in r.stderr, r.stderr


def test_size_is_checked_before_reading(dist):
    m = _manifest(dist)
    next(f for f in m["files"] if f["path"] == "weights-00.bin")["bytes"] += 1
    _set_manifest(dist, m)
    _chat_refuses(dist, "the manifest says")


@pytest.mark.parametrize("mutate", [
    lambda m: m.update(files="x"),
    lambda m: m.update(files=[{"path": 3, "bytes": 1, "sha256": "0"}]),
    lambda m: m["files"][0].update(bytes=float("nan")),
    lambda m: m.update(weights={"shards": "weights-00.bin", "tensors": {}}),
    lambda m: m.update(tokenizer="/etc/passwd"),
    lambda m: m["weights"]["tensors"].update(bogus={"dtype": "f32", "arrays": {"data": {"chunks": [{"shard": 9}]}}}),
])
def test_malformed_manifest_is_one_line(dist, mutate):
    m = _manifest(dist)
    mutate(m)
    _set_manifest(dist, m)
    _chat_refuses(dist, "manifest.json")


def test_deeply_nested_or_binary_manifest(dist):
    (dist / "model" / "manifest.json").write_bytes(b"[" * 200000)
    _chat_refuses(dist, "manifest.json")
    (dist / "model" / "manifest.json").write_bytes(b"\xff\xfe{")
    _chat_refuses(dist, "manifest.json")
