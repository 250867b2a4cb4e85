"""The Rust backend: emit the runtime crate for a compiled model and build it.

    emit_crate(graph, DIR/runtime_rs)     copy of runtime_rs/ + src/model_gen.rs from the final IR
    build_native(crate)                   the cdylib Python drives (backends/native.py)
    build_wasm(crate, DIR/runtime.wasm)   the module the web page loads (web_shell/wasm_runtime.js)

`model_gen.rs` is the schedule written out: one block per kernel of the final, scheduled IR, in
schedule order, each a call into `kernels.rs` with constant shapes, buffer numbers and offsets
taken from the memory plan. Views (reshape, slice, permute, expand, cast) whose elements are one
block per token (`ir.view_block`) cost nothing: they become offsets and strides of the tensor they
alias; the passes made every other view a `copy`, which runs `kernels::strided_copy` (as does each
input of a concat). An op or layout the runtime has no kernel for is an error that names the node,
never a silent fallback.

Toolchains: the native build uses any cargo (rustup's first). The wasm build needs a Rust with the
wasm32-unknown-unknown standard library: rustup's if it has the target, else Debian's
/usr/bin/cargo + libstd-rust-dev-wasm32 (Rust 1.63, hence the crate's 1.63 compatibility).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from .. import elementwise
from ..errors import MonologueError
from ..passes.plan import check_memory_plan
from ..ir import (OPS, SEQ, Graph, Node, concat_pieces, dense_strides, layer_norm_step, merge_dims, row_broadcast,
                  row_dims, view_block, view_refusal)
from ..resources import runtime_rs_dir

GENERATED = "model_gen.rs"
ELEMENTWISE = "elementwise.rs"
WASM_TARGET = "wasm32-unknown-unknown"
LIB_NAME = {"linux": "libruntime_rs.so", "darwin": "libruntime_rs.dylib", "win32": "runtime_rs.dll"}

INSTALL_HINT = (
    "no Rust toolchain that can build wasm32 was found. Install one of:\n"
    "  Debian/Ubuntu: apt-get install rustc cargo libstd-rust-dev-wasm32 lld\n"
    "  rustup:        rustup target add wasm32-unknown-unknown\n"
    "or pass --no-wasm to skip the browser's CPU runtime"
)


class CodegenError(MonologueError):
    """The IR holds something the Rust runtime cannot run (names the node)."""


# --- tensor locations -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Loc:
    """Where a value lives: token t's elements are `bufs[index][t * stride + off..][..len]`
    (kind "buf"), KV-cache rows at the position (kind "kv": `kv[index].k` or `.v`, token t's row at
    pos + t), a weight (kind "weight": index into the spec table), or the token ids."""

    kind: str
    index: int
    off: int
    stride: int
    len: int
    shape: tuple
    shifted: bool = False  # read by the output tail: its rows start at token t0 (see Emitter.tail)
    part: str = ""  # kind "kv": "k" or "v"

    def slot(self) -> str:
        """The State field that holds it (kinds "buf" and "kv")."""
        return f"s.kv[{self.index}].{self.part}" if self.kind == "kv" else f"s.bufs[{self.index}]"

    def view(self) -> str:
        if self.kind == "kv":
            return f"v({self.off} + pos * {self.stride}, {self.stride}, {self.len})"
        if self.shifted and self.stride:
            return f"v({self.off} + t0 * {self.stride}, {self.stride}, {self.len})"
        return f"v({self.off}, {self.stride}, {self.len})"


def _prod(xs) -> int:
    return math.prod(xs) if xs else 1


def _block(shape: tuple, name: str) -> tuple[int, int]:
    """(per-token elements, stride multiplier): activations are (1, T, ...); fixed tensors have no T."""
    if SEQ in shape:
        if shape.index(SEQ) != 1 or shape[0] != 1:
            raise CodegenError(f"%{name}: shape {shape}: the runtime needs activations laid out as (1, T, ...)")
        return _prod(shape[2:]), 1
    return _prod(shape), 0


class Emitter:
    def __init__(self, g: Graph):
        self.g = g
        cfg = g.meta.get("config", {})
        self.seq_len = int(cfg["sequence_len"])
        sched = g.meta.get("schedule")
        plan = g.meta.get("memory_plan")
        if not sched or not plan:
            raise CodegenError("the IR has no memory plan / schedule: run the whole pass pipeline first")
        self.chunk = int(sched["prefill"]["chunk"])
        self.plan = check_memory_plan(g).meta["memory_plan"]
        self.kv_index = {n.name: i for i, n in enumerate(n for n in g.nodes if n.op == "attention")}
        used = {i for n in g.nodes for i in n.inputs}
        self.weight_names = sorted(k for k in g.weights if k in used)
        self.widx = {k: i for i, k in enumerate(self.weight_names)}
        self.locs: dict[str, Loc] = {}
        self.kv_nodes: list[Node] = []
        self.shift_nodes: list[int] = []  # per-token size of each token_shift's carried row
        self.lines: list[str] = []
        self.tail = self.output_tail()
        self.compact: set[str] = set()  # values the tail computed: `rows` rows from row 0
        self.in_tail = False

    def output_tail(self) -> list[str]:
        """The nodes at the end of the schedule that only lead to the logits, one token at a time
        (matmuls, norms, elementwise: lm_head and its softcap). They run for the last `rows` tokens
        only: prefill needs the logits of one token, and the lm_head of a large vocabulary was up
        to half of its work."""
        per_token = {"matmul", "elementwise", "rms_norm", "layer_norm", "softmax", "mean", "concat", "copy", *VIEWS}
        users: dict[str, list[str]] = {}
        for n in self.g.nodes:
            for i in n.inputs:
                users.setdefault(i, []).append(n.name)
        tail: list[str] = []
        for n in reversed(self.g.nodes):
            us = users.get(n.name, [])
            leads_out = all(u in tail for u in us) and (us or n.name in self.g.outputs)
            if n.op not in per_token or not leads_out:
                break
            tail.append(n.name)
        return tail[::-1]

    # --- locations -----------------------------------------------------------------------------
    def loc(self, name: str, user: Node) -> Loc:
        if name in self.locs:
            loc = self.locs[name]
            if self.in_tail and loc.kind == "buf" and name not in self.compact:
                return replace(loc, shifted=True)
            return loc
        if name in self.widx:
            w = self.g.weights[name]
            return Loc("weight", self.widx[name], 0, 0, _prod(w.shape), tuple(w.shape))
        if name in self.g.inputs:
            return Loc("ids", 0, 0, 1, 1, tuple(self.g.inputs[name].shape))
        raise CodegenError(f"%{user.name} reads %{name}, which has no value yet")

    def define(self, n: Node) -> None:
        shape = tuple(n.type.shape)
        kv = self.plan["kv_write"].get(n.name)
        if OPS[n.op].kernel and kv is not None:
            per, _ = _block(shape, n.name)
            self.locs[n.name] = Loc("kv", self.kv_index[kv["attention"]], 0, per, per, shape, part=kv["part"])
            return
        if OPS[n.op].kernel:
            buf = self.plan["assign"].get(n.name)
            if buf is None:
                raise CodegenError(f"%{n.name}: the memory plan gives it no buffer")
            per, mult = _block(shape, n.name)
            self.locs[n.name] = Loc("buf", buf, 0, per * mult, per, shape)
            if self.in_tail:
                self.compact.add(n.name)
            return
        src = self.loc(n.inputs[0], n)
        if src.kind == "ids" or (src.kind == "weight" and self.g.weights.get(n.inputs[0], None) is not None
                                 and self.g.weights[n.inputs[0]].dtype != "f32"):
            raise CodegenError(f"%{n.name}: a {n.op} of an int8 weight or of the ids is not supported by the Rust runtime")
        block = view_block(self.g.type_of(n.inputs[0]), n)
        if block is None:
            raise CodegenError(f"%{n.name}: {view_refusal(self.g, n)}")
        start, per = block
        _block(shape, n.name)
        self.locs[n.name] = replace(src, off=src.off + start, len=per, shape=shape)

    # --- code pieces -----------------------------------------------------------------------------
    def data(self, loc: Loc) -> str:
        if loc.kind == "buf":
            return f"&s.bufs[{loc.index}]"
        if loc.kind == "weight":
            if self.g.weights[self.weight_names[loc.index]].dtype != "f32":
                raise CodegenError(f"weight {self.weight_names[loc.index]} is int8 where f32 values are needed")
            return f"w[{loc.index}].f32()"
        raise CodegenError("token ids used as a tensor operand")

    def act(self, name: str, n: Node) -> Loc:
        loc = self.loc(name, n)
        if loc.kind != "buf":
            raise CodegenError(f"%{n.name} ({n.op}): input %{name} must be an activation")
        return loc

    def steps(self, n: Node, steps: list[dict], operands: list[str], out: Loc) -> str:
        parts = []
        for st in steps:
            fn = st["fn"]
            if fn in ("rms_norm", "layer_norm"):
                vecs = []
                for key in ("operand", "bias_operand"):
                    if key not in st:
                        vecs.append("None")
                        continue
                    wl = self.loc(operands[st[key]], n)
                    if wl.kind != "weight" or wl.len != out.shape[-1]:
                        raise CodegenError(f"%{n.name}: {fn} weight/bias must be a weight of {out.shape[-1]} values")
                    vecs.append(f"Some(&{self.data(wl)}[{wl.off}..{wl.off + wl.len}])")
                if fn == "rms_norm":
                    parts.append(f"Step::RmsNorm {{ eps: {_f32(st['eps'])}, width: {out.shape[-1]}, weight: {vecs[0]} }}")
                else:
                    parts.append(f"Step::LayerNorm {{ eps: {_f32(st['eps'])}, width: {out.shape[-1]}, weight: {vecs[0]}, "
                                 f"bias: {vecs[1]} }}")
            elif fn == "softmax":
                parts.append(f"Step::Softmax {{ width: {out.shape[-1]} }}")
            elif fn in _UNARY:
                parts.append(f"Step::Unary(Unary::{_UNARY[fn]})")
            elif fn in _BINARY:
                rev = "true" if st.get("reverse") else "false"
                if "scalar" in st:
                    parts.append(f"Step::Scalar(Binary::{_BINARY[fn]}, {_f32(st['scalar'])}, {rev})")
                else:
                    ol = self.loc(operands[st["operand"]], n)
                    repeat = self.check_broadcast(n, ol, out)
                    if ol.kind == "buf" and ol.index == out.index and out.kind == "buf":
                        if self.plan["in_place"].get(n.name) != operands[st["operand"]] or repeat != 1:
                            raise CodegenError(f"%{n.name}: an epilogue operand shares the output buffer")
                        # the residual this output replaces (the memory plan's in-place add)
                        parts.append(f"Step::Own(Binary::{_BINARY[fn]}, {ol.view()}, {rev})")
                        continue
                    view = ol.view() if ol.kind == "buf" else f"v({ol.off}, 0, {ol.len})"
                    parts.append(f"Step::Tensor(Binary::{_BINARY[fn]}, Operand {{ data: {self.data(ol)}, view: {view}, repeat: {repeat} }}, {rev})")
            else:
                raise CodegenError(f"%{n.name}: epilogue step {fn!r} has no Rust kernel")
        return "&[" + ", ".join(parts) + "]"

    @staticmethod
    def check_broadcast(n: Node, op: Loc, out: Loc) -> int:
        """The operand's `repeat` over the output row (ir.row_broadcast)."""
        try:
            return row_broadcast(op.shape, out.shape)[1]
        except ValueError as e:
            raise CodegenError(f"%{n.name}: {e}") from None

    # --- kernels ---------------------------------------------------------------------------------
    def kernel(self, n: Node) -> list[str]:
        emit = KERNELS.get(n.op)
        if emit is None:
            raise CodegenError(f"%{n.name}: op {n.op!r} has no kernel in the Rust runtime ({n.source or 'no source'})")
        at = n.attrs
        out = self.locs[n.name]
        return emit(self, n, at, out, f"&mut o, {out.view()}")

    def _k_matmul(self, n: Node, at: dict, out: Loc, o: str) -> list[str]:
        x = self.act(n.inputs[0], n)
        wname = n.inputs[1]
        w = self.g.weights[wname]
        rows, cols = w.shape
        if x.len != cols or out.len != rows:
            raise CodegenError(f"%{n.name}: matmul of {x.len} inputs by {tuple(w.shape)} into {out.len}")
        pro = at.get("prologue")
        pro_s = f"Some({_f32(pro['eps'])})" if pro else "None"
        st = self.steps(n, at.get("epilogue", []), n.inputs[2:], out)
        mat = f"Mat::of(&w[{self.widx[wname]}], {rows}, {cols})"
        if at.get("gate") is None:
            return [f"k::matmul({self.data(x)}, {x.view()}, t, {pro_s}, {mat}, {o}, {st});"]
        g = self.act(n.inputs[2 + at["gate"]], n)
        if g.len != 1:
            raise CodegenError(f"%{n.name}: a matmul gate of {g.len} values per token (one is needed)")
        return [f"k::matmul_gated({self.data(x)}, {x.view()}, t, {pro_s}, Some(({self.data(g)}, {g.view()})), {mat}, {o}, {st});"]

    def _k_embedding(self, n: Node, at: dict, out: Loc, o: str) -> list[str]:
        table = self.g.weights[n.inputs[0]]
        if out.len != table.shape[1]:
            raise CodegenError(f"%{n.name}: embedding rows of {table.shape[1]} into {out.len}")
        st = self.steps(n, at.get("epilogue", []), n.inputs[2:], out)
        return [f"k::embedding(&w[{self.widx[n.inputs[0]]}], ids, {o}, {st});"]

    def _k_positions(self, n: Node, at: dict, out: Loc, o: str) -> list[str]:
        w = self.g.weights[n.inputs[0]]
        a = at["axis"]
        if any(d != 1 for d in w.shape[:a]) or w.shape[a] < self.seq_len:
            raise CodegenError(f"%{n.name}: position table {w.shape} along axis {a} does not cover sequence_len")
        row = _prod(w.shape[a + 1:])
        if row != out.len:
            raise CodegenError(f"%{n.name}: position rows of {row} into {out.len}")
        return [f"k::positions(w[{self.widx[n.inputs[0]]}].f32(), {row}, pos, t, {o});"]

    def _k_rope(self, n: Node, at: dict, out: Loc, o: str) -> list[str]:
        x, c, s_ = (self.act(i, n) for i in n.inputs[:3])
        hd = x.shape[-1]
        if c.len != hd // 2 or s_.len != hd // 2 or out.len != x.len:
            raise CodegenError(f"%{n.name}: rope tables of {c.len} for head_dim {hd}")
        st = self.steps(n, at.get("epilogue", []), n.inputs[3:], out)
        return [f"k::rope({self.data(x)}, {x.view()}, t, {hd}, {self.data(c)}, {c.view()}, {self.data(s_)}, {s_.view()}, {o}, {st});"]

    def _k_attention(self, n: Node, at: dict, out: Loc, o: str) -> list[str]:
        if at["layout"] != "BTHD":
            raise CodegenError(f"%{n.name}: attention layout {at['layout']} (the runtime reads (1, T, H, D))")
        q = self.act(n.inputs[0], n)
        k_, v_ = (self.loc(i, n) for i in n.inputs[1:])
        h, hkv, d = at["n_head"], at["n_kv_head"], at["head_dim"]
        if q.len != h * d or k_.len != hkv * d or v_.len != hkv * d or out.len != h * d:
            raise CodegenError(f"%{n.name}: attention shapes do not match n_head/n_kv_head/head_dim")
        i = len(self.kv_nodes)
        self.kv_nodes.append(n)
        kv = []
        for x, part in ((k_, "k"), (v_, "v")):
            if x.kind == "kv":  # its producer wrote it into this cache (the memory plan's KV-cache write)
                if (x.index, x.part, x.off) != (i, part, 0):
                    raise CodegenError(f"%{n.name}: its {part} was written into another cache")
                kv.append("None")
            else:
                kv.append(f"Some(({self.data(self.act(n.inputs[1 + (part == 'v')], n))}, {x.view()}))")
        shape = (f"AttnShape {{ n_head: {h}, n_kv_head: {hkv}, head_dim: {d}, scale: {_f32(at['scale'])}, "
                 f"window: {int(at.get('window') or 0)}, softcap: {_f32(at.get('softcap') or 0.0)}, "
                 f"alibi: &[{', '.join(_f32(m) for m in at.get('alibi') or [])}], "
                 f"sinks: &[{', '.join(_f32(m) for m in at.get('sinks') or [])}] }}")
        return [f"k::attention({self.data(q)}, {q.view()}, {kv[0]}, {kv[1]}, t, pos, &mut s.kv[{i}], {shape}, {o});"]

    def _k_elementwise(self, n: Node, at: dict, out: Loc, o: str) -> list[str]:
        x = self.act(n.inputs[0], n)
        if n.op == "rms_norm":
            steps = [{"fn": "rms_norm", "eps": at["eps"], **({"operand": 0} if len(n.inputs) > 1 else {})}]
        elif n.op == "layer_norm":
            steps = [layer_norm_step(n)]
        elif n.op == "softmax":
            if at["axis"] != len(n.type.shape) - 1:
                raise CodegenError(f"%{n.name}: softmax along axis {at['axis']} (the runtime's runs the last axis)")
            steps = [{"fn": "softmax"}]
        else:
            steps = at["steps"]
        if x.len != out.len:
            raise CodegenError(f"%{n.name}: {n.op} that changes the shape is not supported")
        st = self.steps(n, steps, n.inputs[1:], out)
        if self.plan["in_place"].get(n.name) == n.inputs[0]:  # the memory plan gave the output x's place
            return [f"k::elementwise_in_place({x.view()}, t, {o}, {st});"]
        return [f"k::elementwise({self.data(x)}, {x.view()}, t, {o}, {st});"]

    def _k_mean(self, n: Node, at: dict, out: Loc, o: str) -> list[str]:
        x = self.act(n.inputs[0], n)
        if at["axis"] != len(n.type.shape) - 1:
            raise CodegenError(f"%{n.name}: mean along axis {at['axis']} (the runtime averages the last axis)")
        width = self.g.type_of(n.inputs[0]).shape[-1]
        return [f"k::row_mean({self.data(x)}, {x.view()}, t, {width}, {o});"]

    def _k_topk(self, n: Node, at: dict, out: Loc, o: str) -> list[str]:
        x = self.act(n.inputs[0], n)
        width = self.g.type_of(n.inputs[0]).shape[-1]
        return [f"k::row_topk({self.data(x)}, {x.view()}, t, {width}, {at['k']}, {str(at['indices']).lower()}, {o});"]

    def _k_gather(self, n: Node, at: dict, out: Loc, o: str) -> list[str]:
        x, index = self.act(n.inputs[0], n), self.act(n.inputs[1], n)
        width, k = self.g.type_of(n.inputs[0]).shape[-1], n.type.shape[-1]
        return [f"k::row_gather({self.data(x)}, {x.view()}, {self.data(index)}, {index.view()}, t, {width}, {k}, {o});"]

    def _k_scatter(self, n: Node, at: dict, out: Loc, o: str) -> list[str]:
        index = self.act(n.inputs[0], n)
        src = self.act(n.inputs[1], n) if len(n.inputs) > 1 else None
        k = self.g.type_of(n.inputs[0]).shape[-1]
        arg = f"Some(({self.data(src)}, {src.view()}))" if src else "None"
        return [f"k::row_scatter({self.data(index)}, {index.view()}, {arg}, {_f32(at.get('value', 0.0))}, t, "
                f"{at['width']}, {k}, {o});"]

    def strided_copy(self, n: Node, x: Loc, offset: int, shape, src, dst, out: Loc, out_off: int) -> str:
        """One k::strided_copy call: element i of `shape` from x's block at offset + i.src into out's at out_off + i.dst."""
        dims, (src, dst) = merge_dims(shape, src, dst)
        if len(dims) > MAX_COPY_RANK:
            raise CodegenError(f"%{n.name}: a copy over {len(dims)} dims (the runtime's strided copy takes {MAX_COPY_RANK})")
        xv = replace(x, off=x.off + offset, len=_span(dims, src))
        ov = replace(out, off=out.off + out_off, len=_span(dims, dst)).view()
        return (f"k::strided_copy({self.data(x)}, {xv.view()}, t, &{_usizes(dims)}, &{_usizes(src)}, &{_usizes(dst)}, "
                f"&mut o, {ov});")

    def _k_copy(self, n: Node, at: dict, out: Loc, o: str) -> list[str]:
        x = self.loc(n.inputs[0], n)
        dims = row_dims(n.type.shape)
        return [self.strided_copy(n, x, at["offset"], dims, at["strides"], dense_strides(dims), out, 0)]

    def _k_concat(self, n: Node, at: dict, out: Loc, o: str) -> list[str]:
        lines, start = [], 0
        axis = at["axis"] - (len(n.type.shape) - len(row_dims(n.type.shape)))
        out_strides = dense_strides(row_dims(n.type.shape))
        for name, (dims, src, offset) in zip(n.inputs, concat_pieces(self.g, n)):
            lines.append(self.strided_copy(n, self.loc(name, n), offset, dims, src, out_strides, out, start * out_strides[axis]))
            start += dims[axis]
        return lines

    def _k_token_shift(self, n: Node, at: dict, out: Loc, o: str) -> list[str]:
        x = self.act(n.inputs[0], n)
        if at.get("axis", 1) != 1 or x.len != out.len:
            raise CodegenError(f"%{n.name}: token_shift along axis {at.get('axis')} (the runtime shifts along T)")
        i = len(self.shift_nodes)
        self.shift_nodes.append(out.len)
        return [f"k::token_shift({self.data(x)}, {x.view()}, t, pos, &mut s.shift[{i}], {o});"]

    def emit(self) -> str:
        body = []
        for n in self.g.nodes:
            if self.tail and n.name == self.tail[0]:
                body += ["    // the output tail: only the last `rows` tokens (none in a chunk whose logits no one reads)",
                         "    if rows == 0 {", "        return;", "    }", "    let t0 = t - rows;", "    let t = rows;"]
                self.in_tail = True
            self.define(n)
            if self.in_tail and not OPS[n.op].kernel and not self.loc(n.inputs[0], n).shifted:
                self.compact.add(n.name)
            if not OPS[n.op].kernel:
                continue
            out = self.locs[n.name]
            for i in n.inputs:
                src = self.locs.get(i)
                if src is not None and src.kind == out.kind == "buf" and src.index == out.index \
                        and self.plan["in_place"].get(n.name) != i:
                    raise CodegenError(f"%{n.name}: the memory plan puts an input and the output in buffer {out.index}")
            body.append(f"    // %{n.name}: {n.type} = {n.op}({', '.join('%' + i for i in n.inputs)})")
            if n.source:
                body.append(f"    //   {n.source.splitlines()[0][:150]}")
            body.append("    {")
            body.append(f"        let mut o = take(&mut {out.slot()});")
            body += ["        " + line for line in self.kernel(n)]
            body.append(f"        {out.slot()} = o;")
            body.append("    }")
        logits = self.locs[self.g.outputs[0]]
        if logits.kind != "buf" or SEQ not in logits.shape:
            raise CodegenError("the output is not a (1, T, vocab) activation")
        bufs = [b["per_token"] * self.chunk + b["fixed"] for b in self.plan["f32_buffers"]]
        specs = []
        for name in self.weight_names:
            w = self.g.weights[name]
            if w.dtype == "q8":
                kp, grp, bits = int(w.quant["k_pad"]), int(w.quant["group"]), w.bits
                if len(w.shape) != 2 or kp % grp or kp % 4 or bits not in (4, 8) or (bits == 4 and grp % 16):
                    raise CodegenError(f"weight {name}: quantized packing {w.quant} is not supported")
                q8 = f"Some(({kp}, {grp}, {bits}))"
            elif w.dtype == "f32":
                q8 = "None"
            else:
                raise CodegenError(f"weight {name}: dtype {w.dtype} is not supported")
            specs.append(f"    TensorSpec {{ name: {_rust_str(name)}, shape: &[{', '.join(map(str, w.shape))}], q8: {q8} }},")
        kv = ", ".join(f"({n.attrs['n_kv_head']}, {n.attrs['head_dim']})" for n in self.kv_nodes)
        cfg = self.g.meta.get("config", {})
        header = [
            "// Generated by monologue_compile/backends/rust_crate.py from the compiled model's final IR",
            f"// ({self.g.meta.get('arch', '?')}, quant {self.g.meta.get('quant', '?')}, {len(self.g.nodes)} IR nodes,"
            f" {len(body and [n for n in self.g.nodes if OPS[n.op].kernel])} kernels). Do not edit: recompile instead.",
            f"// config: {', '.join(f'{k}={v}' for k, v in sorted(cfg.items()))}",
            "//",
            "// `run` is the schedule: one block per kernel, in order, with constant shapes, buffer numbers",
            "// (the memory plan's) and offsets. T = ids.len() (1 in decode, up to CHUNK in prefill).",
            "#![allow(clippy::all)]",
            "",
            "use std::mem::take;",
            "",
            "use crate::engine::{ModelInfo, State};",
            "use crate::kernels::{self as k, AttnShape, Binary, Mat, Operand, Step, Unary, View};",
            "use crate::weights::{Tensor, TensorSpec};",
            "",
            "const fn v(off: usize, stride: usize, len: usize) -> View {",
            "    View { off, stride, len }",
            "}",
            "",
            f"pub const CHUNK: usize = {self.chunk};",
            "",
            f"static SPECS: [TensorSpec; {len(specs)}] = [",
            *specs,
            "];",
            "",
            "pub static INFO: ModelInfo = ModelInfo {",
            f"    vocab: {logits.len},",
            f"    seq_len: {self.seq_len},",
            "    chunk: CHUNK,",
            f"    buffers: &[{', '.join(map(str, bufs))}],",
            f"    kv: &[{kv}],",
            f"    shifts: &[{', '.join(map(str, self.shift_nodes))}],",
            "    specs: &SPECS,",
            f"    logits: ({logits.index}, {replace(logits, shifted=False).view()}),",
            f"    tail: {'true' if self.g.outputs[0] in self.compact else 'false'},",
            "};",
            "",
            "#[allow(unused_variables)]",
            "pub fn run(w: &[Tensor], s: &mut State, ids: &[u32], pos: usize, rows: usize) {",
            "    let t = ids.len();",
        ]
        unused = {"Binary", "Operand", "Unary", "Mat", "AttnShape"}
        code = "\n".join(body)
        for name in list(unused):
            if f"{name}::" in code or f"{name} {{" in code or f"{name}::of" in code:
                unused.discard(name)
        imports = [x for x in ("AttnShape", "Binary", "Mat", "Operand", "Step", "Unary", "View") if x not in unused]
        header = [line if not line.startswith("use crate::kernels::") else
                  f"use crate::kernels::{{self as k, {', '.join(imports)}}};" for line in header]
        return "\n".join(header + body + ["}", ""])


