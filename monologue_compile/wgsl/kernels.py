"""The kernel families: for each, its template, render parameters, binding layout and dispatch size.

A family function validates its parameters, derives the constants the template needs, renders the
WGSL and returns a `Kernel`. Bindings are all in group 0, numbered in list order. Kernels are
shape-specialized, so the dispatch size is fixed at render time (for the largest step the kernel
serves); per-step values (position, token count) come from the shared `Step` uniform, and
workgroups beyond the step's work exit early.

Buffer layouts (all f32 unless said):
- activations: row-major [tokens, features]; q/k/v rows are [tokens, heads, head_dim].
- int8 weight [N, K] (docs/formats.md): [N, k_pad / 16] vec4<u32>, k_pad = K rounded up to 16 and
  to the group, byte i of u32 j = q[k = 4j + i]; scales [N] (per output channel) or
  [N, k_pad / group] (group 32, 64 or 128 along K). int4 (`bits=4`): [N, k_pad / 16] vec2<u32>,
  nibble i of u32 j = q[k = 8j + i].
- KV cache (one K and one V buffer per layer): [max_seq, n_kv_head, head_dim], token-major, so one
  token's keys (or values) for all heads are one contiguous row of n_kv_head * head_dim and a matvec
  or matmul writes its output row straight into the cache at row `pos`.
- Step uniform: struct { pos, n_tokens, 0, 0 } of u32 (16 bytes), see `_step.wgsl.j2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import elementwise as elementwise_fns
from .render import render

STEP_BYTES = 16
MAX_WG_PER_DIM = 65535
WG_MEM_LIMIT = 16384
MAX_INVOCATIONS = 256
MAX_STORAGE_BUFFERS = 8
RMS_EPS = 1.1920929e-07  # float32 epsilon, nanochat's F.rms_norm default
SUBGROUP_MODES = ("off", "naga", "tint")  # naga: builtins without the directive; tint: `enable subgroups;`


@dataclass(frozen=True)
class Binding:
    name: str
    kind: str  # "read" | "read_write" | "uniform"


@dataclass
class Kernel:
    name: str
    family: str
    template: str
    params: dict
    bindings: list[Binding]
    workgroup_size: int
    workgroups: tuple[int, int, int]
    wgsl: str
    features: tuple[str, ...] = ()  # device features the kernel needs ("subgroup")
    workgroup_bytes: int = 0
    entry_point: str = "main"
    info: dict = field(default_factory=dict)  # derived shapes the caller needs (buffer sizes)


def grid(n: int, y: int = 1) -> tuple[int, int, int]:
    """Dispatch n workgroups along x (times y); past 65535 spread over x*y' with a flat-id guard."""
    if n <= MAX_WG_PER_DIM:
        return (n, y, 1)
    if y != 1:
        raise ValueError(f"{n} x {y} workgroups exceed the per-dimension limit")
    ny = -(-n // MAX_WG_PER_DIM)
    return (-(-n // ny), ny, 1)


def _check(cond: bool, msg: str):
    if not cond:
        raise ValueError(msg)


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _row_wg(items: int) -> int:
    """Default threads for a kernel whose threads stride over `items` vectors of one row: up to 64,
    but no more than the row needs (idle threads still pay for every barrier; 5x on lavapipe for
    128-wide rows), and at least 16."""
    return min(64, max(16, _next_pow2(items)))


def _finish(name, family, template, params, bindings, wg, workgroups, wg_bytes, features=(), info=None):
    _check(wg <= MAX_INVOCATIONS, f"{name}: {wg} invocations > {MAX_INVOCATIONS}")
    _check(wg_bytes <= WG_MEM_LIMIT, f"{name}: {wg_bytes} B workgroup memory > {WG_MEM_LIMIT}")
    n_storage = sum(b.kind != "uniform" for b in bindings)
    _check(n_storage <= MAX_STORAGE_BUFFERS, f"{name}: {n_storage} storage buffers > {MAX_STORAGE_BUFFERS}")
    wgsl = render(template, name=name, **params)
    return Kernel(name, family, template, params, bindings, wg, workgroups, wgsl, tuple(features), wg_bytes,
                  info=info or {})


def _common(covers, subgroups="off", unpack="shift"):
    _check(subgroups in SUBGROUP_MODES, f"subgroups={subgroups!r} not in {SUBGROUP_MODES}")
    _check(unpack in ("shift", "builtin"), f"unpack={unpack!r} not in ('shift', 'builtin')")
    return list(covers or [])


def _weight_params(group: int, bits: int, unpack: str) -> dict:
    """Render parameters of the weight format (`_int8.wgsl.j2`)."""
    _check(group in (0, 32, 64, 128), f"group={group} must be 0 (per channel), 32, 64 or 128")
    _check(bits in (4, 8), f"bits={bits} must be 8 or 4")
    _check(bits == 8 or (group and unpack == "shift"), "int4 weights are group-quantized and unpacked by shifts")
    return dict(bits=bits, wvec="vec2<u32>" if bits == 4 else "vec4<u32>")


def k_pad(K: int, group: int = 0) -> int:
    """Stored row length of an int8 weight: K rounded up to a multiple of 16 and of the group."""
    align = math.lcm(16, group) if group else 16
    return -(-K // align) * align


# `act` and `softcap` are shorthands for these epilogue steps (the IR's own, see elementwise.py).
ACTIVATION_STEPS = {"none": [], "relu2": [{"fn": "relu"}, {"fn": "square"}], "gelu": [{"fn": "gelu"}],
                    "gelu_tanh": [{"fn": "gelu_tanh"}], "silu": [{"fn": "silu"}]}
ACTIVATIONS = tuple(ACTIVATION_STEPS)


def _epilogue_params(act, bias, softcap, residual, steps):
    """Render parameters of `_epilogue.wgsl.j2`: v = bias add, then each step (unary or scalar)."""
    _check(act in ACTIVATIONS, f"act={act!r} not in {ACTIVATIONS}")
    _check(softcap is None or softcap >= 0, "softcap must be >= 0")
    steps = ACTIVATION_STEPS[act] + elementwise_fns.softcap_steps(float(softcap)) * bool(softcap) + list(steps or [])
    try:
        exprs = [elementwise_fns.wgsl_step(st) for st in steps]
    except (ValueError, KeyError) as e:
        raise ValueError(f"epilogue: {e}") from None
    return dict(bias=bool(bias), residual=bool(residual), ep_steps=exprs, ep_steps_src=steps,
                ep_functions=elementwise_fns.wgsl_functions([st["fn"] for st in steps]),
                ep_desc=" -> ".join(elementwise_fns.describe(st) for st in steps))


def _map_exprs(steps: list[dict], v: str, read, what: str) -> list[str]:
    """Map steps (elementwise.py) as WGSL expressions assigned to `v` in turn; `read(i)` is the
    expression of tensor operand i at the current element."""
    out = []
    for st in steps:
        if "operand" in st:
            a, b = v, read(st["operand"])
            out.append(f"ew_{st['fn']}({b}, {a})" if st.get("reverse") else f"ew_{st['fn']}({a}, {b})")
        else:
            try:
                out.append(elementwise_fns.wgsl_step(st, v))
            except (ValueError, KeyError) as err:
                raise ValueError(f"{what}: {err}") from None
    return out


def _prologue_params(steps, operands, ep: dict) -> dict:
    """Render parameters of the matvec's map prologue: x[k] -> steps(x[k], op0[k], ...), any chain of
    the IR's elementwise steps (elementwise.py) whose tensor operands are rows of K at `operands`
    (float offsets, multiples of 4); `ep_functions` then defines what the epilogue and prologue call."""
    steps = list(steps or [])
    _check(all(o % 4 == 0 for o in operands), f"prologue operand offsets {operands} must be multiples of 4")
    _check(all(st["operand"] < len(operands) for st in steps if "operand" in st), f"a prologue step of {steps} reads a missing operand")
    exprs = _map_exprs(steps, "v", lambda i: f"o{i}", "prologue")
    names = [st["fn"] for st in ep.get("ep_steps_src", [])] + [st["fn"] for st in steps]
    return dict(pro_steps=exprs, pro_ops=[o // 4 for o in operands],
                pro_desc=" -> ".join(elementwise_fns.describe(st) for st in steps),
                ep_functions=elementwise_fns.wgsl_functions(names))


def matvec_int8(N: int, K: int, *, group: int = 0, norm: bool = False, bias: bool = False, act: str = "none",
                softcap: float = 0.0, steps: list | None = None, residual: bool = False, out_offset: int = 0, out_at_pos: bool = False,
                out_pos_stride: int | None = None, out_len: int | None = None, rows: int = 4, wg: int | None = None,
                cooperative: bool = True, subgroups: str = "off", unpack: str = "shift", eps: float = RMS_EPS, covers=(),
                bits: int = 8, norm_weight: bool = False, x_offset: int = 0, prologue: list | None = None,
                prologue_operands: list[int] = (), gate: bool = False, gate_offset: int = 0,
                name: str = "matvec_int8") -> Kernel:
    """y[n] (+)= epilogue(sum_k W[n,k] x'[k]) for one token; x' = rmsnorm(x) when `norm`, times the
    norm's weight (binding nw, [K]) with `norm_weight`. x is read from element `x_offset` on (a
    slice of a wider row; a multiple of 4). `prologue` (elementwise steps) maps each x[k] first,
    its tensor operands (bindings p0.., [K] each from the offsets `prologue_operands`) read at k: a
    gated activation silu(gate) * up folded into the projection after it. With `gate` (binding
    gate, the token's value at `gate_offset`), a gate of 0 makes the product 0 without reading W.

    Bindings: w, scale, x, [nw], [bias], [gate], y, [step (when out_at_pos)]. Output element n goes to
    y[out_offset + (step.pos * out_pos_stride if out_at_pos) + n]; `residual` adds into y there.
    cooperative (GPUs): one workgroup per `rows` output rows, its wg threads (default: what K needs,
    up to 64) splitting K and summing through workgroup memory. cooperative=False (CPU adapters): each
    invocation computes `rows` whole rows, wg (default 32) per workgroup, no workgroup memory or
    barriers, ceil(N / (rows * wg)) workgroups.
    """
    covers = _common(covers, subgroups, unpack)
    _check(K % 4 == 0, f"K={K} must be a multiple of 4 (x is read as vec4<f32>)")
    _check(x_offset % 4 == 0, f"x_offset={x_offset} must be a multiple of 4 (x is read as vec4<f32>)")
    _check(norm or not norm_weight, "a norm weight without the norm")
    wparams = _weight_params(group, bits, unpack)
    pos_stride = N if out_pos_stride is None else out_pos_stride
    out_len = out_len or out_offset + N
    ep = _epilogue_params(act, bias, softcap, residual, steps)
    ep.update(_prologue_params(prologue, prologue_operands, ep))
    common = dict(N=N, K=K, KV4=-(-K // 16), KS=k_pad(K, group) // 16, K4=K // 4, rows=rows,
                  group=group, n_groups=k_pad(K, group) // group if group else 0, norm=bool(norm), eps=eps,
                  norm_weight=bool(norm_weight), XO4=x_offset // 4,
                  out_offset=out_offset, out_at_pos=bool(out_at_pos), out_pos_stride=pos_stride,
                  out_len=out_len, unpack=unpack, covers=covers, gate=bool(gate), gate_offset=gate_offset,
                  **wparams, **ep)
    b = [Binding("w", "read"), Binding("scale", "read"), Binding("x", "read")]
    b += [Binding("nw", "read")] if norm_weight else []
    b += [Binding(f"p{i}", "read") for i in range(len(prologue_operands))]
    b += [Binding("bias", "read")] if bias else []
    b += [Binding("gate", "read")] if gate else []
    b += [Binding("y", "read_write")]
    b += [Binding("step", "uniform")] if out_at_pos else []
    if not cooperative:
        _check(subgroups == "off" and unpack == "shift", "cooperative=False takes neither subgroups nor the builtin unpack")
        wg = wg or 32
        params = dict(common, wg=wg)
        return _finish(name, "matvec_int8", "matvec_int8_rows.wgsl.j2", params, b, wg, grid(-(-N // (rows * wg))), 0)
    wg = wg or _row_wg(-(-K // 16))
    _check(_pow2(wg), f"wg={wg} must be a power of two")
    nred = rows + bool(norm)
    seg = 1 << -(-(wg.bit_length() - 1) // 2)  # 2^ceil(log2(wg) / 2): ~sqrt(wg) segments of ~sqrt(wg) sums
    wg_bytes = 4 * nred * (wg + 1) + (4 * ((wg + 31) // 32) if subgroups != "off" else 4 * nred * seg)
    params = dict(common, wg=wg, seg=seg, subgroups=subgroups)
    feats = ("subgroup",) if subgroups != "off" else ()
    return _finish(name, "matvec_int8", "matvec_int8.wgsl.j2", params, b, wg, grid(-(-N // rows)), wg_bytes, feats)


def matmul_int8(T: int, N: int, K: int, *, group: int = 0, norm: bool = False, bias: bool = False,
                act: str = "none", softcap: float = 0.0, steps: list | None = None, residual: bool = False,
                out_offset: int = 0, out_at_pos: bool = False, out_row_stride: int | None = None, tile_t: int = 32, tile_n: int = 64,
                mt: int = 4, mn: int = 4, unpack: str = "shift", eps: float = RMS_EPS, covers=(),
                bits: int = 8, norm_weight: bool = False, gate: bool = False, gate_offset: int = 0,
                gate_row_stride: int = 1, name: str = "matmul_int8") -> Kernel:
    """Y[t, n] (+)= epilogue(sum_k X'[t, k] W[n, k]) for t < step.n_tokens <= T; X' = rmsnorm(X) rows
    (times the norm's weight, binding nw [K], with `norm_weight`). With `gate` (binding gate, token
    t's value at gate_offset + t * gate_row_stride), row t's product is 0 where its gate is.

    Bindings: w, scale, x, [nw], [bias], [gate], y, step. Row t goes to y[out_offset + (t [+ step.pos]) * out_row_stride]
    (out_row_stride defaults to N), so `out_at_pos` writes a chunk straight into KV-cache rows.
    Workgroups: (ceil(N / tile_n), ceil(T / tile_t)); threads (tile_t / mt) * (tile_n / mn), each
    computing an mt x mn micro-tile (4 x 4: 128 threads, 2x faster than 2 x 4 on lavapipe).
    """
    covers = _common(covers, "off", unpack)
    _check(K % 4 == 0, f"K={K} must be a multiple of 4 (X rows are read as vec4<f32>)")
    _check(norm or not norm_weight, "a norm weight without the norm")
    wparams = _weight_params(group, bits, unpack)
    _check(tile_t % mt == 0 and tile_n % mn == 0, "tile_t / tile_n must be multiples of mt / mn")
    wg = (tile_t // mt) * (tile_n // mn)
    _check(tile_t * 4 <= wg and tile_n <= wg, "each tile load must take at most one vec4 per thread")
    wg_bytes = 64 * (tile_t + tile_n) + (16 * tile_t if norm else 0)
    params = dict(T=T, N=N, K=K, KV4=-(-K // 16), KS=k_pad(K, group) // 16, K4=K // 4, TT=tile_t, TN=tile_n,
                  MT=mt, MN=mn, wg=wg, group=group, n_groups=k_pad(K, group) // group if group else 0, norm=bool(norm), eps=eps,
                  norm_weight=bool(norm_weight),
                  out_offset=out_offset, out_at_pos=bool(out_at_pos),
                  out_row_stride=N if out_row_stride is None else out_row_stride, unpack=unpack, covers=covers,
                  gate=bool(gate), gate_offset=gate_offset, gate_row_stride=gate_row_stride,
                  **wparams, **_epilogue_params(act, bias, softcap, residual, steps))
    b = [Binding("w", "read"), Binding("scale", "read"), Binding("x", "read")]
    b += [Binding("nw", "read")] if norm_weight else []
    b += [Binding("bias", "read")] if bias else []
    b += [Binding("gate", "read")] if gate else []
    b += [Binding("y", "read_write"), Binding("step", "uniform")]
    return _finish(name, "matmul_int8", "matmul_int8.wgsl.j2", params, b, wg,
                   grid(-(-N // tile_n), -(-T // tile_t)), wg_bytes)


def embed_int8(T: int, V: int, C: int, *, norm: bool = False, row_start: int = 0, n_rows: int | None = None,
               group: int = 0, bits: int = 8, wg: int | None = None, eps: float = RMS_EPS, covers=(),
               name: str = "embed_int8") -> Kernel:
    """y[t] = (rmsnorm of) the dequantized row ids[t] of an int8 or int4 table, for t < step.n_tokens.

    Bindings: ids (u32 [T]), table, scale, y ([T, C]), step. One workgroup per token. The table is
    stored as a matmul weight of that format (`group`, `bits`; rows of k_pad(C, group)), so a table
    tied to the output projection is read as it is stored. The norm is fused only for one scale per
    row, where it factors out of the sum of squares. A table over the binding limit is split by
    rows: one kernel per part (`row_start`, `n_rows`, its own table and scale bindings), each
    writing only the tokens whose ids it holds.
    """
    covers = _common(covers)
    _check(C % 4 == 0, f"C={C} must be a multiple of 4")
    _check(not (norm and group), "the norm is fused only into a table with one scale per row")
    wparams = _weight_params(group, bits, "shift")
    KS = k_pad(C, group) // 16
    wg = wg or _row_wg(KS)
    _check(_pow2(wg), f"wg={wg} must be a power of two")
    n_rows = V - row_start if n_rows is None else n_rows
    _check(0 <= row_start and n_rows >= 1 and row_start + n_rows <= V, "rows must lie within the vocabulary")
    params = dict(T=T, V=V, C=C, KS=KS, norm=bool(norm), row_start=row_start, n_rows=n_rows, wg=wg,
                  group=group, n_groups=k_pad(C, group) // group if group else 0, eps=eps, unpack="shift",
                  covers=covers, **wparams)
    b = [Binding("ids", "read"), Binding("table", "read"), Binding("scale", "read"), Binding("y", "read_write"),
         Binding("step", "uniform")]
    return _finish(name, "embed_int8", "embed_int8.wgsl.j2", params, b, wg, grid(T), 4 * wg if norm else 0)


def norm(T: int, C: int, *, kind: str = "rms", weight: bool = False, bias: bool = False, eps: float | None = None,
         wg: int | None = None, covers=(), name: str = "norm") -> Kernel:
    """y[t] = rmsnorm or layernorm of x[t] (optional weight, bias) for t < step.n_tokens.

    Bindings: x, [weight], [bias], y, step. One workgroup per row. eps defaults to f32 epsilon for
    rms (nanochat) and 1e-5 for layer (torch's LayerNorm default).
    """
    covers = _common(covers)
    _check(kind in ("rms", "layer"), f"kind={kind!r} not in ('rms', 'layer')")
    _check(C % 4 == 0, f"C={C} must be a multiple of 4")
    wg = wg or _row_wg(C // 4)
    _check(_pow2(wg), f"wg={wg} must be a power of two")
    eps = (RMS_EPS if kind == "rms" else 1e-5) if eps is None else eps
    params = dict(T=T, C=C, kind=kind, weight=bool(weight), bias=bool(bias), eps=eps, wg=wg, covers=covers)
    b = [Binding("x", "read")] + [Binding("weight", "read")] * bool(weight) + [Binding("bias", "read")] * bool(bias)
    b += [Binding("y", "read_write"), Binding("step", "uniform")]
    return _finish(name, "norm", "norm.wgsl.j2", params, b, wg, grid(T), 4 * wg)


def elementwise(T: int, L: int, steps: list[dict], operands: list[dict] = (), *, width: int | None = None,
                inplace: bool = False, x_offset: int = 0, x_row_stride: int | None = None, y_offset: int = 0,
                y_row_stride: int | None = None, y_at_pos: bool = False, wg: int | None = None, covers=(),
                name: str = "elementwise") -> Kernel:
    """y[t] = steps(x[t]) over rows of L floats, for t < step.n_tokens: any chain of the IR's elementwise
    steps (elementwise.py renders each function), tensor operands broadcast, RMSNorm, LayerNorm and
    softmax over runs of `width`.

    Each operand is {len, repeat, offset, row_stride, at_pos}: element j of row t reads
    op[offset + (t [+ step.pos]) * row_stride + (j / repeat) % len] (row_stride 0: a weight, the same
    for every token; at_pos: a position table). Bindings: [x], op0.., y, step; `inplace` has no x and
    runs the steps on y's rows (after a kernel that wrote them); `y_at_pos` writes row t at
    step.pos + t (a KV cache). One workgroup per row.

    An operand {"inner": {"src", "steps", "operands"}} has no binding of its own: it is the value of
    another chain of map steps, computed per element in the same loop from `src` and its own
    `operands` (descriptors as above, bindings op<k>_s, op<k>_0..): an elementwise node folded into
    the one that reads it (nanochat's `lambda_r * x` before `+ lambda_0 * x0`).
    """
    covers = _common(covers)
    width = width or L
    _check(L % width == 0, f"norm width {width} does not divide the row of {L}")
    _check(not (inplace and y_at_pos), "an in-place elementwise kernel reads y's own rows, not KV-cache rows")
    wg = wg or _row_wg(-(-L // 4))
    _check(_pow2(wg), f"wg={wg} must be a power of two")
    reads = {}  # binding name -> operand descriptor
    for k, o in enumerate(operands):
        if "inner" in o:
            reads[f"op{k}_s"] = o["inner"]["src"]
            reads |= {f"op{k}_{i}": io for i, io in enumerate(o["inner"]["operands"])}
        else:
            reads[f"op{k}"] = o
    n_storage = len(reads) + 1 + (not inplace)
    _check(n_storage <= MAX_STORAGE_BUFFERS, f"{len(operands)} tensor operands need {n_storage} storage buffers "
                                             f"> the device limit {MAX_STORAGE_BUFFERS}")

    def read_at(name: str, o: dict) -> str:
        row = "(tr + step.pos)" if o.get("at_pos") else "tr"
        idx = f"{o.get('offset', 0)}u + {row} * {o.get('row_stride', 0)}u"
        rep, ln = o.get("repeat", 1), o["len"]
        lane = "j" if rep == 1 else f"j / {rep}u"
        return f"{name}[{idx} + ({lane}) % {ln}u]" if ln != L or rep != 1 else f"{name}[{idx} + j]"

    inner = []  # per-element statements computing the inner operands, u<k>
    for k, o in enumerate(operands):
        if "inner" in o:
            io = o["inner"]
            _check(all(st["fn"] in elementwise_fns.FUNCTIONS for st in io["steps"]), "an inner chain maps elements only")
            inner.append(f"var u{k} = {read_at(f'op{k}_s', io['src'])};")
            inner += [f"u{k} = {e};" for e in _map_exprs(io["steps"], f"u{k}", lambda i, k=k: read_at(f"op{k}_{i}", io["operands"][i]),
                                                              "elementwise")]

    def read(k: int) -> str:
        return f"u{k}" if "inner" in operands[k] else read_at(f"op{k}", operands[k])

    segments: list[dict] = []
    for st in steps:
        fn = st["fn"]
        if fn == "softmax":
            segments.append(dict(kind="softmax", width=width))
            continue
        if fn in ("rms_norm", "layer_norm"):
            weight = read(st["operand"]) if "operand" in st else ""
            bias = read(st["bias_operand"]) if "bias_operand" in st else ""
            segments.append(dict(kind="rms" if fn == "rms_norm" else "layer", width=width, eps=float(st["eps"]),
                                 weight=weight, bias=bias))
            continue
        (e,) = _map_exprs([st], "v", read, "elementwise")
        if not segments or segments[-1]["kind"] != "map":
            segments.append(dict(kind="map", exprs=[]))
        segments[-1]["exprs"].append(e)
    if not segments:
        segments.append(dict(kind="map", exprs=[]))  # a copy
    for i, seg in enumerate(segments):
        seg["first"] = i == 0
    _check(not inner or all(seg["kind"] == "map" for seg in segments), "inner operands only in a chain of maps")
    if inner:
        segments[0]["pre"] = inner
    bindings = [] if inplace else [dict(name="x", space="storage, read", type="array<f32>")]
    bindings += [dict(name=name, space="storage, read", type="array<f32>") for name in reads]
    bindings += [dict(name="y", space="storage, read_write", type="array<f32>"), dict(name="step", space="uniform", type="Step")]
    y_stride = L if y_row_stride is None else y_row_stride
    src = "y[yrow + j]" if inplace else f"x[{x_offset}u + tr * {L if x_row_stride is None else x_row_stride}u + j]"
    desc = " -> ".join(elementwise_fns.describe(st) for st in steps) or "x"
    params = dict(T=T, L=L, wg=wg, segments=segments, bindings=bindings, src=src, y_offset=y_offset, y_stride=y_stride,
                  y_at_pos=y_at_pos,
                  reduce=any(s["kind"] != "map" for s in segments), softmax=any(s["kind"] == "softmax" for s in segments),
                  desc=desc, covers=covers,
                  functions=elementwise_fns.wgsl_functions([st["fn"] for st in steps if st["fn"] in elementwise_fns.FUNCTIONS]
                                                           + [st["fn"] for o in operands if "inner" in o for st in o["inner"]["steps"]]),
                  operands=[dict(desc=("the value of " + " -> ".join(elementwise_fns.describe(st) for st in o["inner"]["steps"])
                                       + " (inner chain)") if "inner" in o else
                                 f"{o['len']} floats, repeat {o.get('repeat', 1)}, row stride {o.get('row_stride', 0)}"
                                 + (" at step.pos" if o.get("at_pos") else "")) for o in operands])
    b = [Binding(bb["name"], "uniform" if bb["name"] == "step" else ("read_write" if bb["name"] == "y" else "read"))
         for bb in bindings]
    return _finish(name, "elementwise", "elementwise.wgsl.j2", params, b, wg, grid(T),
                   4 * wg if params["reduce"] else 0)


def row_mean(T: int, L: int, width: int, *, x_offset: int = 0, x_row_stride: int | None = None, y_offset: int = 0,
             y_row_stride: int | None = None, wg: int = 64, covers=(), name: str = "row_mean") -> Kernel:
    """y[t, j] = mean(x[t, j * width .. (j + 1) * width]) for j < L / width, t < step.n_tokens (a mean
    over the last axis, keepdim). Bindings: x, y, step. One workgroup per row, a thread per output."""
    covers = _common(covers)
    _check(L % width == 0, f"width {width} does not divide the row of {L}")
    params = dict(T=T, L=L, W=width, G=L // width, x_offset=x_offset, x_stride=L if x_row_stride is None else x_row_stride,
                  y_offset=y_offset, y_stride=L // width if y_row_stride is None else y_row_stride, wg=wg, covers=covers)
    b = [Binding("x", "read"), Binding("y", "read_write"), Binding("step", "uniform")]
    return _finish(name, "row_mean", "row_mean.wgsl.j2", params, b, wg, grid(T), 0)


def row_topk(T: int, L: int, width: int, k: int, indices: bool, *, x_offset: int = 0, x_row_stride: int | None = None,
             y_offset: int = 0, y_row_stride: int | None = None, wg: int = 64, covers=(), name: str = "row_topk") -> Kernel:
    """y[t, j * k + r] = the r-th largest of x[t, j * width .. (j + 1) * width] (descending, equal values
    lower index first), or its index as f32 when `indices`: the IR's `topk` (an MoE router's choice).
    Bindings: x, y, step. One workgroup per row, a thread per group of `width`."""
    covers = _common(covers)
    _check(L % width == 0 and 1 <= k <= width, f"width {width} does not divide the row of {L}, or k={k} > width")
    G = L // width
    params = dict(T=T, L=L, W=width, G=G, k=k, indices=indices, x_offset=x_offset,
                  x_stride=L if x_row_stride is None else x_row_stride, y_offset=y_offset,
                  y_stride=G * k if y_row_stride is None else y_row_stride, wg=wg, covers=covers)
    b = [Binding("x", "read"), Binding("y", "read_write"), Binding("step", "uniform")]
    return _finish(name, "row_topk", "row_topk.wgsl.j2", params, b, wg, grid(T), 0)


def row_gather(T: int, L: int, width: int, k: int, *, x_offset: int = 0, x_row_stride: int | None = None,
               i_offset: int = 0, i_row_stride: int | None = None, y_offset: int = 0, y_row_stride: int | None = None,
               wg: int = 64, covers=(), name: str = "row_gather") -> Kernel:
    """y[t, j * k + r] = x[t, j * width + index[t, j * k + r]] (the IR's `gather` along the last axis).
    Bindings: x, index, y, step. One workgroup per row, a thread per output."""
    covers = _common(covers)
    _check(L % width == 0, f"width {width} does not divide the row of {L}")
    G = L // width
    params = dict(T=T, L=L, W=width, G=G, k=k, x_offset=x_offset, x_stride=L if x_row_stride is None else x_row_stride,
                  i_offset=i_offset, i_stride=G * k if i_row_stride is None else i_row_stride, y_offset=y_offset,
                  y_stride=G * k if y_row_stride is None else y_row_stride, wg=wg, covers=covers)
    b = [Binding("x", "read"), Binding("index", "read"), Binding("y", "read_write"), Binding("step", "uniform")]
    return _finish(name, "row_gather", "row_gather.wgsl.j2", params, b, wg, grid(T), 0)


def row_scatter(T: int, G: int, width: int, k: int, value: float | None, *, i_offset: int = 0,
                i_row_stride: int | None = None, s_offset: int = 0, s_row_stride: int | None = None, y_offset: int = 0,
                y_row_stride: int | None = None, wg: int = 64, covers=(), name: str = "row_scatter") -> Kernel:
    """G groups of `width` zeros per row, then y[t, j * width + index[t, j * k + r]] = src[t, j * k + r]
    (or `value`: no src binding): the IR's `scatter` along the last axis. Bindings: index, [src,] y,
    step. One workgroup per row, a thread per group."""
    covers = _common(covers)
    params = dict(T=T, G=G, W=width, k=k, value=value, i_offset=i_offset,
                  i_stride=G * k if i_row_stride is None else i_row_stride, s_offset=s_offset,
                  s_stride=G * k if s_row_stride is None else s_row_stride, y_offset=y_offset,
                  y_stride=G * width if y_row_stride is None else y_row_stride, wg=wg, covers=covers)
    b = [Binding("index", "read")] + ([Binding("src", "read")] if value is None else [])
    b += [Binding("y", "read_write"), Binding("step", "uniform")]
    return _finish(name, "row_scatter", "row_scatter.wgsl.j2", params, b, wg, grid(T), 0)


def strided_copy(T: int, shape: list[int], src: list[int], dst: list[int], *, x_offset: int = 0, x_row_stride: int = 0,
                 x_at_pos: bool = False, y_offset: int = 0, y_row_stride: int = 0, wg: int = 64, covers=(),
                 name: str = "strided_copy") -> Kernel:
    """y[y_offset + t * y_row_stride + i.dst] = x[x_offset + t' * x_row_stride + i.src] for every index i
    of `shape` and t < step.n_tokens (t' = t, or step.pos + t for a position table): the one kernel
    for a view that moves data and for each input of a concat. Bindings: x, y, step; one invocation
    per element."""
    covers = _common(covers)
    _check(len(shape) == len(src) == len(dst) and shape, "shape, src and dst strides must have one entry per dim")
    N = math.prod(shape)
    dims = [dict(size=d, src=s, dst=t) for d, s, t in zip(shape, src, dst)]
    params = dict(T=T, N=N, dims=dims, x_offset=x_offset, x_stride=x_row_stride, x_at_pos=x_at_pos, y_offset=y_offset,
                  y_stride=y_row_stride, wg=wg, covers=covers)
    b = [Binding("x", "read"), Binding("y", "read_write"), Binding("step", "uniform")]
    return _finish(name, "strided_copy", "strided_copy.wgsl.j2", params, b, wg, grid(-(-T * N // wg)), 0)


def token_shift(T: int, L: int, *, x_offset: int = 0, x_row_stride: int | None = None, y_offset: int = 0,
                y_row_stride: int | None = None, wg: int = 256, covers=(), name: str = "token_shift") -> list[Kernel]:
    """y[t] = x[t - 1], y[0] = the last row of the previous step (zero at position 0), for
    t < step.n_tokens; two dispatches: [shift, keep]. Shift bindings: x, carried ([L]), y, step;
    keep bindings: x, carried, step (it overwrites carried, so it runs after every read of it)."""
    covers = _common(covers)
    params = dict(T=T, L=L, x_offset=x_offset, x_stride=L if x_row_stride is None else x_row_stride, y_offset=y_offset,
                  y_stride=L if y_row_stride is None else y_row_stride, wg=wg, covers=covers)
    shift = _finish(name + "_1", "token_shift", "token_shift.wgsl.j2", dict(params, stage=1),
                    [Binding("x", "read"), Binding("carried", "read"), Binding("y", "read_write"), Binding("step", "uniform")],
                    wg, grid(-(-T * L // wg)), 0)
    keep = _finish(name + "_2", "token_shift", "token_shift.wgsl.j2", dict(params, stage=2),
                   [Binding("x", "read"), Binding("carried", "read_write"), Binding("step", "uniform")],
                   wg, grid(-(-L // wg)), 0)
    return [shift, keep]


def rope_qknorm(T: int, H: int, D: int, *, qk_norm: bool = True, post_scale: float = 0.0, inplace: bool = True,
                in_offset: int = 0, in_row_stride: int | None = None, out_offset: int = 0, out_at_pos: bool = False, out_row_stride: int | None = None,
                eps: float = RMS_EPS, post_weight: bool = False, pre_norm: bool = False, pre_weight: bool = False,
                pre_eps: float = RMS_EPS, covers=(), name: str = "rope_qknorm") -> Kernel:
    """RoPE (host cos/sin tables, position step.pos + t), then optional per-head RMSNorm (times the
    weight qw [D] with `post_weight`) and scale; `pre_norm`: each head RMS-normed before the rotation
    (times the weight pw [D] with `pre_weight`).

    Bindings: x, cos, sin ([max_seq, D/2]), [pw], [qw], [y], step. Row t of x is read at in_offset + t * in_row_stride
    (default a packed [T, H, D]; a merged q|k|v row works too). `inplace` writes back there (q);
    otherwise row t goes to y[out_offset + (t [+ step.pos]) * out_row_stride] (k into the cache).
    Workgroups: (H, T).
    """
    part = dict(heads=H, rope=True, qk_norm=qk_norm, post_scale=post_scale, eps=eps, in_offset=in_offset,
                post_weight="qw" if post_weight else None, pre_norm=pre_norm,
                pre_weight="pw" if pre_weight else None, pre_eps=pre_eps,
                out=None if inplace else "y", out_offset=out_offset, out_at_pos=out_at_pos,
                out_row_stride=H * D if out_row_stride is None else out_row_stride)
    return rope_parts(T, D, [part], in_row_stride=H * D if in_row_stride is None else in_row_stride, covers=covers,
                      name=name)


def rope_parts(T: int, D: int, parts: list[dict], *, in_row_stride: int, covers=(), name: str = "rope_parts") -> Kernel:
    """Several head ranges of the same rows of x in one dispatch, each a rope_qknorm (`rope`: True) or a
    copy (`rope`: False, the kv_write of v inside merged q|k|v rows), each with its own output: q roped
    in place or into a buffer, k roped into its KV cache, v copied into its cache.

    A part is {heads, rope, qk_norm, post_scale, eps, post_weight (the binding name of the norm's weight
    after the rotation, or None), pre_norm, pre_weight (the binding name of the pre-rope norm's weight,
    or None), pre_eps, in_offset, out (None: in place over x, else the output
    binding's name), out_offset, out_at_pos, out_row_stride}. Bindings: x, cos, sin, the parts'
    norm weights, the parts' outputs in order, step. Workgroups: (sum of heads, T); workgroup h runs the part whose
    head range holds h.
    """
    covers = _common(covers)
    _check(D % 2 == 0 and D // 2 <= MAX_INVOCATIONS, f"head_dim={D} must be even and <= 512")
    _check(any(q.get("rope", True) for q in parts), "a rope kernel needs at least one rotated part")
    wg = _next_pow2(D // 2)
    rendered, h0, outputs, weights = [], 0, [], []
    for q in parts:
        out = q.get("out") or "x"
        _check(out == "x" or out not in outputs, f"output {out} of two parts")
        if out != "x":
            outputs.append(out)
        rope = q.get("rope", True)
        pre_w = q.get("pre_weight") if rope and q.get("pre_norm") else None
        post_w = q.get("post_weight") if rope and q.get("qk_norm") else None
        for w in (pre_w, post_w):
            _check(w is None or w not in weights + outputs + ["x"], f"weight binding {w} of two parts")
            if w:
                weights.append(w)
        rendered.append(dict(h0=h0, heads=q["heads"], rope=rope, qk_norm=rope and bool(q.get("qk_norm")),
                             pre_norm=rope and bool(q.get("pre_norm")), pre_weight=pre_w, pre_eps=q.get("pre_eps", RMS_EPS),
                             post_scale=float(q.get("post_scale") or 0.0) if rope else 0.0, post_weight=post_w,
                             eps=q.get("eps", RMS_EPS),
                             in_offset=q.get("in_offset", 0), out=out, out_offset=q.get("out_offset", 0),
                             out_at_pos=bool(q.get("out_at_pos")), out_row_stride=q.get("out_row_stride") or q["heads"] * D))
        h0 += q["heads"]
    inplace = any(q["out"] == "x" for q in rendered)
    params = dict(T=T, D=D, parts=rendered, outputs=outputs, weights=weights, inplace=inplace, in_row_stride=in_row_stride,
                  wg=wg, covers=covers)
    b = [Binding("x", "read_write" if inplace else "read"), Binding("cos", "read"), Binding("sin", "read")]
    b += [Binding(o, "read") for o in weights]
    b += [Binding(o, "read_write") for o in outputs] + [Binding("step", "uniform")]
    qk = any(q["qk_norm"] or q["pre_norm"] for q in rendered)
    return _finish(name, "rope_qknorm", "rope_qknorm.wgsl.j2", params, b, wg, grid(h0, T), 4 * wg if qk else 0)


def kv_write(T: int, W: int, *, src_offset: int = 0, src_row_stride: int | None = None, wg: int = 256, covers=(),
             name: str = "kv_write") -> Kernel:
    """cache[step.pos + t, :] = src row t for t < step.n_tokens; W = n_kv_head * head_dim.

    Bindings: src (row t at src_offset + t * src_row_stride, default packed [T, W]), cache ([max_seq, W]), step.
    """
    covers = _common(covers)
    params = dict(T=T, W=W, src_offset=src_offset, src_row_stride=W if src_row_stride is None else src_row_stride,
                  wg=wg, covers=covers)
    b = [Binding("src", "read"), Binding("cache", "read_write"), Binding("step", "uniform")]
    return _finish(name, "kv_write", "kv_write.wgsl.j2", params, b, wg, grid(-(-T * W // wg)), 0)


def _attn_common(H, Hkv, D, scale):
    _check(Hkv >= 1 and H % Hkv == 0, f"n_kv_head={Hkv} must divide n_head={H}")
    return 1.0 / math.sqrt(D) if scale is None else float(scale)


def _score_terms(H: int, softcap: float | None, alibi, sinks=None) -> dict:
    """Render parameters of `_score_terms.wgsl.j2`, the IR's attention terms past q . k * scale (ir.py):
    score_cap(s) = softcap * tanh(s / softcap) in elementwise.py's steps (Gemma 2), then ALiBi's
    + alibi[h] * (j - p) (Bloom, MPT); and the sinks, a logit per head in the softmax (GPT-OSS)."""
    _check(not sinks or len(sinks) == H, f"sinks has {len(sinks or [])} logits for {H} heads")
    _check(softcap is None or softcap > 0, f"softcap={softcap} must be > 0")
    _check(not alibi or len(alibi) == H, f"alibi has {len(alibi or [])} slopes for {H} heads")
    steps = elementwise_fns.softcap_steps(float(softcap)) if softcap else []
    return dict(softcap=softcap, cap_steps=_map_exprs(steps, "s", None, "softcap"),
                cap_functions=elementwise_fns.wgsl_functions([st["fn"] for st in steps]) if steps else "",
                alibi=[float(m) for m in alibi] if alibi else None, sinks=[float(x) for x in sinks] if sinks else None)


def attn_decode(H: int, Hkv: int, D: int, S: int, *, chunk: int = 16, window_left: int | None = None,
                scale: float | None = None, softcap: float | None = None, alibi=None, sinks=None,
                heads_per_wg: int | None = None,
                wg: int | None = None,
                cooperative: bool = True, covers=(), name: str = "attn_decode") -> list[Kernel]:
    """Attention for one query token at step.pos over a [S, Hkv, D] cache.

    A query at p sees keys j with j <= p and, with a window, j >= p - window_left (flash-attn's
    left window). cooperative (GPUs): [partials, combine]. A split's keys are one workgroup's serial
    work, so `chunk` sets how many workgroups share a short context: at 256 an H200 ran
    Qwen2.5-0.5B's attention (2 kv heads, p = 160) on two workgroups at 130 us a layer, 58% of the
    token; decode tok/s at 256 / 64 / 32 / 16 keys: 135 / 206 / 209 / 232
    (benchmarks/bench_wgsl_gpu.py). Partials bindings: q ([H, D]), k, v
    (caches), ml, o (scratch), step; workgroups (splits of `chunk` keys, H / heads_per_wg): the query
    heads of one kv head share each K/V load (heads_per_wg defaults to the largest divisor of
    H / Hkv, up to 8, that fits workgroup memory); wg threads (default 64). Combine bindings: ml, o,
    out ([H, D]), step; workgroups (H). Scratch sizes are in `info` (f32 counts).
    cooperative=False (CPU adapters): one kernel, [heads]: bindings q, k, v, out, step; one invocation
    per query head over all its keys, wg (default 4) per workgroup, no workgroup memory or barriers.
    """
    covers = _common(covers)
    scale = _attn_common(H, Hkv, D, scale)
    _check(D % 4 == 0, f"head_dim={D} must be a multiple of 4")
    if not cooperative:
        wg = wg or 4
        params = dict(H=H, Hkv=Hkv, D=D, S=S, window_left=window_left, scale=scale, wg=wg, covers=covers,
                      **_score_terms(H, softcap, alibi, sinks))
        b = [Binding("q", "read"), Binding("k", "read"), Binding("v", "read"), Binding("out", "read_write"),
             Binding("step", "uniform")]
        return [_finish(name, "attn_decode", "attn_decode_head.wgsl.j2", params, b, wg, grid(-(-H // wg)), 0)]
    wg = wg or 64
    _check(_pow2(wg), f"wg={wg} must be a power of two")
    group = H // Hkv

    def mem(hb):
        return 4 * hb * (D + chunk + wg + 2)

    if heads_per_wg is None:
        heads_per_wg = max([hb for hb in range(1, min(group, 8) + 1) if group % hb == 0 and mem(hb) <= WG_MEM_LIMIT],
                           default=1)
    _check(group % heads_per_wg == 0, f"heads_per_wg={heads_per_wg} must divide H / Hkv = {group}")
    span = S if window_left is None else min(S, window_left + 1)
    ns = -(-span // chunk)
    params = dict(H=H, Hkv=Hkv, D=D, S=S, chunk=chunk, NS=ns, HB=heads_per_wg, window_left=window_left, scale=scale,
                  wg=wg, covers=covers, **_score_terms(H, softcap, alibi, sinks))
    info = {"ml": H * ns * 2, "o": H * ns * D}
    b = [Binding("q", "read"), Binding("k", "read"), Binding("v", "read"), Binding("ml", "read_write"),
         Binding("o", "read_write"), Binding("step", "uniform")]
    part = _finish(name, "attn_decode", "attn_decode.wgsl.j2", params, b, wg, grid(ns, H // heads_per_wg),
                   mem(heads_per_wg), info=info)
    cwg = min(_next_pow2(D), 64)
    cb = [Binding("ml", "read"), Binding("o", "read"), Binding("out", "read_write"), Binding("step", "uniform")]
    comb = _finish(name + "_combine", "attn_decode_combine", "attn_decode_combine.wgsl.j2", dict(params, wg=cwg),
                   cb, cwg, grid(H), 0, info=info)
    return [part, comb]


def attn_prefill(T: int, H: int, Hkv: int, D: int, S: int, *, window_left: int | None = None,
                 scale: float | None = None, softcap: float | None = None, alibi=None, sinks=None,
                 block: int | None = None,
                 wg: int = 64, covers=(),
                 name: str = "attn_prefill") -> Kernel:
    """Causal attention for a chunk of T queries (t < step.n_tokens, positions step.pos + t) over the cache.

    Bindings: q ([T, H, D]), k, v ([S, Hkv, D], holding positions < step.pos + n_tokens), out ([T, H, D]),
    step. Query and key tiles of `block` rows (the largest of 16, 8, 4 that fits 16 KiB unless given).
    Workgroups: (ceil(T / block), H).
    """
    covers = _common(covers)
    scale = _attn_common(H, Hkv, D, scale)
    _check(D % 4 == 0, f"head_dim={D} must be a multiple of 4")

    def mem(b):
        return 4 * (3 * b * D + b * b + 3 * b)

    if block is None:
        block = next((b for b in (16, 8, 4, 2, 1) if mem(b) <= WG_MEM_LIMIT and wg % b == 0), 1)
    _check(wg % block == 0, f"wg={wg} must be a multiple of block={block}")
    tpq = wg // block
    params = dict(T=T, H=H, Hkv=Hkv, D=D, S=S, BQ=block, BK=block, TPQ=tpq, ND4=-(-D // 4 // tpq),
                  window_left=window_left, scale=scale, wg=wg, covers=covers, **_score_terms(H, softcap, alibi, sinks))
    b = [Binding("q", "read"), Binding("k", "read"), Binding("v", "read"), Binding("out", "read_write"),
         Binding("step", "uniform")]
    return _finish(name, "attn_prefill", "attn_prefill.wgsl.j2", params, b, wg, grid(-(-T // block), H), mem(block))


def softcap(N: int, cap: float, *, wg: int = 256, covers=(), name: str = "softcap") -> Kernel:
    """x = cap * tanh(x / cap) in place over N values (tanh as elementwise.py defines it). Bindings: x."""
    covers = _common(covers)
    _check(cap > 0, "softcap must be > 0")
    steps = elementwise_fns.softcap_steps(cap)
    expr = "x[i]"
    for st in steps:
        expr = elementwise_fns.wgsl_step(st, expr)
    params = dict(N=N, cap=float(cap), wg=wg, covers=covers, expr=expr,
                  functions=elementwise_fns.wgsl_functions([st["fn"] for st in steps]))
    return _finish(name, "softcap", "softcap.wgsl.j2", params, [Binding("x", "read_write")], wg,
                   grid(-(-N // wg)), 0)


def argmax(N: int, *, wg: int = 256, per_thread: int = 16, cooperative: bool = True, covers=(),
           name: str = "argmax") -> list[Kernel]:
    """Greedy argmax over N logits in two dispatches, so a decode step reads back 8 bytes.

    Stage 1 bindings: x ([N]), pairs (scratch, info["pairs"] u32); workgroups ceil(N / (wg * per_thread)).
    Stage 2 bindings: pairs, out (u32 [2]: index, f32 bits of the max); one workgroup.
    cooperative=False (CPU adapters): no workgroup reduction; stage 1 invocation c scans logits
    [c * per_thread, (c + 1) * per_thread), wg per workgroup, and stage 2 is one invocation.
    """
    covers = _common(covers)
    _check(_pow2(wg), f"wg={wg} must be a power of two")
    if not cooperative:
        nc = -(-N // per_thread)
        info = {"pairs": 2 * nc}
        s1 = _finish(name + "_1", "argmax", "argmax_scan.wgsl.j2",
                     dict(stage=1, M=N, NC=nc, chunk=per_thread, wg=wg, covers=covers),
                     [Binding("x", "read"), Binding("pairs", "read_write")], wg, grid(-(-nc // wg)), 0, info=info)
        s2 = _finish(name + "_2", "argmax", "argmax_scan.wgsl.j2", dict(stage=2, M=nc, NC=1, chunk=nc, wg=1, covers=covers),
                     [Binding("pairs", "read"), Binding("out", "read_write")], 1, (1, 1, 1), 0, info=info)
        return [s1, s2]
    chunk = wg * per_thread
    nc = -(-N // chunk)
    info = {"pairs": 2 * nc}
    s1 = _finish(name + "_1", "argmax", "argmax.wgsl.j2", dict(stage=1, M=N, NC=nc, chunk=chunk, wg=wg, covers=covers),
                 [Binding("x", "read"), Binding("pairs", "read_write")], wg, grid(nc), 8 * wg, info=info)
    s2 = _finish(name + "_2", "argmax", "argmax.wgsl.j2", dict(stage=2, M=nc, NC=1, chunk=nc, wg=wg, covers=covers),
                 [Binding("pairs", "read"), Binding("out", "read_write")], wg, (1, 1, 1), 8 * wg, info=info)
    return [s1, s2]


def topk(N: int, k: int, *, chunk: int = 2048, wg: int = 256, covers=(), name: str = "topk") -> list[Kernel]:
    """Top-k (k <= 64) values and ids of N logits, descending, for sampling on the host.

    Stage 1 bindings: vals ([N]), vals_out, ids_out; later stages: vals, ids, vals_out, ids_out, each
    stage reducing chunks of `chunk` candidates to k until one chunk is left; the last stage writes k
    values and ids. info["sizes"] lists each stage's output length (entries).
    """
    covers = _common(covers)
    _check(1 <= k <= 64, f"k={k} must be in 1..64")
    _check(_pow2(wg) and chunk % wg == 0 and chunk >= k, "chunk must be a multiple of wg and >= k")
    stages, m, stage = [], N, 1
    while True:
        nc = -(-m // chunk)
        params = dict(stage=stage, M=m, NC=nc, k=k, chunk=chunk, wg=wg, covers=covers)
        b = [Binding("vals", "read")] + ([Binding("ids", "read")] if stage > 1 else [])
        b += [Binding("vals_out", "read_write"), Binding("ids_out", "read_write")]
        stages.append(_finish(f"{name}_{stage}", "topk", "topk.wgsl.j2", params, b, wg, grid(nc), 4 * chunk + 8 * wg,
                              info={"out": nc * k}))
        if nc == 1:
            return stages
        m, stage = nc * k, stage + 1


# family name -> constructor. Each returns a Kernel, or the list of Kernels dispatched in order
# (attn_decode: partials, combine; argmax: 2 stages; topk: 1+ stages). A constructor's docstring
# states its bindings (group 0, in order) and its workgroup count rule.
FAMILIES = {
    "matvec_int8": matvec_int8,
    "matmul_int8": matmul_int8,
    "embed_int8": embed_int8,
    "norm": norm,
    "elementwise": elementwise,
    "token_shift": token_shift,
    "strided_copy": strided_copy,
    "row_mean": row_mean,
    "row_topk": row_topk,
    "row_gather": row_gather,
    "row_scatter": row_scatter,
    "rope_qknorm": rope_qknorm,
    "rope_parts": rope_parts,
    "kv_write": kv_write,
    "attn_decode": attn_decode,
    "attn_prefill": attn_prefill,
    "softcap": softcap,
    "argmax": argmax,
    "topk": topk,
}
