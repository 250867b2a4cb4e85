"""nanochat checkpoint directories: the Oct 2025 architecture and the later versions, detected from keys."""

import json
import pickle

import pytest
import torch
from click.testing import CliRunner

from conftest import PATTERN, tiny_model
from monologue_compile.cli import main
from monologue_compile.driver import build
from monologue_compile.frontend.nanochat import NanochatConfig, NanochatGPT
from monologue_compile.parity import run_parity

NANOCHAT_SPECIALS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
                     "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]
SIZES = dict(sequence_len=96, vocab_size=265, n_layer=3, n_head=4, n_kv_head=2, n_embd=32)


def write_tokenizer_pkl(path):
    """A tiktoken Encoding pickled the way nanochat saves tokenizer.pkl (256 byte ranks + 9 specials)."""
    tiktoken = pytest.importorskip("tiktoken")
    enc = tiktoken.Encoding(name="rustbpe", pat_str=PATTERN, mergeable_ranks={bytes([i]): i for i in range(256)},
                            special_tokens={s: 256 + i for i, s in enumerate(NANOCHAT_SPECIALS)})
    path.write_bytes(pickle.dumps(enc))


def write_nanochat_dir(d, state_dict, model_config, step=0, prefix="_orig_mod."):
    # step 0: random weights are untrained, so the fp32 top-1 bar is reported, not enforced
    d.mkdir(parents=True, exist_ok=True)
    torch.save({prefix + k: v for k, v in state_dict.items()}, d / f"model_{step:06d}.pt")
    (d / f"meta_{step:06d}.json").write_text(json.dumps({"step": step, "val_bpb": 1.0, "model_config": model_config}))
    write_tokenizer_pkl(d / "tokenizer.pkl")
    return d


def test_oct_2025_dir_compiles_and_verifies(tmp_path):
    model = tiny_model(**SIZES)  # training/gpt.py defaults are nanochat's Oct 2025 architecture
    sd = model.state_dict()
    sd["transformer.wte.weight"] = sd["transformer.wte.weight"].to(torch.bfloat16)  # GPU checkpoints mix bf16
    d = write_nanochat_dir(tmp_path / "base_checkpoints" / "d2", sd, SIZES)
    r = CliRunner().invoke(main, ["compile", "--no-wasm", str(d), "-o", str(tmp_path / "dist"), "--verify"])
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((tmp_path / "dist" / "model" / "manifest.json").read_text())
    assert manifest["model"]["arch"] == "gpt" and manifest["model"]["source"]["kind"] == "nanochat"
    assert manifest["special_tokens"]["<|assistant_end|>"] == 260
    assert json.loads((tmp_path / "dist" / "parity.json").read_text())["ok"]


def test_tokenizer_pkl_missing_or_given(tmp_path):
    d = write_nanochat_dir(tmp_path / "ck", tiny_model(**SIZES).state_dict(), SIZES)
    (d / "tokenizer.pkl").rename(tmp_path / "elsewhere.pkl")
    r = CliRunner().invoke(main, ["compile", "--no-wasm", str(d), "-o", str(tmp_path / "dist")])
    assert r.exit_code == 2 and "tokenizer" in r.stderr and not (tmp_path / "dist").exists()
    r = CliRunner().invoke(main, ["compile", "--no-wasm", str(d), "-o", str(tmp_path / "dist"), "--tokenizer",
                                  str(tmp_path / "elsewhere.pkl")])
    assert r.exit_code == 0, r.stderr
    tok = json.loads((tmp_path / "dist" / "model" / "tokenizer.json").read_text())
    assert tok["special_tokens"]["<|bos|>"] == 256


LATER = {
    "dec2025-padded-vocab": (dict(padded_vocab=320), "L"),
    "jan2026a-lambdas-windows": (dict(padded_vocab=320, lambdas=True), "SSL"),
    "jan2026b-value-embeds": (dict(padded_vocab=320, lambdas=True, ve_layers=[0, 2]), "SSL"),
    "mar2026a-gate12": (dict(padded_vocab=320, lambdas=True, ve_layers=[0, 2], ve_gate_channels=12), "SL"),
    "mar2026b-smear-backout": (dict(padded_vocab=320, lambdas=True, ve_layers=[0, 2], ve_gate_channels=12,
                                    smear_channels=24, backout=True), "SSSL"),
}


def _random_later(features: dict, pattern: str, sizes: dict = SIZES) -> NanochatGPT:
    torch.manual_seed(7)
    m = NanochatGPT(NanochatConfig(**sizes, window_pattern=pattern, **features))
    with torch.no_grad():  # move every scalar off its neutral value so each feature shows in the logits
        for name, p in m.named_parameters():
            if p.ndim <= 1 or name.endswith(("smear_gate.weight", "ve_gate.weight")):
                p.uniform_(0.3, 1.2)
    return m.eval()


@pytest.mark.parametrize("version", list(LATER))
def test_later_versions_match_rq(tmp_path, version):
    features, pattern = LATER[version]
    model = _random_later(features, pattern)
    d = write_nanochat_dir(tmp_path / version, model.state_dict(), {**SIZES, "window_pattern": pattern}, prefix="")
    c = build(d, "int8")
    assert c.loaded.arch == "nanochat"
    detected = c.loaded.config
    for k, v in features.items():
        assert detected[k] == v, k
    ops = {n.op for n in c.graph.nodes}
    assert ("token_shift" in ops) == bool(features.get("smear_channels"))
    windows = sorted({n.attrs["window"] for n in c.graph.nodes if n.op == "attention"})
    left = {"mar2026a": 128, "mar2026b": 128}.get(version[:8], SIZES["sequence_len"] // 2)  # third/quarter: 128
    assert windows == ([0, left + 1] if "S" in pattern and left + 1 < SIZES["sequence_len"] else [0])
    report = run_parity(c.graph, fp32_model=model, layers=False)
    checks = report["checks"]
    assert checks["logits_vs_rq"]["ok"], checks["logits_vs_rq"]
    assert checks["decode_vs_prefill"]["ok"], checks["decode_vs_prefill"]  # windows and the shift carry state
    assert checks["greedy_vs_rq"]["mismatches"] == 0 and checks["greedy_vs_rq"]["steps"] == 64