# op -> the Emitter method that writes its kernel call (views are placed by Emitter.define)
KERNELS = {
    "matmul": Emitter._k_matmul,
    "embedding": Emitter._k_embedding,
    "positions": Emitter._k_positions,
    "rope": Emitter._k_rope,
    "attention": Emitter._k_attention,
    "elementwise": Emitter._k_elementwise,
    "rms_norm": Emitter._k_elementwise,
    "layer_norm": Emitter._k_elementwise,
    "softmax": Emitter._k_elementwise,
    "mean": Emitter._k_mean,
    "topk": Emitter._k_topk,
    "gather": Emitter._k_gather,
    "scatter": Emitter._k_scatter,
    "token_shift": Emitter._k_token_shift,
    "concat": Emitter._k_concat,
    "copy": Emitter._k_copy,
}
VIEWS = ("reshape", "slice", "permute", "expand", "cast")
MAX_COPY_RANK = 8  # kernels.rs: strided_copy's index array


def _span(dims, strides) -> int:
    """Elements from the first to one past the last that a strided walk touches."""
    return 1 + sum((d - 1) * s for d, s in zip(dims, strides))


def _usizes(xs) -> str:
    return "[" + ", ".join(str(int(x)) for x in xs) + "]"


_UNARY = {name: elementwise.rust_variant(name) for name in elementwise.UNARY}
_BINARY = {name: elementwise.rust_variant(name) for name in elementwise.BINARY}


