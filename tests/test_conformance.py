"""Every IR op and elementwise function, and the fused kernel forms, on every backend against the
interpreter (in the spirit of ggml's test-backend-ops).

One graph holds one cell per (function or op, form): the registry is enumerated, so a new function
or op is tested without editing this file. The cells' outputs are concatenated into the graph's
output, so each backend compiles and runs one program (one wgpu device, one generated crate, one
wasm build), and a cell's columns say which op broke. Awkward sizes: a row of 20 (not a multiple of
4 or 16) in 4 heads of 5, prefill longer than the 16-token chunk, then T = 1 decode steps. The graph
goes through the passes that shape what a backend sees (views that move data become `copy` kernels,
quantization, the memory plan).
"""

from __future__ import annotations

import numpy as np
import pytest

from monologue_compile import elementwise
from monologue_compile.interpreter import Session
from monologue_compile.ir import OPS, Graph, Node, TensorType, Weight, verify
from monologue_compile.parity import TOLERANCES
from monologue_compile.passes.plan import memory_plan, schedule
from monologue_compile.passes.quantize import quantize
from monologue_compile.passes.views import materialize_views

V, C, N, H, S, CHUNK = 50, 20, 28, 4, 40, 16
IDS = np.random.default_rng(5).integers(0, V, 25).tolist()  # a 21-token prefill (two chunks), then 4 decode steps
PREFILL = 21


def _act(*dims):
    return TensorType((1, "T") + tuple(dims))


