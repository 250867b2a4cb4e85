"""`monologue bench DIST --peers` where no peer is installed: one "could not run" line per peer,
and our own numbers beside PyTorch on the same weights (the peers are optional extras; CI has none)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from conftest import tiny_model, write_checkpoint

from monologue_compile.cli import main
from monologue_compile.driver import compile_to


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    d = tmp_path_factory.mktemp("peers")
    compile_to(write_checkpoint(d / "c.pt", tiny_model(seed=4, sequence_len=256)), d / "dist")
    return d / "dist"


def test_peers_without_peers_says_why_and_times_ours(dist, tmp_path, monkeypatch):
    monkeypatch.setenv("MONOLOGUE_LLAMA_CPP_BIN", str(tmp_path / "no-llama-cpp"))
    r = CliRunner().invoke(main, ["bench", str(dist), "--peers", "--no-rust", "--rounds", "2"])
    assert r.exit_code == 0, (r.output, r.exception)
    out = r.stdout
    assert "llama.cpp: could not run: it reads a Hugging Face folder" in out
    assert "ONNX Runtime: could not run: it reads a Hugging Face folder" in out
    assert "ours native int8, 1 thread: skipped" in out
    # PyTorch on DIST's dequantized weights, at 1 and 2 threads: best/median prefill and decode
    torch_rows = [line for line in out.splitlines() if line.startswith("PyTorch eager fp32 (R_q)")]
    assert len(torch_rows) == 2
    for line in torch_rows:
        pre_best, pre_med, dec_best, dec_med = map(float, re.findall(r"([\d.]+)/([\d.]+)", line)[0]
                                                   + re.findall(r"([\d.]+)/([\d.]+)", line)[1])
        assert pre_best >= pre_med > 0 and dec_best >= dec_med > 0, line
    # ours on the WGSL plan: numbers where there is an adapter, else one line saying why
    wgsl = [line for line in out.splitlines() if line.startswith("ours WGSL int8")]
    assert len(wgsl) == 1 and ("could not run:" in wgsl[0] or re.search(r"\d+/\d+", wgsl[0])), wgsl


def test_peers_with_a_folder_but_no_llama_cpp_names_what_is_missing(dist, tmp_path, monkeypatch):
    from monologue_compile import peers

    monkeypatch.setenv("MONOLOGUE_LLAMA_CPP_BIN", str(tmp_path / "no-llama-cpp"))
    monkeypatch.setattr(peers, "CACHE", tmp_path / "cache")  # converted forms of this folder stay in the test's dir
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    engines, failed = peers.peer_engines(folder, dist)
    assert any(line.startswith("llama.cpp: could not run: no llama-bench in") for line in failed), failed


def test_bytes_per_token_int8_is_a_quarter_of_fp32(dist):
    from monologue_compile import peers
    from monologue_compile.artifact import load_model
    from monologue_compile.frontend.load import build_module
    from monologue_compile.parity import rq_state_dict

    g, _, _ = load_model(dist)
    fp32 = peers.module_bytes_per_token(build_module("gpt", g.meta["config"], rq_state_dict(g)))
    int8 = peers.graph_bytes_per_token(g)
    # int8 weights + one f32 scale per output row against f32 weights: a little over a quarter
    assert 0.25 * fp32 < int8 < 0.35 * fp32, (int8, fp32)


def test_peers_refuses_a_folder_that_is_not_a_hf_model(dist, tmp_path):
    r = CliRunner().invoke(main, ["bench", str(dist), "--peers", "--no-rust", "--hf-folder", str(tmp_path)])
    assert r.exit_code == 2 and "not a Hugging Face model folder" in r.output and "Traceback" not in r.output
