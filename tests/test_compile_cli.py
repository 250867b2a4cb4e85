"""`monologue-compile` end to end: the files, their manifest, byte-identical output, and reading it back."""

import hashlib
import json

import numpy as np
from click.testing import CliRunner

from conftest import tiny_model, write_checkpoint
from monologue_compile.artifact import ALIGN, MAGIC, load_model
from monologue_compile.cli import main
from monologue_compile.interpreter import Session, dense_weight


def _compile(*args):
    return CliRunner().invoke(main, ["compile", "--no-wasm", *map(str, args)])


def test_compile_writes_model_dir_deterministically(tmp_path, tiny_checkpoint):
    r1 = _compile(tiny_checkpoint, "-o", tmp_path / "a", "--explain")
    assert r1.exit_code == 0, r1.output + r1.stderr
    assert "kernels per layer: 7 x 2 layers" in r1.output
    r2 = _compile(tiny_checkpoint, "-o", tmp_path / "b")
    assert r2.exit_code == 0
    files = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert {"model/ir.json", "model/ir.txt", "model/manifest.json", "model/tokenizer.json",
            "model/weights-00.bin"} <= set(files)
    assert files == sorted(str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*") if p.is_file())
    for f in files:  # every file, the later backends' output included
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    # no temporary directory left beside the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "checkpoint.pt"]


def test_manifest_describes_the_weight_bytes(tmp_path, tiny_checkpoint):
    assert _compile(tiny_checkpoint, "-o", tmp_path / "d").exit_code == 0
    mdir = tmp_path / "d" / "model"
    m = json.loads((mdir / "manifest.json").read_text())
    assert m["format"] == "monologue-model" and m["model"]["quant"] == "int8"
    for f in m["files"]:
        data = (mdir / f["path"]).read_bytes()
        assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"]
    # the page skips what only the tools read
    assert sorted(f["path"] for f in m["files"] if f.get("page") is False) == ["ir.json", "ir.txt"]
    shard = (mdir / "weights-00.bin").read_bytes()
    assert shard[:8] == MAGIC
    # the q/k/v projections of a layer are one merged int8 tensor; check its packing against the model
    model = tiny_model()
    t = m["weights"]["tensors"]["transformer.h.0.attn.c_q+c_k+c_v.weight"]
    qa, sa = t["arrays"]["q"], t["arrays"]["scale"]
    (qc,), (sc,) = qa["chunks"], sa["chunks"]
    assert qc["offset"] % ALIGN == 0 and sc["offset"] % ALIGN == 0
    packed = np.frombuffer(shard[qc["offset"]:qc["offset"] + qc["nbytes"]], "<u4").reshape(qa["shape"])
    scale = np.frombuffer(shard[sc["offset"]:sc["offset"] + sc["nbytes"]], "<f4").reshape(sa["shape"])
    q = np.stack([(packed >> (8 * i)) & 0xFF for i in range(4)], axis=-1).reshape(packed.shape[0], -1)
    q = q.astype(np.uint8).view(np.int8).astype(np.float32)
    a = model.transformer.h[0].attn
    w = np.concatenate([a.c_q.weight.detach().numpy(), a.c_k.weight.detach().numpy(), a.c_v.weight.detach().numpy()])
    deq = (q * scale)[:, : w.shape[1]]
    assert np.abs(deq - w).max() <= np.abs(w).max(axis=1).max() / 127 / 2 + 1e-6
    assert np.allclose(np.abs(q).max(axis=1), 127)  # per-row scale hits the row's max


def test_load_model_round_trip_gives_same_logits(tmp_path, tiny_checkpoint):
    from monologue_compile.driver import build

    assert _compile(tiny_checkpoint, "-o", tmp_path / "d", "--quant", "int8-g64").exit_code == 0
    g, manifest, tok = load_model(tmp_path / "d")
    assert json.loads(tok)["format"] == "monologue-tokenizer"
    mem = build(tiny_checkpoint, "int8-g64").graph
    for name, w in mem.weights.items():
        assert np.array_equal(dense_weight(w), dense_weight(g.weights[name])), name
    ids = [1, 2, 3, 50, 200, 7]
    assert np.array_equal(Session(g).forward(ids), Session(mem).forward(ids))


def test_verify_flag_and_command(tmp_path, tiny_checkpoint):
    """--verify runs every backend the dist ships, each row naming its backend, and says which could not run."""
    import shutil

    from monologue_compile.backends.rust_crate import find_toolchain
    from monologue_compile.errors import MonologueError

    try:
        find_toolchain(wasm=True)
        wasm = shutil.which("node") is not None
    except MonologueError:
        wasm = False
    args = ["compile", str(tiny_checkpoint), "-o", str(tmp_path / "d"), "--verify"] + ([] if wasm else ["--no-wasm"])
    r = CliRunner().invoke(main, args, env={"MONOLOGUE_RUST_FAST": "1"})
    assert r.exit_code == 0, r.stderr
    report = json.loads((tmp_path / "d" / "parity.json").read_text())
    assert report["ok"] and report["checks"]["greedy_vs_rq"]["mismatches"] == 0
    backends = report["backends"]
    assert set(backends) == {"numpy", "wgpu", "wgpu-cpu", "native", "wasm"}
    for name, b in backends.items():
        assert b["status"] == "pass" or b["status"] == "skipped" and b["reason"], (name, b)
        if b["status"] == "pass":
            assert b["longest_position"] == report["longest_position"] == 95  # sequence_len 96: reached
    assert backends["numpy"]["status"] == "pass" and (backends["wasm"]["status"] == "pass") == wasm
    assert all(c["backend"] in backends for c in report["checks"].values())
    assert "Per layer" in (tmp_path / "d" / "parity.md").read_text()
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "d")])
    assert r.exit_code == 0, r.stderr
    assert "PASS" in r.output