def _f32(x) -> str:
    x = float(x)
    if not math.isfinite(x):
        raise CodegenError(f"constant {x} is not finite")
    return f"{x!r}_f32"


def _rust_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def generate(g: Graph) -> str:
    """The text of model_gen.rs for the final, scheduled IR."""
    return Emitter(g).emit()


# --- the crate ---------------------------------------------------------------------------------------

def emit_crate(g: Graph, crate_dir: Path, code: str | None = None) -> Path:
    """Write the runtime crate for `g` into crate_dir (a copy of runtime_rs/ plus model_gen.rs)."""
    if code is None:
        code = generate(g)  # first: a model the runtime cannot run fails before anything is written
    crate_dir = Path(crate_dir)
    src = runtime_rs_dir()
    if crate_dir.exists():  # whole: a build.rs or .cargo/ left in an old crate must not survive
        shutil.rmtree(crate_dir)
    crate_dir.mkdir(parents=True, exist_ok=True)
    # build.rs is the package's own (it asks rustc its version, for the VNNI kernels), never a dist's
    for name in ("Cargo.toml", "Cargo.lock", "build.rs"):
        if (src / name).exists():
            shutil.copy2(src / name, crate_dir / name)
    shutil.copytree(src / "src", crate_dir / "src")
    (crate_dir / "src" / GENERATED).write_text(code)
    # the checked-in copy is what the library builds without a model; the registry is what counts
    (crate_dir / "src" / ELEMENTWISE).write_text(elementwise.rust_source())
    lib = crate_dir / "src" / "lib.rs"
    lib.write_text(lib.read_text() + "\n// the compiled model (emitted by monologue-compile)\npub mod model_abi;\npub mod model_gen;\n")
    return crate_dir


