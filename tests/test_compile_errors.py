"""User mistakes: one line on stderr, exit code 2, and no output directory left behind."""

import torch
from click.testing import CliRunner

import monologue_compile.models.gpt as gpt
from conftest import tiny_model, write_checkpoint
from monologue_compile.cli import main


def _fails(tmp_path, ckpt, *extra, out="dist"):
    r = CliRunner().invoke(main, ["compile", str(ckpt), "-o", str(tmp_path / out), *extra])
    assert r.exit_code == 2, (r.exit_code, r.output, r.stderr, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert not (tmp_path / out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary output left behind"
    return lines[0]


def test_unsupported_op_names_op_node_and_source_line(tmp_path, tiny_checkpoint, monkeypatch):
    def mlp_forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)).cumsum(-1))  # an op the compiler has no converter for

    monkeypatch.setattr(gpt.MLP, "forward", mlp_forward)
    msg = _fails(tmp_path, tiny_checkpoint)
    assert "unsupported op aten.cumsum" in msg and "fx node %cumsum" in msg
    # torch.export's stack trace stops at the model's own modules: the line that called the MLP
    assert "gpt.py:" in msg and "self.mlp(norm(x))" in msg


def test_unknown_sequence_mixing_op(tmp_path, tiny_checkpoint, monkeypatch):
    orig = gpt.Block.forward

    def block_forward(self, x, cos, sin, kv_cache=None):
        x = x + x.mean(dim=1, keepdim=True)  # mixes all positions, including future ones
        return orig(self, x, cos, sin, kv_cache)

    monkeypatch.setattr(gpt.Block, "forward", block_forward)
    msg = _fails(tmp_path, tiny_checkpoint)
    assert "sequence axis" in msg and "sequence-mixing" in msg and "fx node %mean" in msg


def test_non_causal_attention_is_refused(tmp_path, tiny_checkpoint, monkeypatch):
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(gpt.F, "scaled_dot_product_attention",
                        lambda q, k, v, is_causal=False, **kw: real(q, k, v, is_causal=False, **kw))
    assert "non-causal attention" in _fails(tmp_path, tiny_checkpoint)


def test_truncated_checkpoint(tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    tiny_checkpoint.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _fails(tmp_path, tiny_checkpoint)


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(bytes(range(256)) * 40)
    assert "garbage.pt" in _fails(tmp_path, bad)


def test_nan_weights(tmp_path):
    m = tiny_model()
    with torch.no_grad():
        m.transformer.h[1].mlp.c_fc.weight[3, 4] = float("nan")
    msg = _fails(tmp_path, write_checkpoint(tmp_path / "nan.pt", m))
    assert "transformer.h.1.mlp.c_fc.weight" in msg and "NaN" in msg


def test_missing_tokenizer(tmp_path):
    ck = write_checkpoint(tmp_path / "notok.pt", tiny_model(), tokenizer="")
    assert "tokenizer" in _fails(tmp_path, ck)
    assert "not found" in _fails(tmp_path, ck, "--tokenizer", str(tmp_path / "nope.json"))


class Evil:
    def __reduce__(self):
        return (print, ("this would run at load time",))


def test_checkpoint_needing_more_than_weights_only(tmp_path):
    ck = tmp_path / "evil.pt"
    torch.save({"model_config": {}, "model": {}, "payload": Evil()}, ck)
    assert "weights_only" in _fails(tmp_path, ck)


def test_bad_quant_flag_and_missing_file(tmp_path, tiny_checkpoint):
    assert "--quant int4" in _fails(tmp_path, tiny_checkpoint, "--quant", "int4")
    assert "no such file" in _fails(tmp_path, tmp_path / "missing.pt")


def test_failed_compile_keeps_existing_output(tmp_path, tiny_checkpoint):
    out = tmp_path / "dist"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    data = tiny_checkpoint.read_bytes()
    tiny_checkpoint.write_bytes(data[:100])
    r = CliRunner().invoke(main, ["compile", str(tiny_checkpoint), "-o", str(out)])
    assert r.exit_code == 2
    assert (out / "keep.txt").read_text() == "old"