def conformance_graph() -> tuple[Graph, dict[str, tuple[int, int]]]:
    """The graph and each cell's columns [start, end) of the output."""
    rng = np.random.default_rng(0)
    w = {
        "table": rng.normal(0, 1.5, (V, C)), "table_b": rng.normal(0, 1.5, (V, C)),
        "table_pos": rng.uniform(0.2, 3.0, (V, C)),  # positive rows, for functions with a positive domain
        "table_pos_b": rng.uniform(0.2, 3.0, (V, C)),
        "vec": rng.uniform(0.5, 1.5, (C,)), "scalar": np.array([0.7]), "pos_table": rng.normal(0, 1, (1, S, C)),
        "proj": rng.normal(0, 0.3, (N, C)), "gate_bias": rng.normal(0, 1, (C,)), "bias": rng.normal(0, 0.5, (N,)), "gate": rng.normal(0, 1, (H,)),
    }
    weights = {k: Weight(v.shape, "f32", v.astype(np.float32)) for k, v in w.items()}
    nodes: list[Node] = []
    cells: list[str] = []

    def add(name, op, inputs, attrs, typ, cell=True):
        nodes.append(Node(name, op, inputs, attrs, typ, f"conformance cell {name}"))
        if cell:
            cells.append(name)

    add("x", "embedding", ["table", "ids"], {"epilogue": []}, _act(C), cell=False)
    add("b", "embedding", ["table_b", "ids"], {"epilogue": []}, _act(C), cell=False)
    add("p", "embedding", ["table_pos", "ids"], {"epilogue": []}, _act(C), cell=False)
    add("pb", "embedding", ["table_pos_b", "ids"], {"epilogue": []}, _act(C), cell=False)
    add("pos", "positions", ["pos_table"], {"axis": 1}, _act(C), cell=False)
    add("heads", "reshape", ["x"], {"shape": [1, "T", H, C // H]}, _act(H, C // H), cell=False)
    add("gate_col", "reshape", ["gate"], {"shape": [H, 1]}, TensorType((H, 1)), cell=False)
    for fn in elementwise.UNARY:
        add(f"unary_{fn}", "elementwise", ["p" if fn in elementwise.POSITIVE_DOMAIN else "x"], {"steps": [{"fn": fn}]}, _act(C))
    for fn in elementwise.BINARY:
        src, other = ("p", "pb") if fn in elementwise.POSITIVE_DOMAIN else ("x", "b")
        add(f"binary_{fn}_tensor", "elementwise", [src, other], {"steps": [{"fn": fn, "operand": 0}]}, _act(C))
        add(f"binary_{fn}_scalar", "elementwise", [src], {"steps": [{"fn": fn, "scalar": 1.7}]}, _act(C))
        add(f"binary_{fn}_reversed", "elementwise", [src], {"steps": [{"fn": fn, "scalar": 1.3, "reverse": True}]}, _act(C))
        add(f"binary_{fn}_vector", "elementwise", [src, "vec"], {"steps": [{"fn": fn, "operand": 0}]}, _act(C))
    add("binary_mul_weight_scalar", "elementwise", ["x", "scalar"], {"steps": [{"fn": "mul", "operand": 0}]}, _act(C))
    add("binary_mul_per_head", "elementwise", ["heads", "gate_col"], {"steps": [{"fn": "mul", "operand": 0}]}, _act(H, C // H))
    add("add_positions", "elementwise", ["x", "pos"], {"steps": [{"fn": "add", "operand": 0}]}, _act(C))
    add("rms_norm", "rms_norm", ["x"], {"eps": 1e-5}, _act(C))
    add("rms_norm_weight", "rms_norm", ["x", "vec"], {"eps": 1e-6}, _act(C))
    add("layer_norm", "layer_norm", ["x"], {"eps": 1e-5, "weight": False, "bias": False}, _act(C))
    add("layer_norm_affine", "layer_norm", ["x", "vec", "gate_bias"], {"eps": 1e-5, "weight": True, "bias": True}, _act(C))
    add("softmax", "softmax", ["x"], {"axis": 2}, _act(C))
    add("softmax_per_head", "softmax", ["heads"], {"axis": 3}, _act(H, C // H))
    add("mean", "mean", ["x"], {"axis": 2}, _act(1))
    add("mean_per_head", "mean", ["heads"], {"axis": 3}, _act(H, 1))
    # topk (an MoE router's choice): values and indices, per head, and the order of equal values
    # (relu's zeros: lower index first)
    add("topk", "topk", ["x"], {"k": 3, "indices": False}, _act(3))
    add("topk_indices", "topk", ["x"], {"k": 3, "indices": True}, _act(3))
    add("topk_per_head", "topk", ["heads"], {"k": 2, "indices": True}, _act(H, 2))
    add("x_relu", "elementwise", ["x"], {"steps": [{"fn": "relu"}]}, _act(C), cell=False)
    add("topk_ties", "topk", ["x_relu"], {"k": 16, "indices": True}, _act(16))
    # a router's weights of its chosen experts, its choice as a dense row (of a value, of the weights)
    add("gather", "gather", ["b", "topk_indices"], {}, _act(3))
    add("gather_per_head", "gather", ["heads", "topk_per_head"], {}, _act(H, 2))
    add("scatter_value", "scatter", ["topk_indices"], {"width": C, "value": 1.0}, _act(C))
    add("scatter_src", "scatter", ["topk_per_head", "gather_per_head"], {"width": C // H}, _act(H, C // H))
    add("chain_with_norm", "elementwise", ["x", "b", "vec"],
        {"steps": [{"fn": "silu"}, {"fn": "mul", "operand": 0}, {"fn": "rms_norm", "eps": 1e-5, "operand": 1},
                   {"fn": "sub", "scalar": 0.5, "reverse": True}]}, _act(C))
    add("token_shift", "token_shift", ["x"], {"axis": 1}, _act(C))
    add("embedding_epilogue", "embedding", ["table", "ids", "vec", "b"],
        {"epilogue": [{"fn": "rms_norm", "eps": 1e-5, "operand": 0}, {"fn": "add", "operand": 1}, {"fn": "gelu"}]}, _act(C))
    add("matmul_prologue_softcap", "matmul", ["x", "proj"],
        {"prologue": {"rms_norm": True, "eps": 1e-5},
         "epilogue": [{"fn": "gelu_tanh"}, {"fn": "div", "scalar": 2.0}, {"fn": "tanh"}, {"fn": "mul", "scalar": 2.0}]}, _act(N))
    add("matmul_bias_silu", "matmul", ["x", "proj", "bias"],
        {"prologue": None, "epilogue": [{"fn": "add", "operand": 0}, {"fn": "silu"}]}, _act(N))
    add("x_half", "slice", ["x"], {"axis": 2, "start": 2, "end": 14}, _act(12), cell=False)
    weights["proj_half"] = Weight((N, 12), "f32", w["proj"][:, :12].astype(np.float32).copy())
    add("matmul_strided_input", "matmul", ["x_half", "proj_half"],
        {"prologue": None, "epilogue": [{"fn": "relu"}, {"fn": "square"}]}, _act(N))
    add("proj_out", "matmul", ["p", "proj"], {"prologue": None, "epilogue": []}, _act(N), cell=False)
    add("gated", "elementwise", ["proj_out"], {"steps": [{"fn": "abs"}]}, _act(N), cell=False)
    add("matmul_tensor_epilogue", "matmul", ["x", "proj", "gated"],
        {"prologue": None, "epilogue": [{"fn": "sigmoid"}, {"fn": "mul", "operand": 0}]}, _act(N))
    # an expert of a mixture: where its token's routing weight (here a strided column, 0 in about half
    # the rows, prefill and decode) is 0, the product is 0 and not computed, and the epilogue applies
    add("route_weight", "slice", ["x_relu"], {"axis": 2, "start": 3, "end": 4}, _act(1), cell=False)
    add("matmul_gated_bias", "matmul", ["x", "proj", "route_weight", "bias"],
        {"prologue": None, "epilogue": [{"fn": "add", "operand": 1}, {"fn": "silu"}], "gate": 0}, _act(N))
    add("matmul_gated_norm", "matmul", ["b", "proj", "route_weight"],
        {"prologue": {"rms_norm": True, "eps": 1e-5}, "epilogue": [], "gate": 0}, _act(N))
    # and its activation, read only where the weight is not 0: a chain ending in a pick by it (a
    # backend may skip the row), and a per-token scalar operand
    add("pick_per_token", "elementwise", ["x", "route_weight"], {"steps": [{"fn": "silu"}, {"fn": "pick", "operand": 0}]}, _act(C))
    add("mul_per_token", "elementwise", ["x", "route_weight"], {"steps": [{"fn": "mul", "operand": 0}, {"fn": "add", "scalar": 0.5}]}, _act(C))
    add("concat", "concat", ["x", "b"], {"axis": 2}, _act(2 * C))
    # views: those that move data become `copy` kernels (passes/views.py), the others stay free
    D = C // H
    add("permute_heads", "permute", ["heads"], {"perm": [0, 1, 3, 2]}, _act(D, H))
    add("slice_inner", "slice", ["heads"], {"axis": 3, "start": 1, "end": 4}, _act(H, 3))
    add("one_head", "slice", ["heads"], {"axis": 2, "start": 2, "end": 3}, _act(1, D), cell=False)
    add("expand_head", "expand", ["one_head"], {"shape": [1, "T", H, D]}, _act(H, D))
    add("rotary_part", "slice", ["heads"], {"axis": 3, "start": 0, "end": 4}, _act(H, 4), cell=False)
    add("rotary_pairs", "reshape", ["rotary_part"], {"shape": [1, "T", H, 2, 2]}, _act(H, 2, 2), cell=False)
    add("chain_slice_reshape_permute", "permute", ["rotary_pairs"], {"perm": [0, 1, 4, 2, 3]}, _act(2, H, 2))
    add("concat_inner_axis", "concat", ["slice_inner", "heads"], {"axis": 3}, _act(H, 3 + D))
    add("pos_heads", "reshape", ["pos"], {"shape": [1, "T", H, D]}, _act(H, D), cell=False)
    add("slice_positions", "slice", ["pos_heads"], {"axis": 3, "start": 1, "end": 3}, _act(H, 2))
    add("vec_row", "reshape", ["vec"], {"shape": [1, 1, 1, C]}, TensorType((1, 1, 1, C)), cell=False)
    add("expand_weight_rows", "expand", ["vec_row"], {"shape": [1, "T", 3, C]}, _act(3, C))
    add("vec_3d", "reshape", ["vec"], {"shape": [1, 1, C]}, TensorType((1, 1, C)), cell=False)
    add("expand_weight_over_t", "expand", ["vec_3d"], {"shape": [1, "T", C]}, _act(C))
    add("permute_unit_axis", "permute", ["mean_per_head"], {"perm": [0, 1, 3, 2]}, _act(1, H))
    add("cast_same_dtype", "cast", ["x"], {"dtype": "f32"}, _act(C))

    flat, columns, start = [], {}, 0
    for name in cells:
        typ = next(n.type for n in nodes if n.name == name)
        width = int(np.prod(typ.shape[2:]))
        if len(typ.shape) > 3:
            flat_name = f"{name}_flat"
            nodes.append(Node(flat_name, "reshape", [name], {"shape": [1, "T", width]}, _act(width), "view"))
            flat.append(flat_name)
        else:
            flat.append(name)
        columns[name] = (start, start + width)
        start += width
    nodes.append(Node("out", "concat", flat, {"axis": 2}, _act(start), "all cells"))
    g = Graph({"ids": TensorType((1, "T"), "i32")}, weights, nodes, ["out"],
              {"arch": "conformance", "config": {"sequence_len": S, "vocab_size": start}})
    g = schedule(memory_plan(quantize(materialize_views(verify(g, "conformance")), "int8")))
    g.meta["schedule"]["prefill"]["chunk"] = CHUNK
    return verify(g, "conformance"), columns


def covered_ops(g: Graph) -> set[str]:
    return {n.op for n in g.nodes}


def test_every_backend_op_and_function_has_a_cell():
    """The graph covers every op a backend runs (all but those the passes always rewrite) and every function."""
    g, columns = conformance_graph()
    backend_ops = {op for op, info in OPS.items() if not info.becomes}
    missing = backend_ops - covered_ops(g) - {"attention", "rope"}
    assert not missing, f"ops without a conformance cell: {missing}"
    assert all(f"unary_{fn}" in columns for fn in elementwise.UNARY)
    assert all(f"binary_{fn}_tensor" in columns for fn in elementwise.BINARY)


def test_ops_table_prints_every_op():
    from click.testing import CliRunner

    from monologue_compile.coverage import ops_cmd

    table = CliRunner().invoke(ops_cmd).output.split("\n\n")[0]
    rows = {line.split()[0]: line.split()[2:] for line in table.splitlines()[2:]}
    assert set(rows) == set(OPS)
    assert all(r[0] == "kernel" for r in rows.values())  # the interpreter runs every op
    assert rows["elementwise"] == ["kernel", "kernel", "kernel"] and rows["unary"][1:] == ["->", "elementwise", "->", "elementwise"]


def run_steps(forward, reset=None) -> np.ndarray:
    """Logits rows for IDS: one prefill of PREFILL tokens (two chunks), then one token at a time."""
    if reset:
        reset()
    rows = [forward(IDS[:PREFILL])]
    rows += [forward([t]) for t in IDS[PREFILL:]]
    return np.concatenate([np.asarray(r).reshape(-1, r.shape[-1]) for r in rows])


@pytest.fixture(scope="module")
def reference():
    g, columns = conformance_graph()
    s = Session(g)
    return g, columns, run_steps(lambda ids: s.forward(ids))


def check_cells(columns, got, want) -> list[str]:
    """The cells whose columns differ from the interpreter's beyond parity.py's per-value tolerances."""
    bad = []
    for name, (a, b) in columns.items():
        g_, w_ = got[:, a:b].astype(np.float64), want[:, a:b].astype(np.float64)
        scale = max(np.abs(w_).max(), 1e-6)
        if not np.all(np.isfinite(g_)) or np.abs(g_ - w_).max() / scale > TOLERANCES["layer_rel_vs_rq"]:
            bad.append(name)
    return bad


@pytest.mark.parametrize("profile", [None, "cpu"], ids=["default", "cpu_profile"])
def test_wgsl_cells_match_the_interpreter(reference, profile):
    from wgsl_harness import device_or_skip

    from monologue_compile.backends.wgpu_executor import WgpuSession

    device_or_skip()
    g, columns, want = reference
    s = WgpuSession.from_graph(g, profile=profile)
    got = run_steps(s.forward, s.reset)
    assert check_cells(columns, got, want) == []


def native_model(g: Graph, tmp_path):
    """The graph in the Rust runtime, built natively (the test session's shared crate dir), or a skip."""
    from test_runtime_native_parity import HAVE_CARGO, shared_crate_dir

    from monologue_compile.artifact import write_model
    from monologue_compile.backends.native import NativeModel, model_files
    from monologue_compile.backends.rust_crate import build_native, emit_crate

    if not HAVE_CARGO:
        pytest.skip("no Rust toolchain (cargo)")
    write_model(g, tmp_path / "model", "{}", {"model": {"config": g.meta["config"]}})
    manifest, shards, _ = model_files(tmp_path)
    return NativeModel(build_native(emit_crate(g, shared_crate_dir()), fast=True), manifest, shards, None)


def wasm_model(g: Graph, tmp_path):
    """The graph in runtime.wasm (Rust 1.63 for wasm32 + SIMD128) under Node, or a skip."""
    from test_runtime_native_parity import shared_crate_dir
    from test_runtime_wasm_parity import HAVE_WASM

    from monologue_compile.artifact import write_model
    from monologue_compile.backends.native import WasmModel
    from monologue_compile.backends.rust_crate import build_wasm, emit_crate

    if not HAVE_WASM:
        pytest.skip("no wasm32 Rust toolchain or no Node")
    write_model(g, tmp_path / "model", "{}", {"model": {"config": g.meta["config"]}})
    # one crate dir for the session's wasm builds: cargo then recompiles only the generated code
    crate = emit_crate(g, shared_crate_dir().parent / "wasm" / "runtime_rs")
    return WasmModel(build_wasm(crate, tmp_path / "runtime.wasm", fast=True), tmp_path / "model", tokenizer=False)


def test_rust_native_cells_match_the_interpreter(reference, tmp_path):
    g, columns, want = reference
    m = native_model(g, tmp_path)
    assert check_cells(columns, run_steps(m.forward, m.reset), want) == []


def test_wasm_cells_match_the_interpreter(reference, tmp_path):
    """runtime.wasm under Node, through web_shell/wasm_runtime.js."""
    g, columns, want = reference
    m = wasm_model(g, tmp_path)
    assert check_cells(columns, run_steps(m.forward, m.reset), want) == []


def test_every_conformance_kernel_compiles_under_tint(reference):
    """The browser's compiler (Tint, headless Chromium) accepts every kernel of the conformance plan."""
    import types

    from wgsl_harness.browser import Browser

    from monologue_compile.backends.wgsl_plan import build_plan

    g, _, _ = reference
    p = build_plan(g)
    browser, why = Browser.open()
    if browser is None:
        pytest.skip(f"Chromium/Tint unavailable: {why}")
    kinds = {"read-only-storage": "read", "storage": "read_write", "uniform": "uniform"}
    try:
        for pipe in p.plan["pipelines"]:
            k = types.SimpleNamespace(name=pipe["name"], wgsl=p.kernels[pipe["kernel"].split("/", 1)[1]],
                                      bindings=[types.SimpleNamespace(name=b["name"], kind=kinds[b["type"]])
                                                for b in pipe["bindings"]])
            res = browser.compile(k, pipe["features"])
            assert res.get("errors") == [], (pipe["kernel"], res)
    finally:
        browser.close()