def trusted_crate(g: Graph, code: str | None = None) -> Path:
    """The crate to build for running a compiled model on this machine: the installed package's
    runtime_rs with model_gen.rs generated here from the graph (whose IR and weights load_model
    checked against the manifest), kept in the cache. A dist's own runtime_rs/ is never built: a
    build.rs or changed source in a downloaded site would run as the user."""
    code = generate(g) if code is None else code
    key = hashlib.sha256(code.encode() + crate_hash(runtime_rs_dir()).encode()).hexdigest()[:20]
    crate = cache_dir() / "crates" / key / "runtime_rs"
    if not (crate / "src" / GENERATED).exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=_mkdir(cache_dir() / "crates")))
        emit_crate(g, tmp / "runtime_rs", code)
        try:
            os.rename(tmp, crate.parent)
        except OSError:  # a concurrent caller emitted the same crate first
            shutil.rmtree(tmp, ignore_errors=True)
    return crate


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# --- toolchains and builds ---------------------------------------------------------------------------

@dataclass
class Toolchain:
    cargo: str
    rustc: str | None
    label: str

    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ)
        if self.rustc:
            env["RUSTC"] = self.rustc
            env["PATH"] = str(Path(self.rustc).parent) + os.pathsep + env.get("PATH", "")
        env.update(extra or {})
        return env


