"""Every nanochat version with windows, compiled as nanochat computes it and verified past the window
on every backend the dist ships: a tiny model with sequence_len 1024 (where the half, third and
quarter windows differ: 512, 384, 256 keys before the query), logits against R_q on a sequence
reaching sequence_len whose last 16 tokens are decode steps, and 64 greedy tokens from a prompt
longer than the window, on the interpreter, native, runtime.wasm and wgpu (both plan profiles; skipped
only where the machine has no adapter). A window planted wrong in one backend's generated code makes
verify fail."""

import json
import shutil

import pytest
from click.testing import CliRunner

from monologue_compile.artifact import load_model
from monologue_compile.cli import main
from monologue_compile.driver import compile_to
from monologue_compile.parity import run_parity
from test_runtime_native_parity import needs_cargo

pytest.importorskip("tiktoken")
from test_nanochat import LATER, SIZES, _random_later, write_nanochat_dir  # noqa: E402

LONG = {**SIZES, "sequence_len": 1024}
LEFT = {"jan2026a-lambdas-windows": 512, "jan2026b-value-embeds": 512, "mar2026a-gate12": 384,
        "mar2026b-smear-backout": 256}  # nanochat's S window at sequence_len 1024: half, half, third, quarter


def _compiled(tmp_path_factory, version):
    features, pattern = LATER[version]
    model = _random_later(features, pattern, LONG)
    d = tmp_path_factory.mktemp(version)
    ck = write_nanochat_dir(d / "base_checkpoints" / "d3", model.state_dict(), {**LONG, "window_pattern": pattern},
                            prefix="")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONOLOGUE_RUST_FAST", "1")  # the quicker (no LTO) builds
        compile_to(ck, d / "dist", wasm=shutil.which("node") is not None)
    return model, d / "dist"


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    return {}  # version -> (model, dist), filled by the first test of each version, reused by the rest


def _dist(dists, tmp_path_factory, version):
    if version not in dists:
        dists[version] = _compiled(tmp_path_factory, version)
    return dists[version]


@needs_cargo
@pytest.mark.parametrize("version", list(LEFT))
def test_every_backend_matches_rq_past_the_window(dists, tmp_path_factory, version):
    model, dist = _dist(dists, tmp_path_factory, version)
    g, manifest, tok = load_model(dist)
    left = LEFT[version]
    assert manifest["model"]["config"]["short_window"] == left
    assert left + 1 in manifest["model"]["attention_windows"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONOLOGUE_RUST_FAST", "1")
        report = run_parity(g, fp32_model=model, tokenizer_json=tok, layers=False, dist=dist)
    ran = {k for k, b in report["backends"].items() if b["status"] != "skipped"}
    no_adapter = {k for k, b in report["backends"].items() if "adapter" in b.get("reason", "")}
    assert {"numpy", "native", "wgpu", "wgpu-cpu", "wasm" if shutil.which("node") else "numpy"} <= ran | no_adapter
    failing = {k: v for k, v in report["checks"].items() if not v["ok"]}
    assert not failing, failing
    for name in ran:
        prefix = "" if name == "numpy" else name.replace("-", "_") + "_"
        long = report["checks"][prefix + "long_context_vs_rq"]
        assert long["longest_position"] == LONG["sequence_len"] - 1 >= 2 * left - 1
        assert long["shortest_window"] == left + 1 and long["decode_steps"] == 16
        greedy = report["checks"][prefix + "greedy_vs_rq"]
        assert greedy["prompt_tokens"] > left + 1 and greedy["steps"] == 64 and greedy["mismatches"] == 0
    print(f"\n{version}: window {left}, softcap {g.meta['config']['softcap']}, worst |logit error| at position "
          f"{report['longest_position']}: " + ", ".join(
              f"{c['backend']} {c['max_abs_at_longest']:.2e}" for k, c in report["checks"].items()
              if k.endswith("long_context_vs_rq")))


@needs_cargo
def test_verify_fails_on_a_window_planted_wrong_in_one_backend(dists, tmp_path_factory, tmp_path, monkeypatch):
    """The native backend's generated code gets nanochat's old half window; verify must say so (and
    only for native). The plant goes into the code generator: a dist's own crate is never built."""
    from monologue_compile.backends import rust_crate

    _, dist = _dist(dists, tmp_path_factory, "mar2026b-smear-backout")
    dist = shutil.copytree(dist, tmp_path / "dist")
    honest = rust_crate.generate

    def planted(g):
        src = honest(g)
        assert src.count("window: 257,") == 2  # the two S layers see 257 keys (a left window of 256)
        return src.replace("window: 257,", "window: 513,")

    monkeypatch.setattr(rust_crate, "generate", planted)
    r = CliRunner().invoke(main, ["verify", str(dist)], env={"MONOLOGUE_RUST_FAST": "1"})
    assert r.exit_code == 1, r.output
    report = json.loads((dist / "parity.json").read_text())
    failing = {k for k, v in report["checks"].items() if not v["ok"]}
    assert "native_long_context_vs_rq" in failing and all(k.startswith("native") for k in failing), failing
    assert report["backends"]["native"]["status"] == "fail" and report["backends"]["numpy"]["status"] == "pass"
