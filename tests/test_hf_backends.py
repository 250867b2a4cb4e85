"""The transformers families and the hand-written GPTs of test_hf_models.py on the other backends:
Rust native, wasm and WGSL on wgpu-py, at int8 against R_q (the model with the dequantized weights):
logits within parity.py's tolerances, chunked prefill and decode equal to one shot, 64 greedy tokens
identical to R_q's.

eager and sdpa lower to the same IR (the attention op), so one attention implementation per family.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from test_hf_models import IMPLS, build_model, ids  # noqa: E402
from test_runtime_native_parity import HAVE_CARGO, greedy, shared_crate_dir  # noqa: E402

from monologue_compile.backends.native import NativeModel  # noqa: E402
from monologue_compile.backends.rust_crate import build_native, emit_crate  # noqa: E402
from monologue_compile.driver import build  # noqa: E402
from monologue_compile.frontend.module import from_module  # noqa: E402
from monologue_compile.parity import TOLERANCES, metrics, rq_state_dict  # noqa: E402

FAMILIES = ["gpt2", "llama-llama3-tied", "llama-untied", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "smollm3", "hunyuan",
            "gptj", "glm", "gpt_neo", "gpt_bigcode", "falcon", "falcon-40b", "bloom", "mpt", "apertus",
            "ministral3", "qwen3_moe", "glm4_moe", "phimoe", "deepseek_v3", "gpt_oss", "lfm2", "nanogpt", "chargpt", "actgpt",
            "scratchgpt"]
# (test_hf_models' falcon-rw, xglm, nanochat, qwen2_moe, granitemoe and lfm2_moe lower to what the
# families here already give the backends: ALiBi, a plain mask, QK-norm with relu2, routed experts, a
# short convolution; benchmarks/probe_hf_families.py --backends runs them)
@pytest.fixture(scope="module", params=FAMILIES)
def int8(request):
    """(graph at int8, R_q module) of a family, compiled once for every backend."""
    family = request.param
    loaded = from_module(build_model(family, IMPLS.get(family, ("sdpa",))[-1]).model, None, 80)
    c = build(loaded, "int8")
    return c.graph, loaded.build_module(rq_state_dict(c.graph)).eval()


def check(session_forward, g, rq, max_len: int) -> None:
    x = ids(20, 3)
    with torch.no_grad():
        ref = rq(torch.from_numpy(x)[None])[0].numpy()
    one = session_forward(None, x)
    m = metrics(one, ref)
    assert m["rel"] <= TOLERANCES["logits_rel_vs_rq"] and m["cosine"] >= TOLERANCES["logits_cosine_vs_rq"], m
    s = session_forward("new", None)
    parts = np.concatenate([s(x[:7]), s(x[7:8]), s(x[8:20])])
    assert metrics(parts, one)["rel"] <= TOLERANCES["decode_vs_prefill_rel"]
    prompt = [int(t) for t in ids(8, 4)]
    want = rq.generate(prompt, 64)
    s = session_forward("new", None)
    logits, got = s(prompt)[-1], []
    for _ in range(min(64, max_len - len(prompt))):
        got.append(int(np.argmax(logits)))
        logits = s([got[-1]])[-1]
    assert got == want


def session(g, backend: str, tmp_path):
    """A session of `g` on "native", "wasm" or "wgsl", in check()'s form: forward(new, x) gives the
    logits of x from a reset session, or (new) the reset session's own forward."""
    if backend == "native":
        from monologue_compile.artifact import write_model
        from monologue_compile.backends.native import model_files

        write_model(g, tmp_path / "model", "{}", {"model": {"config": g.meta["config"]}})
        manifest, shards, _ = model_files(tmp_path)  # no tokenizer: the check drives token ids
        s = NativeModel(build_native(emit_crate(g, shared_crate_dir()), fast=True), manifest, shards, None)
    elif backend == "wasm":
        from test_conformance import wasm_model

        s = wasm_model(g, tmp_path)  # the session's one wasm crate dir: cargo recompiles the model code only
    else:
        from monologue_compile.backends.wgpu_executor import WgpuSession

        s = WgpuSession.from_graph(g)

    def forward(new, x):
        s.reset()
        return s.forward if new else s.forward(x)

    return forward


@pytest.mark.skipif(not HAVE_CARGO, reason="no Rust toolchain (cargo)")
@pytest.mark.parametrize("backend", ["native", "wasm"])
def test_rust_runtime_matches_rq(int8, backend, tmp_path):
    g, rq = int8
    check(session(g, backend, tmp_path), g, rq, g.meta["config"]["sequence_len"])


def test_wgsl_on_wgpu_matches_rq(int8, tmp_path):
    g, rq = int8
    check(session(g, "wgsl", tmp_path), g, rq, g.meta["config"]["sequence_len"])