def _has_wasm_std(rustc: str) -> bool:
    try:
        sysroot = subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(sysroot) and (Path(sysroot) / "lib" / "rustlib" / WASM_TARGET / "lib").is_dir()


def find_toolchain(wasm: bool) -> Toolchain:
    """A cargo that can build natively, or (wasm=True) for wasm32; MonologueError saying what to install."""
    candidates = []
    cargo = shutil.which("cargo")
    if cargo:
        rustc = shutil.which("rustc") or str(Path(cargo).with_name("rustc"))
        candidates.append(Toolchain(cargo, rustc, "cargo on PATH"))
    if Path("/usr/bin/cargo").exists() and Path("/usr/bin/rustc").exists():
        candidates.append(Toolchain("/usr/bin/cargo", "/usr/bin/rustc", "Debian's cargo"))
    if not wasm:
        if candidates:
            return candidates[0]
        raise MonologueError("no Rust toolchain (cargo) was found; install Rust (apt-get install rustc cargo, or rustup) "
                             "to build the native runtime")
    for tc in candidates:
        if tc.rustc and _has_wasm_std(tc.rustc):
            return tc
    raise MonologueError(INSTALL_HINT.replace("\n", " "))


@contextmanager
def _target_lock(target: Path):
    """Hold the target dir while building and copying the result: every emitted crate is named
    runtime_rs, so two builds sharing a target dir write the same output path, and cargo's own
    lock ends before we copy."""
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".monologue-build.lock", "w") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no concurrent builds expected
            pass
        yield


