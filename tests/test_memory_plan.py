"""One memory plan for both backends (passes/plan.py): the WGSL plan and the generated Rust code place
every kernel's output where the IR annotation says (buffer, in place, KV-cache row), and a broken
annotation is refused by the validator with the values' names, before either backend emits anything."""

from __future__ import annotations

import re

import pytest

from conftest import lowered
from monologue_compile.backends.rust_crate import generate
from monologue_compile.backends.wgsl_plan import build_plan
from monologue_compile.driver import build
from monologue_compile.errors import MonologueError
from monologue_compile.ir import OPS
from monologue_compile.passes import run_pipeline
from monologue_compile.passes.plan import PlanError, check_memory_plan


@pytest.fixture(scope="module")
def gpt(tiny_export):
    return run_pipeline(lowered(*tiny_export), "int8")[0]


@pytest.fixture(scope="module")
def nanochat(tmp_path_factory):
    """The newest nanochat architecture: lambdas and value embeddings give row ops over dying inputs."""
    pytest.importorskip("tiktoken")
    from test_nanochat import LATER, _random_later, write_nanochat_dir, SIZES

    features, pattern = LATER["mar2026b-smear-backout"]
    d = tmp_path_factory.mktemp("nanochat")
    write_nanochat_dir(d, _random_later(features, pattern).state_dict(), {**SIZES, "window_pattern": pattern}, prefix="")
    return build(d).graph


def _wgsl_outputs(g, fuse: bool = True) -> tuple[dict[str, set[str]], dict, dict[str, list[tuple[str, list[str]]]]]:
    """(node -> the buffers its dispatches bind as their output (y / out / cache), the plan,
    node -> each dispatch's kernel header line and binding names)."""
    built = build_plan(g, fuse=fuse)
    plan = built.plan
    out: dict[str, set[str]] = {}
    forms: dict[str, list] = {}
    for d in plan["dispatch"]["prefill"] + plan["dispatch"]["decode"]:
        pipe = plan["pipelines"][d["pipeline"]]
        names = [b["name"] for b in pipe["bindings"]]
        forms.setdefault(d["node"], []).append((built.kernels[pipe["kernel"].split("/")[1]].splitlines()[0], names))
        entries = dict(zip(names, plan["bind_groups"][d["bind_group"]]["entries"]))
        if "nodes" in d:  # a fused dispatch (wgsl_fuse.py): output binding y<i> is nodes[i]'s (a cache for a copy)
            for i, node in enumerate(d["nodes"]):
                key = node + ":cache" if g.node(node).op == "attention" else node
                out.setdefault(key, set()).add(entries[f"y{i}"])
            continue
        for name in ("y", "out"):
            if name in entries:
                out.setdefault(d["node"], set()).add(entries[name])
        if pipe["name"] == "kv_write":
            out.setdefault(d["node"] + ":cache", set()).add(entries["cache"])
    return out, plan, forms


def _rust_blocks(g) -> dict[str, tuple[str, str]]:
    """Node -> (the State slot its block writes, the block's code) in the generated model_gen.rs."""
    code = generate(g)
    return {m.group(1): (m.group(2), m.group(0))
            for m in re.finditer(r"// %(\S+): .*?let mut o = take\(&mut ([^)]+)\);.*?\n    \}", code, re.S)}


@pytest.mark.parametrize("which", ["gpt", "nanochat"])
def test_both_backends_place_every_kernel_output_where_the_plan_says(which, request):
    g = request.getfixturevalue(which)
    mp = g.meta["memory_plan"]
    kv_index = {n.name: i for i, n in enumerate(n for n in g.nodes if n.op == "attention")}
    wgsl, plan, forms = _wgsl_outputs(g)
    unfused, _, unfused_forms = _wgsl_outputs(g, fuse=False)
    rust = _rust_blocks(g)
    assert mp["in_place"] and mp["kv_write"]
    checked = 0
    for n in g.nodes:
        if not OPS[n.op].kernel:
            continue
        if n.op == "positions":  # WGSL binds the position tables whole; Rust gathers rows into a buffer
            assert rust[n.name][0] == f"s.bufs[{mp['assign'][n.name]}]"
            continue
        kv = mp["kv_write"].get(n.name)
        if kv:
            i = kv_index[kv["attention"]]
            want_wgsl, want_rust = f"{kv['part']}cache{i}", f"s.kv[{i}].{kv['part']}"
        else:
            want_wgsl, want_rust = f"act{mp['assign'][n.name]}", f"s.bufs[{mp['assign'][n.name]}]"
        # a node fused into a later kernel (docs/plan.md, Fusions) has no dispatch: the unfused plan's places it
        assert want_wgsl in wgsl.get(n.name, unfused[n.name]), (n.name, wgsl.get(n.name))
        assert n.name in wgsl or n.op in ("elementwise", "rms_norm"), n.name
        assert plan["values"][n.name]["buffer"] == want_wgsl
        assert rust[n.name][0] == want_rust, (n.name, rust[n.name][0])
        checked += 1
        if kv:  # written by its own kernel: the attention copies only the other part
            att = kv["attention"]
            assert want_wgsl not in wgsl.get(att + ":cache", set())
            some = r"Some\(\([^()]*v\([^()]*\)\)\)"
            k_arg, v_arg = re.search(rf"k::attention\([^;]*?\), (None|{some}), (None|{some}), t, pos", rust[att][1]).groups()
            assert (k_arg if kv["part"] == "k" else v_arg) == "None"
        if n.name in mp["in_place"] and n.op == "matmul":  # the kernels' residual epilogue, Step::Own
            assert all("y = residual + " in head for head, _ in forms[n.name]), forms[n.name]
            assert "Step::Own(Binary::Add" in rust[n.name][1]
        elif n.name in mp["in_place"]:  # an elementwise dispatch over y's own rows (no x binding)
            assert [names for _, names in (forms if n.name in wgsl else unfused_forms)[n.name] if "x" in names] == []
            assert "k::elementwise_in_place(" in rust[n.name][1]
    assert checked == sum(OPS[n.op].kernel and n.op != "positions" for n in g.nodes)
    assert plan["io"]["logits"]["buffer"] == f"act{mp['assign'][g.outputs[0]]}"