def test_verify_fails_on_a_tampered_weight(tmp_path, tiny_checkpoint):
    assert _compile(tiny_checkpoint, "-o", tmp_path / "d").exit_code == 0
    shard = tmp_path / "d" / "model" / "weights-00.bin"
    data = bytearray(shard.read_bytes())
    data[300] ^= 0x55
    shard.write_bytes(bytes(data))
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "d")])
    assert r.exit_code == 2 and "sha256" in r.stderr


def test_weights_split_into_shards(tmp_path):
    from monologue_compile.artifact import write_model
    from monologue_compile.driver import build

    ck = write_checkpoint(tmp_path / "c.pt", tiny_model(vocab_size=2048))
    c = build(ck, "none")
    manifest = write_model(c.graph, tmp_path / "m", c.loaded.tokenizer_json, {}, shard_max=64 * 1024)
    shards = manifest["weights"]["shards"]
    assert len(shards) > 2
    assert all((tmp_path / "m" / s).stat().st_size <= 64 * 1024 for s in shards)
    wte = manifest["weights"]["tensors"]["transformer.wte.weight"]["arrays"]["data"]["chunks"]
    assert len(wte) > 1 and wte[0]["rows"][0] == 0 and wte[-1]["rows"][1] == 2048
    g, _, _ = load_model(tmp_path / "m")
    assert np.array_equal(g.weights["transformer.wte.weight"].data, c.graph.weights["transformer.wte.weight"].data)


def test_bare_state_dict_with_config_and_dump_ir(tmp_path):
    import torch

    from conftest import byte_tokenizer_json

    model = tiny_model(activation="silu")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    (tmp_path / "tokenizer.json").write_text(byte_tokenizer_json(model.config.vocab_size))
    r = _compile(tmp_path / "sd.pt", "-o", tmp_path / "d", "--config", tmp_path / "config.json",
                 "--tokenizer", tmp_path / "tokenizer.json", "--dump-ir")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("graph(%ids: (1, T) i32)") and "epilogue=[{fn: silu}]" in r.stdout
    m = json.loads((tmp_path / "d" / "model" / "manifest.json").read_text())
    assert m["model"]["source"]["kind"] == "state_dict" and m["model"]["config"]["activation"] == "silu"
    r = _compile(tmp_path / "sd.pt", "-o", tmp_path / "e", "--tokenizer", tmp_path / "tokenizer.json")
    assert r.exit_code == 2 and "--config" in r.stderr


def test_verify_exits_1_when_a_kernel_is_wrong(tmp_path, tiny_checkpoint):
    """Break the IR (the softcap constant) consistently with the manifest: files check out, parity does not."""
    assert _compile(tiny_checkpoint, "-o", tmp_path / "d").exit_code == 0
    mdir = tmp_path / "d" / "model"
    ir = json.loads((mdir / "ir.json").read_text())
    head = next(n for n in ir["nodes"] if n["name"] == ir["outputs"][0])
    assert head["attrs"]["epilogue"][0] == {"fn": "div", "scalar": 15.0}
    head["attrs"]["epilogue"][0]["scalar"] = 14.0
    (mdir / "ir.json").write_text(json.dumps(ir))
    m = json.loads((mdir / "manifest.json").read_text())
    for f in m["files"]:
        if f["path"] == "ir.json":
            data = (mdir / "ir.json").read_bytes()
            f["bytes"], f["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (mdir / "manifest.json").write_text(json.dumps(m))
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "d")])
    assert r.exit_code == 1
    report = json.loads((tmp_path / "d" / "parity.json").read_text())
    assert not report["checks"]["logits_vs_rq"]["ok"]
    assert [row["node"] for row in report["layers"] if not row["ok"]] == [head["name"]]  # found by name


def test_failed_verify_keeps_output_and_exits_1(tmp_path, monkeypatch):
    from monologue_compile import parity

    ck = write_checkpoint(tmp_path / "trained.pt", tiny_model(), meta={"step": 100})  # trained: the fp32 bar applies
    monkeypatch.setitem(parity.TOLERANCES, "top1_agreement_vs_fp32", 1.01)  # a bar no model can meet
    monkeypatch.setitem(parity.TOLERANCES, "eval_accuracy_drop", 1.0)
    monkeypatch.setattr(parity, "_eval_accuracy", lambda *a: {"skipped": True, "ok": True})
    r = _compile(ck, "-o", tmp_path / "d", "--verify")
    assert r.exit_code == 1 and "vs_fp32" in r.stderr
    assert (tmp_path / "d" / "model" / "manifest.json").exists()
    assert (tmp_path / "d" / "parity.md").read_text().startswith("# Parity report (FAIL)")


def test_what_the_trainer_says_the_model_can_do_reaches_the_manifest(tmp_path):
    about = {"summary": "Adds numbers.", "examples": ["What is 2 + 2?"]}
    ck = write_checkpoint(tmp_path / "about.pt", tiny_model(), meta={"about": about})
    assert _compile(ck, "-o", tmp_path / "d").exit_code == 0
    manifest = json.loads((tmp_path / "d" / "model" / "manifest.json").read_text())
    assert manifest["model"]["source"]["about"] == about
    bad = write_checkpoint(tmp_path / "bad.pt", tiny_model(), meta={"about": {"summary": "Adds.", "examples": "2+2"}})
    r = _compile(bad, "-o", tmp_path / "e")
    assert r.exit_code == 2 and "bad.pt: meta 'about' must be" in r.stderr and "Traceback" not in r.output + r.stderr
    assert not (tmp_path / "e").exists()
