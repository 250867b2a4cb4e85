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


def test_each_round_but_the_last_logs_the_table_so_far_and_a_crashing_engine_is_a_row():
    """A long run cut short (the 0.5B model takes many minutes a round) still leaves its numbers."""
    from monologue_compile import peers

    class Fake(peers.Engine):
        def __init__(self, name, speeds):
            self.name, self.speeds = name, iter(speeds)

        def measure(self):
            return next(self.speeds)

    class Crash(peers.Engine):
        name = "crashes"

        def measure(self):
            raise RuntimeError("segfault in round one")

    logged = []
    text, numbers = peers.compare([Fake("steady", [(100.0, 10.0), (300.0, 30.0), (200.0, 20.0)]), Crash()], [],
                                  3, "fakes", logged.append)
    partial = [m for m in logged if m.startswith("table after")]
    assert [m.splitlines()[0] for m in partial] == ["table after 1 of 3 rounds:", "table after 2 of 3 rounds:"]
    assert "steady" in partial[0] and "100" in partial[0] and "300" not in partial[0]
    steady, crashed = numbers["rows"]
    assert (steady["decode_best"], steady["decode_median"], steady["runs"]) == (30.0, 20.0, 3)
    assert "segfault in round one" in crashed["error"] and "segfault in round one" in text


def test_the_roofline_bandwidth_is_the_best_copy_before_a_round(monkeypatch):
    """A copy timed while another engine still starts up reads low; the best round's stands."""
    from monologue_compile import peers

    class Fake(peers.Engine):
        name, bytes_per_token = "steady", 10**9

        def measure(self):
            return 100.0, 10.0

    copies = iter([5e9, 20e9, 10e9])
    monkeypatch.setattr(peers, "memcpy_bandwidth", lambda: next(copies))
    text, numbers = peers.compare([Fake()], [], 3)
    assert numbers["bandwidth_bytes_s"] == 20e9
    assert "memcpy bandwidth 20.0 GB/s" in text and "50%" in text  # 10 tok/s x 1 GB of 20 GB/s


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


def test_a_weights_bytes_are_the_bytes_the_artifact_stores_int4_packed(tmp_path):
    """The MB/tok and roofline columns: an int4 weight streams half a byte per value, as stored."""
    import json

    from monologue_compile.artifact import load_model

    dist = tmp_path / "dist"
    compile_to(write_checkpoint(tmp_path / "c.pt", tiny_model(seed=4, sequence_len=256)), dist, quant="int4-g32")
    g, _, _ = load_model(dist)
    tensors = json.loads((dist / "model" / "manifest.json").read_text())["weights"]["tensors"]
    int4 = [name for name, w in g.weights.items() if (w.quant or {}).get("bits") == 4]
    assert int4
    for name, w in g.weights.items():
        stored = sum(c["nbytes"] for a in tensors[name]["arrays"].values() for c in a["chunks"])
        assert w.nbytes() == stored, name


def test_peers_refuses_a_folder_that_is_not_a_hf_model(dist, tmp_path):
    r = CliRunner().invoke(main, ["bench", str(dist), "--peers", "--no-rust", "--hf-folder", str(tmp_path)])
    assert r.exit_code == 2 and "not a Hugging Face model folder" in r.output and "Traceback" not in r.output