def _broken(g, **change):
    g = g.copy()
    g.meta["memory_plan"] = {**g.meta["memory_plan"], **change}
    return g


def test_two_live_values_in_one_buffer_are_refused_by_name(gpt):
    mp = gpt.meta["memory_plan"]
    qkv = next(n for n in gpt.nodes if n.op == "attention")
    # the residual stream lives across the whole attention block; put the attention's output in its buffer
    stream = mp["in_place"][next(n.name for n in gpt.nodes if n.op == "matmul" and n.name in mp["in_place"])]
    assign = dict(mp["assign"], **{qkv.name: mp["assign"][stream]})
    g = _broken(gpt, assign=assign)
    with pytest.raises(PlanError, match=rf"%{qkv.name} overwrites buffer {assign[stream]} while %{stream} still lives "
                                        rf"there \(read by %\S+\): two live values in one buffer"):
        check_memory_plan(g)
    for backend in (build_plan, generate):  # each backend validates what it reads
        with pytest.raises(MonologueError, match="two live values in one buffer"):
            backend(g)


def test_an_in_place_claim_on_a_live_input_is_refused(gpt):
    mp = gpt.meta["memory_plan"]
    # an in-place add whose residual is read again later: take one and give its input a later reader
    node = next(n for n in gpt.nodes if n.name in mp["in_place"] and n.op == "matmul")
    later = next(n for n in gpt.nodes[gpt.nodes.index(node) + 1:] if n.op == "matmul" and n.name not in mp["in_place"])
    g = gpt.copy()
    g.node(later.name).inputs[0] = mp["in_place"][node.name]
    with pytest.raises(PlanError, match=rf"%{node.name} overwrites buffer \d+ while %{mp['in_place'][node.name]} "
                                        rf"still lives there \(read by %{later.name}\)"):
        check_memory_plan(g)


def test_a_kv_cache_value_read_elsewhere_is_refused(gpt):
    mp = gpt.meta["memory_plan"]
    k = next(iter(mp["kv_write"]))
    user = next(n for n in gpt.nodes if n.op == "matmul")
    g = gpt.copy()
    g.node(user.name).inputs.append(k)
    with pytest.raises(PlanError, match=rf"%{user.name} reads %{k}, which is written only into the KV cache of %\S+"):
        check_memory_plan(g)


def test_rope_k_and_a_value_embedding_mix_go_straight_into_the_caches(nanochat):
    """Only the layers without value embeddings (whose v is a slice of the q|k|v projection) copy v."""
    mp = nanochat.meta["memory_plan"]
    assert {(nanochat.node(x).op, w["part"]) for x, w in mp["kv_write"].items()} == {("rope", "k"), ("elementwise", "v")}
    written_v = {w["attention"] for w in mp["kv_write"].values() if w["part"] == "v"}
    for fuse in (False, True):  # a kv_write dispatch, or the copy part of a fused rope dispatch
        plan = build_plan(nanochat, fuse=fuse).plan
        copies = [node for d in plan["dispatch"]["decode"] for node in d.get("nodes", [d["node"]])
                  if plan["pipelines"][d["pipeline"]]["name"] in ("kv_write", "rope_parts")
                  and nanochat.node(node).op == "attention"]
        assert sorted(copies) == sorted(n.name for n in nanochat.nodes if n.op == "attention" and n.name not in written_v)
    assert "None, None, t, pos" in generate(nanochat)
