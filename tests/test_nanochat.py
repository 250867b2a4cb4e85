"""nanochat checkpoint directories: the Oct 2025 architecture and the later versions, detected from keys."""

import json
import pickle

import pytest
import torch
from click.testing import CliRunner

from conftest import PATTERN, tiny_model
from monologue_compile.cli import main
from monologue_compile.driver import build
from monologue_compile.frontend.nanochat import SHORT_WINDOW
from monologue_compile.models.nanochat import NanochatConfig, NanochatGPT
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
    model = tiny_model(**SIZES)  # models/gpt.py defaults are nanochat's Oct 2025 architecture
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
    """That version's own forward: its S window is nanochat's formula of its time (NANOCHAT.md)."""
    torch.manual_seed(7)
    if features.get("smear_channels"):
        rule, own = "quarter", dict(ve_gate_scale=3.0, qk_scale=1.2, rope_theta=100000.0)
    elif features.get("ve_gate_channels") == 12:
        rule, own = "third", dict(ve_gate_scale=3.0, qk_scale=1.15, rope_theta=100000.0)
    else:
        rule, own = "half", dict(rope_bf16=True)
    m = NanochatGPT(NanochatConfig(**sizes, window_pattern=pattern, short_window=SHORT_WINDOW[rule](sizes["sequence_len"]),
                                   **own, **features))
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


def test_nanochat_folder_layout_compiles_with_no_flags(tmp_path):
    """~/.cache/nanochat as nanochat writes it: base_checkpoints/<tag>/ with several steps, the tokenizer in
    tokenizer/ two levels up; the folder (latest step) or one model_<step>.pt compiles with no flags."""
    base = tmp_path / "nanochat"
    tag = base / "base_checkpoints" / "d3"
    old = tiny_model(seed=1, **SIZES).state_dict()
    write_nanochat_dir(tag, old, SIZES, step=900)
    write_nanochat_dir(tag, tiny_model(seed=2, **SIZES).state_dict(), SIZES, step=1000)  # latest: 1000 > 900
    for p in tag.glob("tokenizer.pkl"):
        p.unlink()
    (base / "tokenizer").mkdir()
    write_tokenizer_pkl(base / "tokenizer" / "tokenizer.pkl")
    r = CliRunner().invoke(main, ["compile", "--no-wasm", str(tag), "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.stderr
    source = json.loads((tmp_path / "a" / "model" / "manifest.json").read_text())["model"]["source"]
    assert source["name"] == "d3/model_001000.pt" and source["step"] == 1000
    r = CliRunner().invoke(main, ["compile", "--no-wasm", str(tag / "model_000900.pt"), "-o", str(tmp_path / "b")])
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "b" / "model" / "manifest.json").read_text())["model"]["source"]["step"] == 900
    # the *_checkpoints folder itself names its tags
    r = CliRunner().invoke(main, ["compile", "--no-wasm", str(base / "base_checkpoints"), "-o", str(tmp_path / "c")])
    assert r.exit_code == 2 and "d3" in r.stderr and not (tmp_path / "c").exists()


def _later_sd(version="jan2026b-value-embeds"):
    features, pattern = LATER[version]
    return _random_later(features, pattern).state_dict(), {**SIZES, "window_pattern": pattern}


def _variants():
    """State dicts that lack or add keys: each must be refused with one line and exit 2."""
    sd, cfg = _later_sd()
    out = {}
    for k in ("transformer.h.1.mlp.c_fc.weight", "lm_head.weight", "x0_lambdas", "transformer.h.0.attn.ve_gate.weight",
              "transformer.wte.weight", "value_embeds.2.weight"):
        out[f"lacks {k}"] = ({n: v for n, v in sd.items() if n != k}, cfg)
    out["engram bigram_lambdas"] = ({**sd, "bigram_lambdas": torch.ones(SIZES["n_layer"])}, cfg)
    out["an unknown key"] = ({**sd, "transformer.h.0.attn.c_q.bias": torch.zeros(32)}, cfg)
    out["a layer past n_layer"] = ({**sd, "transformer.h.3.mlp.c_fc.weight": torch.zeros(128, 32)}, cfg)
    ve_everywhere = {n: v for n, v in sd.items() if "ve_gate" not in n}
    ve_everywhere["value_embeds.1.weight"] = sd["value_embeds.0.weight"].clone()
    out["value embeddings on every layer, no gate"] = (ve_everywhere, cfg)
    out["a 1-D gate"] = ({**sd, "transformer.h.0.attn.ve_gate.weight": torch.ones(32)}, cfg)
    out["a scalar of the wrong length"] = ({**sd, "resid_lambdas": torch.ones(5)}, cfg)
    out["smear_lambda without its gate"] = ({**sd, "smear_lambda": torch.ones(1)}, cfg)
    oct_sd = tiny_model(**SIZES).state_dict()
    out["Oct 2025 with bigram_lambdas"] = ({**oct_sd, "bigram_lambdas": torch.ones(3)}, SIZES)
    out["Oct 2025 lacking a layer"] = ({n: v for n, v in oct_sd.items() if ".h.2." not in n}, SIZES)
    out["a meta without n_head"] = (sd, {k: v for k, v in cfg.items() if k != "n_head"})
    out["a window pattern of other letters"] = (sd, {**cfg, "window_pattern": "SXL"})
    return out


