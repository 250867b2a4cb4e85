"""The GPU program: final scheduled IR -> rendered WGSL kernels + a dispatch plan (`model/plan.json`).

Every kernel-op node of the IR maps onto one or more kernels of `monologue_compile.wgsl.kernels`
(matmul -> matvec_int8 for decode / matmul_int8 for prefill, embedding -> embed_int8, rope ->
rope_qknorm, attention -> kv_write + attn_decode / attn_prefill); views become offsets and row
strides; `positions` binds the host cos/sin table whole (the kernels index it by step.pos).
The plan is JSON (docs/plan.md) so the browser's WebGPU executor and the wgpu-py executor
(`wgpu_executor.py`) read the same file: buffers with their initial contents (which weight shard and
byte range), pipelines, bind groups, the dispatch lists for decode and chunked prefill, and the one
16-byte `step` uniform {pos, n_tokens, 0, 0} a step rewrites.

Kernels are shape-specialized; the same rendered source serves every layer with those shapes, so a
kernel file is rendered once per distinct parameter set and its header's `covers:` names every IR
node (with its fx node and model source line) it runs for.

Buffers: where each activation lives is the IR's memory plan (passes/plan.py, the annotation the
Rust crate reads too): buffer i is `act<i>`, sized for a prefill chunk (decode uses the first row);
where the plan runs a node in place, a matmul's residual add is the kernels' `residual` epilogue and
a row op an `elementwise` dispatch over its own rows; a value the plan writes into a KV cache (rope's
k) is roped straight into the cache row at step.pos, any other k/v is copied there by kv_write.
Weight arrays larger than `max_binding` (128 MiB, WebGPU's default
maxStorageBufferBindingSize) are split by rows into several buffers: a matmul then runs one
dispatch per part (`out_offset`), an embedding one gather per part (`row_start`/`n_rows`).

Fusions (`fuse=True`, docs/plan.md), never conditions: a norm whose users are all matmuls runs as
their prologue, a q/k norm inside its rope, an elementwise map inside the one decode matvec or
elementwise kernel that reads it (each only where `passes.plan.intact_until` says the inputs it reads late are still in
their buffers), a strided decode input is read at its offset, and wgsl_fuse.py merges the rope and
cache-write dispatches of one q|k|v row. `fuse=False` emits every kernel node's own dispatches.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import elementwise
from ..errors import MonologueError
from ..passes.gate import gate_of
from ..passes.plan import check_memory_plan, intact_until
from ..ir import (SEQ, Graph, Node, concat_pieces, dense_strides, layer_norm_step, merge_dims, row_broadcast,
                  row_dims, view_block, view_refusal)
from ..wgsl import kernels as kern
from .wgsl_fuse import fuse_dispatches

PLAN_FORMAT = "monologue-plan"
PLAN_VERSION = 1
STEP_BUFFER = "step"

# WebGPU's default limits (what a page gets without asking) for the limits a plan presses on.
DEFAULT_LIMITS = {
    "maxStorageBufferBindingSize": 128 << 20,
    "maxBufferSize": 256 << 20,
    "maxStorageBuffersPerShaderStage": 8,
    "maxComputeInvocationsPerWorkgroup": 256,
    "maxComputeWorkgroupStorageSize": 16384,
    "maxComputeWorkgroupsPerDimension": 65535,
}
TOPK = 64  # the top-k list a sampling step reads back (kernels.topk supports k <= 64)
# The `cpu` profile (docs/plan.md): render parameters of its decode kernels, which have no workgroup
# memory or barriers (SwiftShader runs barriers through coroutines) and use few invocations, each
# owning whole outputs (enough to keep a CPU's cores busy, far too few for a GPU: the matvec of 512
# rows runs 64 invocations). SwiftShader, 2 cores, vs the default kernels: matvec 6-15x faster at
# every shape of a 512-wide model (lm_head 32768 x 512: 274 -> 22 ms), attention 3.5-5.6x (one
# dispatch, not two), argmax 7x (monologue_compile/wgsl/README.md).
CPU_KERNELS = {
    "matvec_int8": {"cooperative": False, "rows": 8, "wg": 16},
    "attn_decode": {"cooperative": False},
    "argmax": {"cooperative": False, "wg": 32, "per_thread": 256},
}
VIEWS = {"reshape", "slice", "permute", "expand", "cast"}
BINDING_TYPES = {"read": "read-only-storage", "read_write": "storage", "uniform": "uniform"}


@dataclass
class Loc:
    """Where a value lives: rows of `row_floats` f32 at buffer[offset + t * row_stride] (t: token)."""

    buffer: str
    offset: int
    row_stride: int
    row_floats: int
    at_pos: bool = False  # rows are at step.pos + t (a KV cache)

    def json(self):
        return {"buffer": self.buffer, "offset": self.offset, "row_stride": self.row_stride,
                "row_floats": self.row_floats, "at_pos": self.at_pos}


@dataclass
class _Pending:
    """One dispatch before rendering: kernel family call (without covers) and its buffers."""

    family: str
    args: tuple
    kwargs: dict
    buffers: dict  # binding name -> buffer name
    node: str
    index: int = 0  # which of a family's kernels (attn_decode: 0 partials, 1 combine)
    nodes: list | None = None  # a fused dispatch (wgsl_fuse.py): every node it computes, by output binding


@dataclass
class Plan:
    plan: dict
    kernels: dict[str, str]  # file name (under kernels/) -> WGSL source
    required: dict = field(default_factory=dict)  # limits above the WebGPU defaults


def _fail(n: Node, msg: str):
    raise MonologueError(f"wgsl plan: node %{n.name} ({n.op}, {n.source or 'no source'}): {msg}")


def _per_token(shape) -> int:
    return math.prod(d for d in shape if d != SEQ)


def _row_parts(nrows: int, row_bytes: int, max_binding: int) -> list[tuple[int, int]]:
    per = max(1, max_binding // max(row_bytes, 1))
    return [(r, min(r + per, nrows)) for r in range(0, nrows, per)]


class _Builder:
    def __init__(self, g: Graph, chunk: int, max_binding: int, manifest: dict | None):
        self.g, self.chunk, self.max_binding, self.manifest = g, chunk, max_binding, manifest
        self.cpu = False  # emitting the `cpu` profile's lists (see CPU_KERNELS)
        self.fuse = True  # fold nodes into the kernels that read them (build_plan's `fuse`)
        cfg = g.meta.get("config", {})
        self.S = int(cfg.get("sequence_len") or 0)
        self.buffers: dict[str, dict] = {}
        self.loc: dict[str, Loc] = {}
        self.weight_parts: dict[str, list[tuple[int, int]]] = {}
        self.kv: dict[str, tuple[str, str]] = {}
        self.producer: dict[str, Node] = {}
        self.in_place: dict[str, str] = {}  # the memory plan's: node -> the input its output overwrites
        self.users = g.users()

    # --- buffers -----------------------------------------------------------------------------
    def _buffer(self, name, nbytes, usage=("STORAGE", "COPY_DST", "COPY_SRC"), init=None, role="activation"):
        nbytes = max(16, -(-int(nbytes) // 16) * 16)
        b = self.buffers.get(name)
        if b is None:
            self.buffers[name] = {"name": name, "bytes": nbytes, "usage": list(usage), "init": init, "role": role}
        else:
            b["bytes"] = max(b["bytes"], nbytes)
        return name

    def _weight(self, name: str) -> list[tuple[str, str, int, int]]:
        """[(q buffer, scale buffer, row0, row1)] of a q8 weight, split by rows past max_binding."""
        w = self.g.weights[name]
        if name not in self.weight_parts:
            q, scale = w.data["q"], w.data["scale"]
            n, row_bytes = q.shape[0], q.shape[1] * w.bits // 8
            self.weight_parts[name] = _row_parts(n, row_bytes, self.max_binding)
            for i, (r0, r1) in enumerate(self.weight_parts[name]):
                sfx = f"#{i}" if len(self.weight_parts[name]) > 1 else ""
                self._buffer(f"w:{name}{sfx}", (r1 - r0) * row_bytes, init=self._init(name, "q", r0, r1), role="weight")
                self._buffer(f"s:{name}{sfx}", (r1 - r0) * scale.shape[1] * 4, init=self._init(name, "scale", r0, r1),
                             role="weight")
        parts = self.weight_parts[name]
        return [(f"w:{name}{f'#{i}' if len(parts) > 1 else ''}", f"s:{name}{f'#{i}' if len(parts) > 1 else ''}", r0, r1)
                for i, (r0, r1) in enumerate(parts)]

    def _table(self, name: str) -> str:
        w = self.g.weights[name]
        return self._buffer(f"t:{name}", 4 * math.prod(w.shape), init=self._init(name, "data", 0, w.shape[0]),
                            role="weight")

    def _init(self, tensor, part, r0, r1) -> dict:
        """Initial contents: rows [r0, r1) of a stored array, with the shard byte ranges holding them."""
        init = {"tensor": tensor, "part": part, "rows": [r0, r1]}
        if self.manifest is None:
            return init
        arr = self.manifest["weights"]["tensors"][tensor]["arrays"][part]
        row_bytes = math.prod(arr["shape"][1:]) * 4 if len(arr["shape"]) > 1 else 4
        pieces, dst = [], 0
        for c in arr["chunks"]:
            a, b = max(r0, c["rows"][0]), min(r1, c["rows"][1])
            if a >= b:
                continue
            off = c["offset"] + (a - c["rows"][0]) * row_bytes
            pieces.append({"shard": self.manifest["weights"]["shards"][c["shard"]], "offset": off,
                           "nbytes": (b - a) * row_bytes, "dst_offset": dst})
            dst += (b - a) * row_bytes
        init["chunks"] = pieces
        return init

    # --- locations: every value's place, from the IR's memory plan (passes/plan.py) ---------------
    def allocate(self):
        """Each value's Loc for decode and prefill alike. Buffers, in-place updates and KV-cache
        writes are the memory plan's decisions (the same the Rust crate reads): buffer id b is
        `act<b>`, sized for a prefill chunk; a value written into a KV cache lives at its rows."""
        g = self.g
        mp = check_memory_plan(g).meta["memory_plan"]
        self.in_place = mp["in_place"]
        sizes = {b["id"]: b for b in mp["f32_buffers"]}
        for n in g.nodes:
            self.producer[n.name] = n
            if n.op == "attention":
                self._kv_cache(n)
        for n in g.nodes:
            rows = _per_token(n.type.shape)
            if n.op in VIEWS:
                src = self.loc.get(n.inputs[0])
                if src is None and n.inputs[0] in g.weights and g.weights[n.inputs[0]].dtype == "f32":
                    # a view of an f32 weight (a per-layer scalar of a lambda vector): the same for every token
                    w = g.weights[n.inputs[0]]
                    src = Loc(self._table(n.inputs[0]), 0, 0, math.prod(w.shape))
                if src is None:
                    _fail(n, "a view of something that is neither an activation nor an f32 weight")
                block = view_block(g.type_of(n.inputs[0]), n)
                if block is None:
                    _fail(n, view_refusal(g, n))
                self.loc[n.name] = Loc(src.buffer, src.offset + block[0], src.row_stride, block[1], src.at_pos)
                continue
            if n.op in BOUND:
                continue  # the table is bound whole, see _emit_rope
            kv = mp["kv_write"].get(n.name)
            if kv is not None:
                self.loc[n.name] = Loc(self.kv[kv["attention"]][kv["part"] == "v"], 0, rows, rows, at_pos=True)
                continue
            b = sizes[mp["assign"][n.name]]
            self.loc[n.name] = Loc(self._buffer(f"act{b['id']}", 4 * (b["per_token"] * self.chunk + b["fixed"])), 0, rows, rows)
        self.logits = self.loc[g.outputs[0]].buffer

    def _kv_cache(self, n: Node):
        at = n.attrs
        if at.get("layout") != "BTHD":
            _fail(n, f"attention layout {at.get('layout')} (only BTHD)")
        width = at["n_kv_head"] * at["head_dim"]
        i = len(self.kv)
        k = self._buffer(f"kcache{i}", 4 * self.S * width, role="kv_cache")
        v = self._buffer(f"vcache{i}", 4 * self.S * width, role="kv_cache")
        self.kv[n.name] = (k, v)

    def _residual(self, n: Node) -> str | None:
        """The residual a matmul adds in place (its trailing epilogue add; the memory plan decided)."""
        return self.in_place.get(n.name) if n.op == "matmul" else None

    # --- dispatches -----------------------------------------------------------------------
    def emit(self, T: int) -> list[_Pending]:
        out: list[_Pending] = []
        for n in self.g.nodes:
            try:
                EMITTERS.get(n.op, _Builder._unsupported)(self, n, T, out)
            except ValueError as e:  # a kernel constructor refused the shapes
                _fail(n, str(e))
        return out

    def _kw(self, family: str, kw: dict) -> dict:
        """A kernel's render parameters, with the `cpu` profile's when emitting that."""
        return kw | CPU_KERNELS.get(family, {}) if self.cpu else kw

    def _unsupported(self, n, T, out):
        if n.op in VIEWS or n.op in BOUND:
            return
        _fail(n, f"op {n.op} has no WGSL kernel mapping")

    def _q8(self, n: Node, name: str):
        w = self.g.weights.get(name)
        if w is None or w.dtype != "q8":
            _fail(n, f"{name} is not an int8/int4 weight (the WGSL backend runs quantized weights; compile with --quant int8* or int4*)")
        return w

    def _group(self, n: Node, w, K: int) -> int:
        grp = w.quant["group"] if w.quant["group"] in (32, 64, 128) else 0
        if kern.k_pad(K, grp) != w.quant["k_pad"]:
            _fail(n, f"stored row length {w.quant['k_pad']} != the kernel's {kern.k_pad(K, grp)}")
        return grp

    def _emit_embedding(self, n, T, out):
        table = n.inputs[0]
        if n.inputs[1] not in self.g.inputs:
            _fail(n, "the gathered ids are not the model's input ids")
        w = self._q8(n, table)
        V, C = w.shape
        # An int8 row with one scale and no padding past 16 is the per-row kernel's, where the norm
        # fuses, whatever group width the manifest names for it (a row 128 wide reads group 128).
        per_row = w.bits == 8 and w.data["scale"].shape[1] == 1 and w.quant["k_pad"] == kern.k_pad(C)
        grp = 0 if per_row else self._group(n, w, C)
        ep = n.attrs.get("epilogue") or []
        # (a group-quantized table's norm runs as an elementwise step after the gather)
        norm = bool(ep) and ep[0]["fn"] == "rms_norm" and "operand" not in ep[0] and not grp
        kw = dict(norm=norm, group=grp, bits=w.bits, **({"eps": ep[0]["eps"]} if norm else {}))
        y = self.loc[n.name]
        ids_buf = self._buffer("ids", 4 * self.chunk, role="input")
        for qb, sb, r0, r1 in self._weight(table):
            out.append(_Pending("embed_int8", (T, V, C), dict(kw, row_start=r0, n_rows=r1 - r0),
                                {"ids": ids_buf, "table": qb, "scale": sb, "y": y.buffer, "step": STEP_BUFFER}, n.name))
        if ep[int(norm):]:  # the rest of the epilogue runs over the gathered rows in place
            self._steps(n, T, out, ep[int(norm):], n.inputs[2:], None, inplace=True)

    def _steps(self, n: Node, T: int, out: list, steps: list, operands: list[str], x: Loc | None, inplace=False):
        """One `elementwise` dispatch: `steps` over the rows of x (or of n's output, in place)."""
        y = self.loc[n.name]
        if y.at_pos and inplace:
            _fail(n, "elementwise steps over rows written into a KV cache")
        if x is not None and self.in_place.get(n.name) == n.inputs[0]:
            inplace = True  # the memory plan gave the output input 0's place: run the steps over it
        bufs = {} if inplace else {"x": x.buffer}
        ops = []
        for k, name in enumerate(operands):
            a = self.producer.get(name)
            if a is not None and self._inner_of(a, T):  # a's chain, computed in this kernel's loop
                (sloc, sdesc), *inner = [self._operand(a, i) for i in a.inputs]
                bufs[f"op{k}_s"] = sloc.buffer
                bufs.update({f"op{k}_{i}": loc.buffer for i, (loc, _) in enumerate(inner)})
                ops.append({"inner": {"src": sdesc, "steps": a.attrs["steps"], "operands": [d for _, d in inner]}})
                continue
            loc, desc = self._operand(n, name)
            bufs[f"op{k}"] = loc.buffer
            ops.append(desc)
        for b in bufs.values():
            if b == y.buffer:
                _fail(n, "an operand shares the output buffer")
        bufs.update(y=y.buffer, step=STEP_BUFFER)
        kw = dict(width=n.type.shape[-1], inplace=inplace, y_offset=y.offset, y_row_stride=y.row_stride, y_at_pos=y.at_pos)
        if not inplace:
            kw.update(x_offset=x.offset, x_row_stride=x.row_stride)
        out.append(_Pending("elementwise", (T, y.row_floats, steps, ops), kw, bufs, n.name))

    def _pack(self, n: Node, T: int, out: list, x: Loc) -> Loc:
        """A copy of the strided rows x into a packed scratch buffer (for kernels that read packed rows)."""
        buf = self._buffer(f"pack:{n.name}", 4 * self.chunk * x.row_floats, role="scratch")
        out.append(_Pending("elementwise", (T, x.row_floats, [], []),
                            dict(x_offset=x.offset, x_row_stride=x.row_stride), {"x": x.buffer, "y": buf, "step": STEP_BUFFER},
                            n.name))
        return Loc(buf, 0, x.row_floats, x.row_floats)

    def _source(self, n: Node, name: str) -> Loc:
        """Where a copy reads: an activation, an f32 weight (the same row for every token) or a
        position table (rows from step.pos)."""
        p = self.producer.get(name)
        if p is not None and p.op in BOUND:
            table = self.g.weights[p.inputs[0]]
            if p.attrs.get("axis") != 1 or table.shape[0] != 1 or table.shape[1] < self.S:
                _fail(n, f"position table {p.inputs[0]} {table.shape} is not (1, >= sequence_len, ...)")
            row = math.prod(table.shape[2:])
            return Loc(self._table(p.inputs[0]), 0, row, row, at_pos=True)
        if name in self.g.weights:
            if self.g.weights[name].dtype != "f32":
                _fail(n, f"operand {name} is an int8 weight")
            return Loc(self._table(name), 0, 0, math.prod(self.g.weights[name].shape))
        loc = self.loc.get(name)
        if loc is None:
            _fail(n, f"operand %{name} is not an activation")
        return loc

    def _operand(self, n: Node, name: str) -> tuple[Loc, dict]:
        """Where a tensor operand lives and how element j of row t reads it (kernels.elementwise)."""
        try:
            length, repeat = row_broadcast(self.g.type_of(name).shape, n.type.shape)
        except ValueError as e:
            _fail(n, str(e))
        loc = self._source(n, name)
        return loc, dict(len=length, repeat=repeat, offset=loc.offset, row_stride=loc.row_stride, at_pos=loc.at_pos)

    def _folded_map(self, n: Node, T: int) -> bool:
        """Whether elementwise n runs as the map prologue of the one decode matvec that reads it
        (silu(gate) * up before a down projection) instead of a dispatch of its own: steps that map
        each element (no norm or softmax), every operand a whole row like x, each at an offset the
        matvec reads as vec4, all left intact by the memory plan until the matvec runs and none in
        its output's buffer (a binding both read and written in one dispatch is invalid)."""
        if not self.fuse or T != 1 or n.op != "elementwise" or n.name in self.g.outputs:
            return False
        users = self.users.get(n.name, [])
        if len(users) != 1 or users[0].op != "matmul" or users[0].inputs[0] != n.name or n.name in users[0].inputs[1:]:
            return False
        L = _per_token(n.type.shape)
        if any(st["fn"] not in elementwise.FUNCTIONS for st in n.attrs["steps"]):
            return False
        y = self.loc[users[0].name].buffer
        for name in n.inputs[:1] + self._map_chain(n, users[0])[1]:
            loc = self.loc.get(name)
            if (loc is None or loc.at_pos or loc.row_floats != L or loc.offset % 4 or self.g.type_of(name).shape != n.type.shape
                    or loc.buffer == y or not intact_until(self.g, name, users[0].name, skip=(n.name,))):
                return False
        return True

    @staticmethod
    def _map_chain(n: Node, mm: Node) -> tuple[list, list[str]]:
        """Elementwise n's steps and operands as the map prologue of matmul mm: a final pick by mm's
        gate, there only to zero the rows mm does not read (passes/gate.py), is left out."""
        steps, ops = list(n.attrs["steps"]), list(n.inputs[1:])
        last = steps[-1] if steps else {}
        if (last.get("fn") == "pick" and last.get("operand") == len(ops) - 1 and ops[-1] == gate_of(mm)
                and all(st.get("operand") != len(ops) - 1 for st in steps[:-1])):
            return steps[:-1], ops[:-1]
        return steps, ops

    def _inner_of(self, n: Node, T: int) -> bool:
        """Whether elementwise n runs inside the one elementwise kernel that reads it as an operand
        (its chain computed per element there, nanochat's `lambda_r * x` before `+ lambda_0 * x0`)
        instead of a dispatch of its own: both chains map elements only, the same shape, n's inputs
        left intact by the memory plan until then, none in the reader's output buffer, and none
        itself computed inside n (one level: the reader's kernel reads n's inputs from their buffers)."""
        if not self.fuse or n.op != "elementwise" or n.name in self.g.outputs:
            return False
        users = self.users.get(n.name, [])
        if len(users) != 1:
            return False
        b = users[0]
        if (b.op != "elementwise" or b.inputs[0] == n.name or b.inputs.count(n.name) != 1 or b.type.shape != n.type.shape
                or len(b.inputs) + len(n.inputs) > kern.MAX_STORAGE_BUFFERS or self._folded_map(b, T)):
            return False
        if any(st["fn"] not in elementwise.FUNCTIONS for st in n.attrs["steps"] + b.attrs["steps"]):
            return False
        for name in n.inputs:
            if name in self.g.weights:
                if self.g.weights[name].dtype != "f32":
                    return False
                continue
            loc = self.loc.get(name)
            if loc is None or loc.buffer == self.loc[b.name].buffer or self._inner_of(self.g.node(name), T):
                return False
            if self.buffers[loc.buffer]["role"] != "weight" and not intact_until(self.g, name, b.name, skip=(n.name,)):
                return False  # an activation the plan overwrites before b runs
        return True

    def _emit_elementwise(self, n, T, out):
        if self._folded_map(n, T) or self._inner_of(n, T):
            return  # its user's prologue (_emit_matmul), or computed inside its user's kernel (_steps)
        x = self.loc.get(n.inputs[0])
        if x is None or x.row_floats != _per_token(n.type.shape):
            _fail(n, "input 0 is not an activation of the output's shape")
        self._steps(n, T, out, n.attrs["steps"], n.inputs[1:], x)

    def _strided_copy(self, n: Node, T: int, out: list, x: Loc, offset: int, shape, src, dst, y: Loc, y_offset: int):
        """One strided_copy dispatch: element i of `shape` from x's rows at offset + i.src into y's at y_offset + i.dst."""
        if y.at_pos:
            _fail(n, "a copy into rows of a KV cache")
        dims, (src, dst) = merge_dims(shape, src, dst)
        out.append(_Pending("strided_copy", (T, dims, src, dst),
                            dict(x_offset=x.offset + offset, x_row_stride=x.row_stride, x_at_pos=x.at_pos,
                                 y_offset=y.offset + y_offset, y_row_stride=y.row_stride),
                            {"x": x.buffer, "y": y.buffer, "step": STEP_BUFFER}, n.name))

    def _emit_copy(self, n, T, out):
        x = self._source(n, n.inputs[0])
        dims = row_dims(n.type.shape)
        self._strided_copy(n, T, out, x, n.attrs["offset"], dims, n.attrs["strides"], dense_strides(dims), self.loc[n.name], 0)

    def _emit_concat(self, n, T, out):
        axis = n.attrs["axis"] - (len(n.type.shape) - len(row_dims(n.type.shape)))
        out_strides = dense_strides(row_dims(n.type.shape))
        start = 0
        for name, (dims, src, offset) in zip(n.inputs, concat_pieces(self.g, n)):
            self._strided_copy(n, T, out, self._source(n, name), offset, dims, src, out_strides, self.loc[n.name],
                               start * out_strides[axis])
            start += dims[axis]

    def _emit_layer_norm(self, n, T, out):
        x = self.loc.get(n.inputs[0])
        if x is None or x.row_floats != _per_token(n.type.shape):
            _fail(n, "input 0 is not an activation of the output's shape")
        self._steps(n, T, out, [layer_norm_step(n)], n.inputs[1:], x)

    def _emit_softmax(self, n, T, out):
        x = self.loc.get(n.inputs[0])
        if x is None or x.row_floats != _per_token(n.type.shape) or n.attrs["axis"] != len(n.type.shape) - 1:
            _fail(n, "softmax of something that is not an activation, or not along the last axis")
        self._steps(n, T, out, [{"fn": "softmax"}], [], x)

    @staticmethod
    def _rows(**locs) -> dict:
        """The offset and row stride kwargs of a row kernel's bindings (x=..., i=... for x_offset, i_offset)."""
        return {f"{k}_{f}": getattr(loc, a) for k, loc in locs.items()
                for f, a in (("offset", "offset"), ("row_stride", "row_stride"))}

    def _emit_mean(self, n, T, out):
        x, y = self.loc.get(n.inputs[0]), self.loc[n.name]
        width = self.g.type_of(n.inputs[0]).shape[-1]
        if x is None or x.at_pos or n.attrs["axis"] != len(n.type.shape) - 1:
            _fail(n, "mean of something that is not an activation, or not along the last axis")
        out.append(_Pending("row_mean", (T, x.row_floats, width), self._rows(x=x, y=y),
                            {"x": x.buffer, "y": y.buffer, "step": STEP_BUFFER}, n.name))

    def _emit_topk(self, n, T, out):
        x, y = self.loc.get(n.inputs[0]), self.loc[n.name]
        width = self.g.type_of(n.inputs[0]).shape[-1]
        if x is None or x.at_pos:
            _fail(n, "topk of something that is not an activation")
        out.append(_Pending("row_topk", (T, x.row_floats, width, n.attrs["k"], n.attrs["indices"]), self._rows(x=x, y=y),
                            {"x": x.buffer, "y": y.buffer, "step": STEP_BUFFER}, n.name))

    def _emit_gather(self, n, T, out):
        x, index, y = self.loc.get(n.inputs[0]), self.loc.get(n.inputs[1]), self.loc[n.name]
        if x is None or x.at_pos or index is None or index.at_pos:
            _fail(n, "gather of something that is not an activation, or by one")
        out.append(_Pending("row_gather", (T, x.row_floats, self.g.type_of(n.inputs[0]).shape[-1], n.type.shape[-1]),
                            self._rows(x=x, i=index, y=y), {"x": x.buffer, "index": index.buffer, "y": y.buffer, "step": STEP_BUFFER}, n.name))

    def _emit_scatter(self, n, T, out):
        index, y = self.loc.get(n.inputs[0]), self.loc[n.name]
        src = self.loc.get(n.inputs[1]) if len(n.inputs) > 1 else None
        if index is None or index.at_pos or (len(n.inputs) > 1 and (src is None or src.at_pos)):
            _fail(n, "scatter of something that is not an activation, or by one")
        k = self.g.type_of(n.inputs[0]).shape[-1]
        kw = self._rows(i=index, y=y, **({"s": src} if src is not None else {}))
        bufs = {"index": index.buffer, "y": y.buffer, "step": STEP_BUFFER}
        if src is not None:
            bufs["src"] = src.buffer
        out.append(_Pending("row_scatter", (T, index.row_floats // k, n.attrs["width"], k,
                                            None if src is not None else float(n.attrs.get("value", 0.0))),
                            kw, bufs, n.name))

    def _emit_token_shift(self, n, T, out):
        x, y = self.loc.get(n.inputs[0]), self.loc[n.name]
        L = _per_token(n.type.shape)
        if x is None or x.at_pos or x.row_floats != L or n.attrs.get("axis", 1) != 1:
            _fail(n, "token_shift of something that is not an activation row, or not along T")
        carried = self._buffer(f"shift:{n.name}", 4 * L, role="state")
        kw = self._rows(x=x, y=y)
        bufs = {"x": x.buffer, "carried": carried, "y": y.buffer, "step": STEP_BUFFER}
        for i in range(2):
            out.append(_Pending("token_shift", (T, L), kw, bufs, n.name, index=i))

    def _folded_norm(self, n: Node, T: int) -> bool:
        """Whether RMSNorm n runs as the prologue of every matmul that reads it (its weight scaling x
        there) instead of a dispatch of its own: each user a matmul taking n as its input without a
        prologue, n's input a whole row of K that the memory plan leaves intact until the last user
        (a strided row only where the kernel reads at an offset: the matvec)."""
        if not self.fuse or n.op != "rms_norm" or n.name in self.g.outputs:
            return False
        x = self.loc.get(n.inputs[0])
        K = n.type.shape[-1]
        if x is None or x.at_pos or x.row_floats != K or K % 4:
            return False
        if (x.offset or x.row_stride != K) and (T > 1 or x.offset % 4):
            return False
        if len(n.inputs) > 1:
            w = self.g.weights.get(n.inputs[1])
            if w is None or w.dtype != "f32" or math.prod(w.shape) != K:
                return False
        users = self.users.get(n.name, [])
        if not users or any(u.op != "matmul" or u.inputs[0] != n.name or n.name in u.inputs[1:] or u.attrs.get("prologue")
                            for u in users):
            return False
        return intact_until(self.g, n.inputs[0], users[-1].name, skip=(n.name,))

    def _emit_rms_norm(self, n, T, out):
        if self._folded_norm(n, T) or self._pre_rope_norm(n):
            return  # its users' prologue (_emit_matmul), or inside the rope kernel (_emit_rope)
        x = self.loc.get(n.inputs[0])
        if x is None or x.row_floats != _per_token(n.type.shape):
            _fail(n, "input 0 is not an activation of the output's shape")
        step = {"fn": "rms_norm", "eps": n.attrs["eps"], **({"operand": 0} if len(n.inputs) > 1 else {})}
        self._steps(n, T, out, [step], n.inputs[1:], x)

    def _epilogue(self, n: Node) -> dict:
        """The matrix kernels' epilogue `y (+)= steps(acc + bias)`: a leading add of a weight is the bias
        binding, a trailing add of the dying residual stream is done in place, and the steps between
        are rendered from their elementwise definitions (any chain of unary and scalar steps)."""
        steps = list(n.attrs.get("epilogue") or [])
        ops = n.inputs[2:]
        kw: dict = {}
        if self._residual(n) is not None:
            steps.pop()
            kw["residual"] = True
        if steps and steps[0].get("fn") == "add" and "operand" in steps[0] and ops[steps[0]["operand"]] in self.g.weights:
            kw["bias"] = ops[steps.pop(0)["operand"]]
        # from the first step that reads a tensor (or norms a row) on, the steps run as an in-place
        # elementwise dispatch after the matrix kernel
        cut = next((i for i, st in enumerate(steps) if "operand" in st or st["fn"] not in elementwise.FUNCTIONS), len(steps))
        if steps[:cut]:
            kw["steps"] = steps[:cut]
        if steps[cut:]:
            if kw.get("residual"):
                _fail(n, f"epilogue steps {steps[cut:]} before an in-place residual add")
            kw["rest"] = steps[cut:]
        return kw

    def _emit_matmul(self, n, T, out):
        wname = n.inputs[1]
        w = self._q8(n, wname)
        N, K = w.shape
        pro = n.attrs.get("prologue")
        before = self.producer.get(n.inputs[0])
        folded = before if before is not None and self._folded_norm(before, T) else None
        if folded is not None:  # the norm before this matmul, as its prologue
            pro = {"rms_norm": True, "eps": folded.attrs["eps"]}
        mapped = before if before is not None and self._folded_map(before, T) else None
        x = self.loc[(folded or mapped).inputs[0] if folded or mapped else n.inputs[0]]
        if x.row_floats != K or x.at_pos:
            _fail(n, "input rows are not K contiguous floats")
        x_offset = {}
        if x.offset or x.row_stride != K:
            if T == 1 and self.fuse and x.offset % 4 == 0:  # one row: the matvec reads it at its offset
                x_offset = {"x_offset": x.offset}
            else:  # a strided view: the matmul kernels read packed rows
                x = self._pack(n, T, out, x)
        ep = self._epilogue(n)
        bias = ep.pop("bias", None)
        rest = ep.pop("rest", None)
        kw = dict(group=self._group(n, w, K), bits=w.bits, norm=bool(pro), **ep)
        if pro:
            kw["eps"] = pro["eps"]
        norm_weight = folded.inputs[1] if folded is not None and len(folded.inputs) > 1 else None
        if norm_weight:
            kw["norm_weight"] = True
        if n.attrs.get("gate") is not None:  # one value per token: a row whose gate is 0 has a product of 0
            gate = self.loc[n.inputs[2 + n.attrs["gate"]]]
            if gate.row_floats != 1 or gate.at_pos:
                _fail(n, "its gate is not one value per token")
            kw.update(gate=True, gate_offset=gate.offset, **({"gate_row_stride": gate.row_stride} if T > 1 else {}))
        map_steps, map_names = self._map_chain(mapped, n) if mapped is not None else ([], [])
        map_ops = [self.loc[o] for o in map_names]
        if mapped is not None:  # the elementwise before this matvec, as its map prologue
            kw.update(prologue=map_steps, prologue_operands=[o.offset for o in map_ops])
        y = self.loc[n.name]
        for qb, sb, r0, r1 in self._weight(wname):
            bufs = {"w": qb, "scale": sb, "x": x.buffer, "y": y.buffer, "step": STEP_BUFFER}
            if norm_weight:
                bufs["nw"] = self._table(norm_weight)
            bufs.update({f"p{i}": o.buffer for i, o in enumerate(map_ops)})
            if kw.get("gate"):
                bufs["gate"] = gate.buffer
            if bias:
                if len(self.weight_parts[wname]) > 1:
                    _fail(n, "a bias on a weight split across bindings")
                bufs["bias"] = self._table(bias)
            if T == 1:
                out.append(_Pending("matvec_int8", (r1 - r0, K),
                                    self._kw("matvec_int8", dict(kw, bias=bool(bias), out_offset=r0, out_len=N, **x_offset)),
                                    bufs, n.name))
            else:
                out.append(_Pending("matmul_int8", (T, r1 - r0, K), dict(kw, bias=bool(bias), out_offset=r0,
                                                                          out_row_stride=N), bufs, n.name))
        if rest:
            self._steps(n, T, out, rest, n.inputs[2:], None, inplace=True)

    def _pre_rope_norm(self, n: Node) -> bool:
        """Whether RMSNorm n (over head_dim, optionally weighted) runs inside the one rope kernel that
        reads it, normalizing each head before the rotation (Qwen3's q/k norms), instead of a
        dispatch of its own."""
        if not self.fuse or n.op != "rms_norm" or n.name in self.g.outputs:
            return False
        users = self.users.get(n.name, [])
        x = self.loc.get(n.inputs[0])
        if (len(users) != 1 or users[0].op != "rope" or users[0].inputs[0] != n.name or x is None or x.at_pos
                or x.row_floats != _per_token(n.type.shape)):
            return False
        D = n.type.shape[-1]
        if len(n.inputs) > 1:
            w = self.g.weights.get(n.inputs[1])
            if w is None or w.dtype != "f32" or math.prod(w.shape) != D:
                return False
        return intact_until(self.g, n.inputs[0], users[0].name, skip=(n.name,))

    def _emit_rope(self, n, T, out):
        pre = self.producer.get(n.inputs[0])
        pre = pre if pre is not None and self._pre_rope_norm(pre) else None
        x = self.loc[pre.inputs[0] if pre is not None else n.inputs[0]]
        _, _, H, D = n.type.shape
        if x.row_floats != H * D:
            _fail(n, "rope input rows are not heads * head_dim")
        tables = []
        for t in n.inputs[1:3]:
            p = self.producer.get(t)
            if p is None or p.op != "positions" or p.attrs.get("axis") != 1:
                _fail(n, f"cos/sin %{t} is not a positions() lookup of a host table")
            tab = self.g.weights[p.inputs[0]]
            if tab.shape[-1] != D // 2 or tab.shape[1] < self.S:
                _fail(n, f"table {p.inputs[0]} {tab.shape} does not fit head_dim {D}")
            tables.append(self._table(p.inputs[0]))
        steps = list(n.attrs.get("epilogue") or [])
        kw, bufs = {"qk_norm": False}, {}
        if steps and steps[0].get("fn") == "rms_norm":
            st = steps.pop(0)
            kw.update(qk_norm=True, eps=st["eps"])
            if "operand" in st:  # a norm weight after the rotation (HunYuan)
                w = n.inputs[3 + st["operand"]]
                if w not in self.g.weights:
                    _fail(n, f"rope epilogue norm weight %{w} is not a weight")
                kw["post_weight"] = True
                bufs["qw"] = self._table(w)
        if steps and steps[0].get("fn") == "mul" and "scalar" in steps[0]:
            kw["post_scale"] = float(steps.pop(0)["scalar"])
        y = self.loc[n.name]
        bufs.update({"x": x.buffer, "cos": tables[0], "sin": tables[1], "y": y.buffer, "step": STEP_BUFFER})
        if pre is not None:  # the RMSNorm before the rotation
            kw.update(pre_norm=True, pre_eps=pre.attrs["eps"], pre_weight=len(pre.inputs) > 1)
            if len(pre.inputs) > 1:
                bufs["pw"] = self._table(pre.inputs[1])
        out.append(_Pending("rope_qknorm", (T, H, D), dict(kw, inplace=False, in_offset=x.offset, in_row_stride=x.row_stride,
                                                            out_offset=0, out_at_pos=y.at_pos, out_row_stride=y.row_stride),
                            bufs, n.name))
        if steps:  # the rest of the epilogue (Ministral 3's per-position query scale): over y, in place
            self._steps(n, T, out, steps, n.inputs[3:], None, inplace=True)

    def _emit_attention(self, n, T, out):
        at = n.attrs
        H, Hkv, D = at["n_head"], at["n_kv_head"], at["head_dim"]
        kc, vc = self.kv[n.name]
        q, k, v = (self.loc[i] for i in n.inputs)
        if any(self.g.type_of(i).shape[-1] != D for i in n.inputs):
            _fail(n, f"q, k and v heads of other sizes than head_dim {D}")
        if q.at_pos:
            _fail(n, "q is written into a KV cache")
        if q.offset or q.row_stride != H * D:  # a strided view (q inside merged q|k|v rows): pack it
            q = self._pack(n, T, out, q)
        for src, cache in ((k, kc), (v, vc)):
            if src.at_pos:
                if src.buffer != cache:
                    _fail(n, "k/v written into another cache")
                continue
            out.append(_Pending("kv_write", (T, Hkv * D), dict(src_offset=src.offset, src_row_stride=src.row_stride),
                                {"src": src.buffer, "cache": cache, "step": STEP_BUFFER}, n.name))
        kw = dict(window_left=at["window"] - 1 if at.get("window") else None, scale=at["scale"],
                  **{k: at[k] for k in ("softcap", "alibi", "sinks") if at.get(k)})
        y = self.loc[n.name]
        if T == 1:
            kw = self._kw("attn_decode", kw)
            bufs = {"q": q.buffer, "k": kc, "v": vc, "out": y.buffer, "step": STEP_BUFFER}
            parts = kern.attn_decode(H, Hkv, D, self.S, **kw)
            if len(parts) == 2:  # partials and combine, through scratch
                bufs.update(ml="attn_ml", o="attn_o")
                self._buffer("attn_ml", 4 * parts[0].info["ml"], role="scratch")
                self._buffer("attn_o", 4 * parts[0].info["o"], role="scratch")
            for i in range(len(parts)):
                out.append(_Pending("attn_decode", (H, Hkv, D, self.S), kw, bufs, n.name, index=i))
        else:
            out.append(_Pending("attn_prefill", (T, H, Hkv, D, self.S), kw,
                                {"q": q.buffer, "k": kc, "v": vc, "out": y.buffer, "step": STEP_BUFFER}, n.name))

    def sampling(self) -> tuple[list[_Pending], list[_Pending]]:
        """GPU argmax and top-k over the decode logits (row 0 of the logits buffer)."""
        V = self.g.type_of(self.g.outputs[0]).shape[-1]
        am, tk = [], []
        kw = self._kw("argmax", {})
        stages = kern.argmax(V, **kw)
        self._buffer("argmax_pairs", 4 * stages[0].info["pairs"], role="scratch")
        self._buffer("argmax_out", 8, role="output")
        am.append(_Pending("argmax", (V,), kw, {"x": self.logits, "pairs": "argmax_pairs"}, "argmax", 0))
        am.append(_Pending("argmax", (V,), kw, {"pairs": "argmax_pairs", "out": "argmax_out"}, "argmax", 1))
        k = min(TOPK, V)
        stages = kern.topk(V, k)
        prev = (self.logits, None)
        for i, s in enumerate(stages):
            vb, ib = f"topk_vals{i % 2}", f"topk_ids{i % 2}"
            self._buffer(vb, 4 * s.info["out"], role="scratch")
            self._buffer(ib, 4 * s.info["out"], role="scratch")
            bufs = {"vals": prev[0], "vals_out": vb, "ids_out": ib}
            if prev[1]:
                bufs["ids"] = prev[1]
            tk.append(_Pending("topk", (V, k), {}, bufs, "topk", i))
            prev = (vb, ib)
        self.topk_out = prev
        self.topk_k = k
        return am, tk


# op -> the method that appends its dispatches; views become offsets (allocate), and BOUND ops
# are read by their users' kernels straight from the weight they index.
EMITTERS = {
    "embedding": _Builder._emit_embedding,
    "matmul": _Builder._emit_matmul,
    "rope": _Builder._emit_rope,
    "attention": _Builder._emit_attention,
    "elementwise": _Builder._emit_elementwise,
    "rms_norm": _Builder._emit_rms_norm,
    "layer_norm": _Builder._emit_layer_norm,
    "token_shift": _Builder._emit_token_shift,
    "concat": _Builder._emit_concat,
    "copy": _Builder._emit_copy,
    "softmax": _Builder._emit_softmax,
    "mean": _Builder._emit_mean,
    "topk": _Builder._emit_topk,
    "gather": _Builder._emit_gather,
    "scatter": _Builder._emit_scatter,
}
BOUND = ("positions",)


def _covers(g: Graph, names: list[str]) -> list[str]:
    out = []
    for name in dict.fromkeys(names):
        try:
            src = g.node(name).source
        except KeyError:
            src = ""
        fx = src.split(" @ ")[0] if src else ""
        line = src.split(" @ ")[1].split(" ")[0] if " @ " in src else ""
        out.append(f"%{name}" + (f" ({fx} @ {line})" if fx else ""))
    return out


def build_plan(g: Graph, *, chunk: int | None = None, max_binding: int = DEFAULT_LIMITS["maxStorageBufferBindingSize"],
               manifest: dict | None = None, fuse: bool = True) -> Plan:
    """The plan and kernel sources for a final IR graph. `manifest` (the artifact's) resolves each
    weight buffer's initial contents to shard byte ranges; without it they name tensor rows only.
    `fuse`: run the dispatch fusions (wgsl_fuse.py, and the norm prologues of `_Builder`); without
    them every kernel node keeps its own dispatches (the reference the fused plan is tested against)."""
    chunk = int(chunk or g.meta.get("schedule", {}).get("prefill", {}).get("chunk", 64))
    b = _Builder(g, chunk, max_binding, manifest)
    b.fuse = fuse
    if b.S <= 0:
        raise MonologueError("wgsl plan: the graph's config has no sequence_len")
    b._buffer(STEP_BUFFER, kern.STEP_BYTES, usage=("UNIFORM", "COPY_DST"), role="uniform")
    b.allocate()
    lists = {"prefill": b.emit(chunk), "decode": b.emit(1)}
    lists["argmax"], lists["topk"] = b.sampling()
    # The `cpu` profile: the lists whose kernels differ on CPU adapters (docs/plan.md).
    b.cpu = True
    cpu_lists = {"decode": b.emit(1)}
    cpu_lists["argmax"], cpu_lists["topk"] = b.sampling()

    def key(pend):
        return json.dumps([pend.family, pend.args, pend.kwargs, pend.index], sort_keys=True)

    if fuse:
        lists = {name: fuse_dispatches(lst) for name, lst in lists.items()}
        cpu_lists = {name: fuse_dispatches(lst) for name, lst in cpu_lists.items()}

    cpu_lists = {name: lst for name, lst in cpu_lists.items() if [key(p) for p in lst] != [key(p) for p in lists[name]]}
    every = [*lists.values(), *cpu_lists.values()]

    # render each distinct kernel once; its header names every node it serves
    groups: dict[str, list] = {}
    for pend in (p for lst in every for p in lst):
        groups.setdefault(key(pend), []).extend(pend.nodes or [pend.node])
    rendered: dict[str, kern.Kernel] = {}
    for k_, nodes in groups.items():
        family, args, kwargs, index = json.loads(k_)
        k = kern.FAMILIES[family](*args, covers=_covers(g, nodes), **kwargs)
        rendered[k_] = k[index] if isinstance(k, list) else k
    pipelines, pipe_index, kernels = [], {}, {}
    bind_groups, bg_index = [], {}

    def dispatches(lst):
        out = []
        for pend in lst:
            k = rendered[key(pend)]
            if key(pend) not in pipe_index:
                fname = f"{len(pipelines):03d}_{k.name}.wgsl"
                kernels[fname] = k.wgsl
                pipe_index[key(pend)] = len(pipelines)
                pipelines.append({"name": k.name, "kernel": f"kernels/{fname}", "entry_point": k.entry_point,
                                  "workgroup_size": [k.workgroup_size, 1, 1], "workgroup_bytes": k.workgroup_bytes,
                                  "features": list(k.features),
                                  "bindings": [{"binding": i, "name": bb.name, "type": BINDING_TYPES[bb.kind]}
                                               for i, bb in enumerate(k.bindings)]})
            pi = pipe_index[key(pend)]
            entries = [pend.buffers[bb.name] for bb in k.bindings]
            written = {e for e, bb in zip(entries, k.bindings) if bb.kind == "read_write"}
            if any(entries.count(e) > 1 for e in written):
                # WebGPU refuses a buffer bound for writing and once more in one dispatch: a fusion
                # that missed an alias (a bug here, not the model's)
                raise MonologueError(f"wgsl plan: the {k.name} dispatch of %{pend.node} binds a buffer it writes a second "
                                     f"time ({dict(zip([bb.name for bb in k.bindings], entries))})")
            bkey = json.dumps([pi, entries])
            if bkey not in bg_index:
                bg_index[bkey] = len(bind_groups)
                bind_groups.append({"pipeline": pi, "entries": entries})
            out.append({"pipeline": pi, "bind_group": bg_index[bkey], "workgroups": list(k.workgroups), "node": pend.node,
                        **({"nodes": pend.nodes} if pend.nodes else {})})
        return out

    dispatch = {name: dispatches(lst) for name, lst in lists.items()}
    profiles = {"cpu": {"dispatch": {name: dispatches(lst) for name, lst in cpu_lists.items()}}}
    V = g.type_of(g.outputs[0]).shape[-1]
    plan = {
        "format": PLAN_FORMAT, "version": PLAN_VERSION,
        "chunk": chunk, "max_seq": b.S, "vocab_size": V,
        "uniforms": {"step": {"buffer": STEP_BUFFER, "bytes": kern.STEP_BYTES, "fields": {"pos": 0, "n_tokens": 4}}},
        "io": {"ids": "ids", "logits": {"buffer": b.logits, "row_floats": V},
               "argmax": {"buffer": "argmax_out"},
               "topk": {"k": b.topk_k, "values": b.topk_out[0], "ids": b.topk_out[1]}},
        "buffers": sorted(b.buffers.values(), key=lambda x: x["name"]),
        "pipelines": pipelines,
        "bind_groups": bind_groups,
        "dispatch": dispatch,
        "profiles": profiles,
        "values": {name: loc.json() for name, loc in b.loc.items()},
    }
    required = check_limits(plan)
    plan["required_limits"] = required
    plan["required_features"] = sorted({f for p in pipelines for f in p["features"]})
    return Plan(plan, kernels, required)


def check_limits(plan: dict) -> dict:
    """The limits above WebGPU's defaults this plan needs (empty when the defaults do)."""
    need = {"maxStorageBufferBindingSize": 0, "maxBufferSize": 0}
    sizes = {b["name"]: b["bytes"] for b in plan["buffers"]}
    for bg in plan["bind_groups"]:
        p = plan["pipelines"][bg["pipeline"]]
        for ent, bnd in zip(bg["entries"], p["bindings"]):
            if bnd["type"] != "uniform":
                need["maxStorageBufferBindingSize"] = max(need["maxStorageBufferBindingSize"], sizes[ent])
    need["maxBufferSize"] = max(sizes.values())
    for p in plan["pipelines"]:
        n_storage = sum(bb["type"] != "uniform" for bb in p["bindings"])
        for lim, v in (("maxStorageBuffersPerShaderStage", n_storage),
                       ("maxComputeInvocationsPerWorkgroup", p["workgroup_size"][0]),
                       ("maxComputeWorkgroupStorageSize", p["workgroup_bytes"])):
            if v > DEFAULT_LIMITS[lim]:  # the kernel constructors refuse these: a compiler bug if reached
                raise MonologueError(f"wgsl plan: pipeline {p['name']} needs {lim} = {v} > {DEFAULT_LIMITS[lim]}")
    for lst in [*plan["dispatch"].values(), *(l for p in plan["profiles"].values() for l in p["dispatch"].values())]:
        for d in lst:
            if max(d["workgroups"]) > DEFAULT_LIMITS["maxComputeWorkgroupsPerDimension"]:
                raise MonologueError(f"wgsl plan: dispatch for %{d['node']} has {d['workgroups']} workgroups")
    return {k: v for k, v in need.items() if v > DEFAULT_LIMITS[k]}


def write_plan(g: Graph, model_dir: Path, **kw) -> dict:
    """Write model/plan.json and model/kernels/*.wgsl and list them in manifest.json (sizes, sha256),
    with the WebGPU limits and features the plan needs in the manifest's `webgpu` section."""
    from ..artifact import add_files_to_manifest, read_manifest, write_manifest

    model_dir = Path(model_dir)
    p = build_plan(g, manifest=read_manifest(model_dir), **kw)
    kdir = model_dir / "kernels"
    kdir.mkdir(exist_ok=True)
    for fname, src in sorted(p.kernels.items()):
        (kdir / fname).write_text(src)
    (model_dir / "plan.json").write_text(json.dumps(p.plan, indent=1, sort_keys=True) + "\n")
    manifest = add_files_to_manifest(model_dir, ["plan.json"] + [f"kernels/{f}" for f in sorted(p.kernels)])
    manifest["webgpu"] = {"plan": "plan.json", "features": p.plan["required_features"],
                          "required_limits": dict(sorted(p.required.items()))}
    write_manifest(model_dir, manifest)
    return p.plan


def emit_wgsl(compiled, dist: Path) -> None:
    """Driver emitter. A model the kernels cannot express (float weights, an op or epilogue without a
    kernel) still compiles for the other backends: the manifest says why there is no plan, the web
    shell then uses wasm, and a warning names the node."""
    import click

    g = compiled.graph
    model_dir = Path(dist) / "model"
    try:
        if not any(w.dtype == "q8" for w in g.weights.values()):
            raise MonologueError("no int8 weights (--quant none): the WGSL kernels run int8 weights")
        write_plan(g, model_dir)
    except MonologueError as e:
        from ..artifact import read_manifest, write_manifest

        manifest = read_manifest(model_dir)
        manifest["webgpu"] = {"plan": None, "reason": str(e), "features": [], "required_limits": {}}
        write_manifest(model_dir, manifest)
        click.echo(f"warning: no WebGPU program: {e}", err=True)