def _cargo(tc: Toolchain, crate: Path, args: list[str], env: dict, what: str) -> None:
    # A copy of Debian's cargo (1.63) cannot read a newer Cargo.lock: the crate has no
    # dependencies, so build without one rather than fail.
    if tc.cargo == "/usr/bin/cargo" and (crate / "Cargo.lock").exists():
        head = (crate / "Cargo.lock").read_text()[:200]
        if "version = 4" in head:
            (crate / "Cargo.lock").unlink()
    r = subprocess.run([tc.cargo, "build", "--offline", "--release", *args], cwd=crate, env=tc.env(env),
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise MonologueError(f"building the {what} runtime with {tc.label} failed:\n{r.stderr[-4000:]}")


def _fast_env() -> bool:
    """MONOLOGUE_RUST_FAST=1: every build is a fast one (tests)."""
    return os.environ.get("MONOLOGUE_RUST_FAST") == "1"


def cache_dir() -> Path:
    """Where build output lives (outside dist/, which is a static site): $MONOLOGUE_CACHE or ~/.cache/monologue."""
    base = os.environ.get("MONOLOGUE_CACHE") or str(Path.home() / ".cache" / "monologue")
    return Path(base) / "rust"


def crate_hash(crate: Path, extra: str = "") -> str:
    """SHA-256 of the crate's sources: the same crate text reuses its build."""
    h = hashlib.sha256(extra.encode())
    files = [crate / "Cargo.toml", *(crate / "src").rglob("*.rs")]
    if (crate / "build.rs").exists():
        files.append(crate / "build.rs")
    for p in sorted(files):
        h.update(str(p.relative_to(crate)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:20]


def _target_for(crate: Path, kind: str) -> Path:
    """A cargo target dir per crate location: every emitted crate is a package named runtime_rs,
    and cargo does not copy a fresh package's library back over another's at target/release/."""
    where = hashlib.sha256(str(Path(crate).resolve()).encode()).hexdigest()[:16]
    root = cache_dir() / "targets"
    target = root / f"{kind}-{where}"
    if not target.exists() and root.exists():
        # keep the cache bounded: the oldest target dirs of this kind go (built libraries stay cached)
        old = sorted(root.glob(f"{kind}-*"), key=lambda p: p.stat().st_mtime)
        for p in old[: max(0, len(old) - 5)]:
            shutil.rmtree(p, ignore_errors=True)
    return target


def build_native(crate: Path, fast: bool = False, target_dir: Path | None = None) -> Path:
    """Build the cdylib for this machine and return its path (cached by the crate's sources).

    `fast`: no LTO, parallel incremental codegen: a quicker compile of a slightly slower library
    (tests); the default is the release profile (LTO, one codegen unit) benchmarks measure."""
    import sys

    fast = fast or _fast_env()
    crate = Path(crate)
    name = LIB_NAME.get(sys.platform, "libruntime_rs.so")
    cached = cache_dir() / "native" / crate_hash(crate, f"fast={fast}") / name
    if cached.exists():
        return cached
    tc = find_toolchain(wasm=False)
    env = {}
    if fast:
        env.update(CARGO_PROFILE_RELEASE_LTO="false", CARGO_PROFILE_RELEASE_CODEGEN_UNITS="16",
                   CARGO_PROFILE_RELEASE_INCREMENTAL="true")
    target = Path(target_dir) if target_dir else _target_for(crate, "native-fast" if fast else "native")
    with _target_lock(target):
        _cargo(tc, crate, ["--target-dir", str(target)], env, "native")
        lib = target / "release" / name
        if not lib.exists():
            raise MonologueError(f"the native build did not produce {lib}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        shutil.copy2(lib, tmp)
        os.replace(tmp, cached)  # atomic: a concurrent reader never sees half a library
    return cached


def build_wasm(crate: Path, out: Path, target_dir: Path | None = None, fast: bool = False) -> Path:
    """Build runtime.wasm (release, SIMD128; cached by the crate's sources and flags) and copy it to `out`.
    `fast`: as build_native."""
    fast = fast or _fast_env()
    crate = Path(crate)
    # SIMD128 is in every browser that has WebAssembly SIMD (all current ones); the glue checks.
    # Bulk memory came to each of them before SIMD did: memory.copy instead of compiler_builtins'
    # byte loops for the slice copies the crate makes (a 128 KB logits row per decode token).
    flags = "-C target-feature=+simd128,+bulk-memory"
    cached = cache_dir() / "wasm" / crate_hash(crate, f"fast={fast} {flags}") / "runtime_rs.wasm"
    if not cached.exists():
        tc = find_toolchain(wasm=True)
        target = Path(target_dir) if target_dir else _target_for(crate, "wasm-fast" if fast else "wasm")
        env = {"RUSTFLAGS": flags}
        if fast:
            env.update(CARGO_PROFILE_RELEASE_LTO="false", CARGO_PROFILE_RELEASE_CODEGEN_UNITS="16",
                       CARGO_PROFILE_RELEASE_INCREMENTAL="true")
        with _target_lock(target):
            _cargo(tc, crate, ["--target", WASM_TARGET, "--target-dir", str(target)], env, "wasm")
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}")
            shutil.copy2(target / WASM_TARGET / "release" / "runtime_rs.wasm", tmp)
            os.replace(tmp, cached)
    out = Path(out)
    shutil.copy2(cached, out)
    return out


def emit_and_build(g: Graph, dist: Path, wasm: bool = True, native: bool = False, fast: bool = False) -> dict:
    """Emit DIST/runtime_rs and build DIST/runtime.wasm (and the native library when asked).
    The build is of trusted_crate(g), the same sources outside DIST: cargo reads .cargo/config
    files in the folders above a crate, and a downloaded DIST may hold one."""
    dist = Path(dist)
    code = generate(g)
    out: dict = {"crate": emit_crate(g, dist / "runtime_rs", code)}
    if wasm or native:
        crate = trusted_crate(g, code)
        if wasm:
            out["wasm"] = build_wasm(crate, dist / "runtime.wasm", fast=fast)
        if native:
            out["native"] = build_native(crate, fast=fast)
    return out


# --- command line -------------------------------------------------------------------------------------

def _build_cmd():
    import click

    @click.command("build-runtime")
    @click.argument("dist", type=click.Path(path_type=Path, exists=True, file_okay=False))
    @click.option("--no-wasm", is_flag=True, help="skip runtime.wasm (no wasm32 toolchain needed)")
    @click.option("--native", is_flag=True, help="also build the native library (for parity and `chat --backend native`)")
    def build_runtime_cmd(dist, no_wasm, native):
        """Emit DIST/runtime_rs (the runtime crate with the model's generated code) and build DIST/runtime.wasm."""
        from ..artifact import load_model

        g, _, _ = load_model(dist)
        out = emit_and_build(g, dist, wasm=not no_wasm, native=native)
        for k, v in out.items():
            size = f" ({v.stat().st_size / 1e6:.2f} MB)" if v.is_file() else ""
            click.echo(f"{k}: {v}{size}", err=True)

    return build_runtime_cmd


build_runtime_cmd = _build_cmd()
