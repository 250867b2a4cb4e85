"""`monologue-compile HF_FOLDER -o dist --verify` with no other flag than --no-wasm (the wasm build of
these families is covered by test_hf_backends.py): a save_pretrained GPT-2 folder (Conv1D's (T, C)
activations, learned positions, GELU-tanh) and a Llama folder (transposed heads, rotate_half RoPE,
repeat_kv) compile at the default int8 into a dist whose WGSL plan and Rust crate cover the model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from test_hf_models import hf_configs, randomized  # noqa: E402


@pytest.mark.parametrize("family", ["gpt2", "llama-untied"])
def test_compile_cli_builds_a_save_pretrained_folder_for_every_backend(family, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    folder = tmp_path / family
    randomized(AutoModelForCausalLM.from_config(hf_configs()[family], dtype=torch.float32), 4).save_pretrained(folder)
    out = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(folder), "-o", str(out), "--no-wasm",
                        "--verify"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # --verify's R_q: GPT-2's learned positions, evaluated into a position table, as the folder has them
    assert json.loads((out / "parity.json").read_text())["ok"]
    plan = json.loads((out / "model" / "plan.json").read_text())
    assert plan["dispatch"]["decode"] and plan["dispatch"]["prefill"]
    gen = (out / "runtime_rs" / "src" / "model_gen.rs").read_text()
    assert gen.count("k::attention(") == 2  # one per layer, in the (1, T, H, D) layout the runtime reads
    ir = json.loads((out / "model" / "ir.json").read_text())
    assert all(n["type"]["shape"][:2] == [1, "T"] for n in ir["nodes"] if "T" in n["type"]["shape"])