def test_onnx_export_in_transformers_js_layout_matches_pytorch_over_prefill_and_decode(tmp_path, monkeypatch):
    """The graph ONNX Runtime times and transformers.js loads: its names, and the last row's logits
    of a prefill and of two decode steps through its own present -> past cache, against the model."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (a peers extra)")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (a peers extra)")
    import numpy as np
    import torch
    import transformers

    from monologue_compile import peers

    monkeypatch.setattr(peers, "CACHE", tmp_path / "cache")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.save_pretrained(tmp_path / "hf")
    out = peers.onnx_folder(tmp_path / "hf")
    assert (out / "config.json").exists()
    assert all((out / "onnx" / f"model{s}.onnx").exists() for s in ("_quantized", "_q4"))
    ids = [5, 90, 17, 3, 42, 11, 12]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    for graph in ("model", "model_quantized", "model_q4"):  # fp32, transformers.js's "q8" and "q4"
        s = ort.InferenceSession(str(out / "onnx" / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
        past = [i.name for i in s.get_inputs()][2:]
        assert [i.name for i in s.get_inputs()][:2] == ["input_ids", "position_ids"]
        assert past == [f"past_key_values.{i // 2}.{'value' if i % 2 else 'key'}" for i in range(4)]
        assert [o.name for o in s.get_outputs()] == ["logits"] + [p.replace("past_key_values", "present") for p in past]
        cache = {p: np.zeros((1, 2, 0, 8), np.float32) for p in past}
        for start, end in ((0, 5), (5, 6), (6, 7)):  # the prompt, then one token at a time
            o = s.run(None, {"input_ids": np.array([ids[start:end]]), "position_ids": np.arange(start, end)[None], **cache})
            assert o[0].shape == (1, 1, 96)
            if graph == "model":
                np.testing.assert_allclose(o[0][0, -1], ref[end - 1], atol=1e-4)
            else:  # quantized weights: the same logits up to their rounding
                assert np.corrcoef(o[0][0, -1], ref[end - 1])[0, 1] > 0.95, graph
            cache = dict(zip(past, o[1:]))


@pytest.mark.parametrize("picked,capped", [("avx2", []), ("avx-vnni", ["AVX2"]), ("avx512-vnni", ["AVX2"]),
                                           ("avx512-vnni+amx", ["AVX2", "AVX-512 VNNI"])])
def test_a_capped_kernel_row_runs_only_below_the_runtimes_own_pick(dist, monkeypatch, picked, capped):
    """The rows that show what VNNI and AMX give, capped by MONOLOGUE_X86_KERNELS: on a CPU whose best
    set is the cap itself there is no row and no line (it would be the row above again)."""
    from monologue_compile import peers

    class FakeNative(peers.Engine):
        def __init__(self, dist, g, threads, name, kernels=None):
            self.name, self.threads, self.kernels = name, threads, kernels or picked

    monkeypatch.setattr(peers, "Native", FakeNative)
    engines, failed = peers.our_engines(dist, wasm=False, wgsl=False)
    assert [e.name for e in engines][:2] == ["ours native int8"] * 2
    assert [e.name.split("int8 ")[1] for e in engines[2:]] == [f"{c} kernels" for c in capped]
    assert [e.kernels for e in engines[2:]] == [{"AVX2": "avx2", "AVX-512 VNNI": "avx512-vnni"}[c] for c in capped]
    assert not [line for line in failed if "kernels" in line], failed


def test_the_ratio_columns_find_their_reference_by_whole_name_or_before_a_note():
    """bench_browser_peers names its references whole, parentheses included ("llama.cpp Q8_0 (native)",
    one of several "ours wasm int8 (Chromium, LABEL)"); bench_peers by the name before a note that a
    row may carry ("llama.cpp Q8_0 (--repack 0: ..)")."""
    from monologue_compile import peers

    def row(engine, decode, threads=1):
        return {"engine": engine, "threads": threads, "prefill_best": 2 * decode, "prefill_median": 2 * decode,
                "decode_best": decode, "decode_median": decode, "bytes_per_token": 1e6}

    def column(out, engine):
        return next(line for line in out.splitlines() if line.startswith(engine + " ")).split()

    rows = [row("ours wasm int8 (Chromium, main)", 100.0), row("ours wasm int8 (Chromium, this)", 150.0),
            row("llama.cpp Q8_0 (native)", 200.0)]
    ratios = (("dec/wasm", "ours wasm int8 (Chromium, main)", "decode_best"),
              ("dec/Q8", "llama.cpp Q8_0 (native)", "decode_best"))
    out = peers.table(rows, 1e10, [], ratios=ratios)
    assert column(out, "ours wasm int8 (Chromium, this)")[-3:-1] == ["1.50", "0.75"], out
    assert column(out, "ours wasm int8 (Chromium, main)")[-3:-1] == ["1.00", "0.50"], out
    out = peers.table([row("ours native int8", 300.0), row("llama.cpp Q8_0 (--repack 0: segfaults)", 200.0),
                       row("llama.cpp Q4_0", 250.0)], 1e10, [])
    assert column(out, "ours native int8")[-4:-1] == ["1.50", "1.50", "1.20"], out