VARIANTS = _variants()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_unknown_variants_and_keys_are_refused_in_one_line(tmp_path, variant):
    sd, cfg = VARIANTS[variant]
    d = write_nanochat_dir(tmp_path / "ck", sd, cfg, prefix="")
    r = CliRunner().invoke(main, ["compile", "--no-wasm", str(d), "-o", str(tmp_path / "dist")])
    assert r.exit_code == 2, (r.stderr, r.exception)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "dist").exists()
    if "bigram" in variant:
        assert "bigram_lambdas" in r.stderr
    if "no gate" in variant:
        assert "ve_gate" in r.stderr


def test_softcap_and_config_overrides_and_the_named_assumption(tmp_path):
    """The Jan-Mar 2026 shape cannot show softcap 20 (Mar 2-9) nor fp32 rotary tables (from Mar 4): the
    summary and the manifest name both assumptions; --softcap and --set change them and say so."""
    sd, cfg = _later_sd()
    d = write_nanochat_dir(tmp_path / "ck", sd, cfg, prefix="")
    r = CliRunner().invoke(main, ["compile", "--no-wasm", str(d), "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.stderr
    assert "assumed softcap = 15" in r.stderr and "--softcap 20" in r.stderr and "assumed rope_bf16" in r.stderr
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "a")])
    assert r.exit_code == 0 and "assumed softcap = 15" in (tmp_path / "a" / "parity.md").read_text(), r.output
    model = json.loads((tmp_path / "a" / "model" / "manifest.json").read_text())["model"]
    assert model["config"]["softcap"] == 15.0 and set(model["assumed"]) == {"softcap", "rope_bf16"}
    assert model["attention_windows"] == [49, 49, 0]  # "SSL", sequence_len 96: half, the last layer full
    r = CliRunner().invoke(main, ["compile", "--no-wasm", str(d), "-o", str(tmp_path / "b"), "--softcap", "20",
                                  "--set", "rope_bf16=false", "--set", "short_window=32"])
    assert r.exit_code == 0, r.stderr
    model = json.loads((tmp_path / "b" / "model" / "manifest.json").read_text())["model"]
    assert model["config"]["softcap"] == 20.0 and not model["config"]["rope_bf16"] and model["assumed"] == {}
    assert model["attention_windows"] == [33, 33, 0] and "overridden: " in r.stderr
    for bad, says in ((["--set", "nope=1"], "nope"), (["--set", "softcap=high"], "softcap"), (["--set", "x"], "KEY=VALUE")):
        r = CliRunner().invoke(main, ["compile", "--no-wasm", str(d), "-o", str(tmp_path / "c"), *bad])
        assert r.exit_code == 2 and says in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("version", ["oct2025", "jan2026b-value-embeds", "mar2026a-gate12"])
def test_rotary_tables_as_that_version_computes_them(tmp_path, version):
    """At --quant none the compiled model matches that version's own forward to 1e-5: bf16 cos/sin
    buffers before Mar 4 2026 (an fp32 activation times a bf16 table), fp32 after."""
    from monologue_compile.frontend.load import build_module
    from monologue_compile.interpreter import Session
    from monologue_compile.parity import metrics
    from monologue_compile.models.gpt import rotary_tables

    if version == "oct2025":
        own, cfg = tiny_model(**SIZES), SIZES
    else:
        features, pattern = LATER[version]
        own, cfg = _random_later(features, pattern), {**SIZES, "window_pattern": pattern}
    bf16 = version != "mar2026a-gate12"
    c = own.config
    cos, sin = rotary_tables(c.sequence_len, c.head_dim, c.rope_theta)
    own.cos, own.sin = (cos.bfloat16(), sin.bfloat16()) if bf16 else (cos, sin)  # as nanochat held them
    d = write_nanochat_dir(tmp_path / "ck", own.state_dict(), cfg, prefix="")
    g = build(d, "none").graph
    assert g.meta["config"]["rope_bf16"] == bf16
    ids = torch.randint(0, SIZES["vocab_size"], (1, 90), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = own(ids)[0].float().numpy()
    got = Session(g).forward(ids[0].tolist())
    assert metrics(got, want)["rel"] <= 1e-5
    if bf16:  # the fp32 tables this compiler used before are measurably off
        with torch.no_grad():
            fp32_tables = build_module(g.meta["arch"], {**g.meta["config"], "rope_bf16": False}, own.state_dict())
            assert metrics(fp32_tables(ids)[0].numpy(), want)["rel"] > 1e-5
