"""Bad input at the compiler's and the CLI's boundary: one line naming the file and field, exit
code 2, nothing written; a bug in Monologue: one line saying so, never a traceback."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_model, write_checkpoint
from monologue_compile.cli import main


def _one_line(args, code=2):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == code, (r.exit_code, r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def _compile_fails(tmp_path, ckpt, *extra):
    line = _one_line(["compile", str(ckpt), "-o", str(tmp_path / "dist"), "--no-wasm", *extra])
    assert not (tmp_path / "dist").exists()
    return line


def _checkpoint(tmp_path, name="c.pt", config=None, sd=None):
    model = tiny_model()
    path = write_checkpoint(tmp_path / name, model)
    obj = torch.load(path, weights_only=True)
    if config:
        obj["model_config"].update(config)
    if sd is not None:
        obj["model"] = sd(obj["model"])
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("data", [b".", b"", b"\x80\x02}q\x00.", b"PK\x03\x04garbage", b"\x80\x05\x95" + b"\xff" * 64])
def test_malformed_pickles_are_one_line(tmp_path, data):
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(data)
    assert "x.pt" in _compile_fails(tmp_path, ckpt)


def test_non_string_state_dict_keys(tmp_path):
    ckpt = _checkpoint(tmp_path, sd=lambda sd: {**sd, 7: torch.zeros(2)})
    assert "key 7 is not a string" in _compile_fails(tmp_path, ckpt)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_weights_name_tensor_and_dtype(tmp_path, dtype):
    ckpt = _checkpoint(tmp_path, sd=lambda sd: {**sd, "lm_head.weight": sd["lm_head.weight"].to(dtype)})
    line = _compile_fails(tmp_path, ckpt)
    assert "lm_head.weight" in line and str(dtype).replace("torch.", "") in line


def test_keys_colliding_after_prefix_strip(tmp_path):
    ckpt = _checkpoint(tmp_path, sd=lambda sd: {**sd, "_orig_mod.lm_head.weight": torch.zeros_like(sd["lm_head.weight"])})
    line = _compile_fails(tmp_path, ckpt)
    assert "'lm_head.weight'" in line and "_orig_mod.lm_head.weight" in line


@pytest.mark.parametrize("field,value,why", [
    ("n_layer", 10**12, "n_layer"), ("n_layer", "2", "integer"), ("n_layer", 2.0, "integer"), ("n_layer", 0, "n_layer"),
    ("n_embd", True, "integer"), ("rope_theta", 0.0, "rope_theta"), ("rope_theta", math.nan, "finite"),
    ("softcap", math.inf, "finite"), ("softcap", -1.0, "softcap"), ("mlp_ratio", 0, "mlp_ratio"),
    ("vocab_size", 2**32 + 5, "vocab_size"), ("qk_norm", 1, "true or false"), ("activation", 3, "string"),
])
def test_config_values_of_wrong_type_or_range(tmp_path, field, value, why):
    ckpt = _checkpoint(tmp_path, config={field: value})
    line = _compile_fails(tmp_path, ckpt)
    assert field in line and why in line


def test_config_json_nested_too_deeply_or_not_utf8(tmp_path):
    model = tiny_model()
    sd = tmp_path / "sd.pt"
    torch.save(model.state_dict(), sd)
    tok = tmp_path / "tok.json"
    tok.write_text(json.loads(json.dumps(torch.load(write_checkpoint(tmp_path / "c.pt", model))["tokenizer"])))
    for name, data in [("deep.json", b"[" * 100000 + b"]" * 100000), ("latin1.json", b'{"n_layer": "\xff"}'),
                       ("list.json", b"[1, 2]")]:
        cfg = tmp_path / name
        cfg.write_bytes(data)
        assert name in _compile_fails(tmp_path, sd, "--config", str(cfg), "--tokenizer", str(tok))
    tok.write_bytes(b"[" * 100000)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(model.config.to_dict()))
    assert "tok.json" in _compile_fails(tmp_path, sd, "--config", str(cfg), "--tokenizer", str(tok))


@pytest.mark.parametrize("opt", [["--temperature", "nan"], ["--temperature", "inf"], ["--temperature", "-1"],
                                 ["--top-p", "nan"], ["--top-k", "-1"], ["--seed", "-3"], ["--max-tokens", "-1"]])
def test_chat_options_out_of_range(tmp_path, opt):
    assert opt[0] in _one_line(["chat", str(tmp_path), *opt])


def test_internal_error_is_one_line_with_where_to_report(tmp_path, tiny_checkpoint, monkeypatch):
    import monologue_compile.driver as driver

    def broken(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr(driver, "build", broken)
    line = _one_line(["compile", str(tiny_checkpoint), "-o", str(tmp_path / "dist")], code=70)
    assert "internal error" in line and "KeyError" in line and "report" in line


@pytest.mark.parametrize("tok", [5, b"{}", ["x"]])
def test_checkpoint_tokenizer_that_is_not_text(tmp_path, tok):
    path = write_checkpoint(tmp_path / "c.pt", tiny_model())
    obj = torch.load(path, weights_only=True)
    obj["tokenizer"] = tok
    torch.save(obj, path)
    assert "tokenizer" in _compile_fails(tmp_path, path)


def test_nan_or_infinity_in_config_or_tokenizer_json(tmp_path):
    model = tiny_model()
    sd = tmp_path / "sd.pt"
    torch.save(model.state_dict(), sd)
    good_tok = json.loads(json.dumps(torch.load(write_checkpoint(tmp_path / "c.pt", model))["tokenizer"]))
    cfg, tok = tmp_path / "cfg.json", tmp_path / "tok.json"
    tok.write_text(good_tok)
    cfg.write_text(json.dumps(model.config.to_dict()).replace('"softcap": 15.0', '"softcap": NaN'))
    assert "NaN" in _compile_fails(tmp_path, sd, "--config", str(cfg), "--tokenizer", str(tok))
    cfg.write_text(json.dumps(model.config.to_dict()))
    tok.write_text(good_tok.replace('"version": 1', '"version": Infinity'))
    # the Rust reader (every tokenizer goes through it) refuses it as JSON, at its byte
    assert "tok.json: invalid JSON at byte" in _compile_fails(tmp_path, sd, "--config", str(cfg), "--tokenizer", str(tok))


def test_sequence_len_too_short_to_trace(tmp_path):
    assert "sequence_len" in _compile_fails(tmp_path, _checkpoint(tmp_path, config={"sequence_len": 3}))


def test_an_infinity_in_any_config_field_is_refused(tmp_path):
    """Fields the schema does not type (here a training-only one) still reach the manifest's JSON."""
    out = _compile_fails(tmp_path, _checkpoint(tmp_path, config={"dropout": float("inf")}))
    assert "dropout=inf must be finite" in out
