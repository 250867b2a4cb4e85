"""The memory plan (every buffer decision both backends make) and the dispatch schedules for decode
and chunked prefill.

`memory_plan` decides, as the annotation `meta.memory_plan` (docs/formats.md), where every value of
the final IR lives; the WGSL plan (backends/wgsl_plan.py) and the Rust crate (backends/rust_crate.py)
only read it, and `check_memory_plan` refuses an annotation under which a value would be read after
its buffer was overwritten.

- Views (reshape, permute, slice, expand, cast) own no memory: they alias their source's buffer.
- Every other kernel output gets a buffer from a pool, first fit, freed after its last (transitive)
  use; a buffer's size is counted per token, since every activation is (1, T, ...) and T is 1 in
  decode and the chunk length in prefill.
- In place (`in_place`: node -> the input whose buffer its output takes) where exact: a matmul whose
  last epilogue step adds a dying residual (`y = r + f(x @ W.T)`) and a row-wise op (elementwise
  chain, norm, softmax) over a dying input 0. Every backend's kernel reads each element of that
  input before it stores the element of the output in its place (for the matmul epilogue: each
  output element's operand is read once, by the thread that computes the element, just before the
  store).
- Straight into the KV cache (`kv_write`: value -> {attention, part}): a k or v whose only reader
  is one attention node and whose producer's kernels write rows at the cache position on every
  backend (rope's k; an elementwise v, such as a projection mixed with value embeddings) has no
  buffer; its kernel writes the cache rows [pos, pos + T) the attention then reads, instead of a
  temporary the attention would copy.
Attention nodes own a KV cache of sequence_len positions (`kv_cache`).

A backend whose fused kernel reads a value later than the graph does (the WGSL plan folding a norm
into the matmuls after it reads the norm's input there) asks `intact_until` whether the plan leaves
that value in its buffer until then; the annotation itself stays what every backend reads.
"""

from __future__ import annotations

import math

from .. import elementwise
from ..errors import MonologueError
from ..ir import OPS, SEQ, Graph, Node

PREFILL_CHUNK = 64

# ops whose kernels, on every backend, can write their output rows straight into KV-cache rows at
# the cache position (wgsl: rope_qknorm's out_at_pos, elementwise's y_at_pos; rust: any kernel,
# through a View at pos): rope's k, and a v mixed from its projection (value embeddings)
CACHE_WRITERS = ("rope", "elementwise")
# ops whose kernel is a chain of steps over the rows of input 0, one row at a time: each can run
# over its own input in place (wgsl: `elementwise` with inplace; rust: k::elementwise_in_place)
ROW_OPS = ("elementwise", "rms_norm", "layer_norm", "softmax")
# views through which an in-place input still is its whole buffer, element for element
WHOLE_VIEWS = ("reshape", "cast")


class PlanError(MonologueError):
    """A memory plan under which some value would be read after its buffer was overwritten."""


def _per_token(shape) -> tuple[int, int]:
    """(elements per token, fixed elements): a (1, T, 4, 8) tensor is (32, 0); no T is (0, n)."""
    dims = [d for d in shape if d != SEQ]
    n = math.prod(dims) if dims else 1
    return (n, 0) if SEQ in shape else (0, n)


def _roots(g: Graph) -> dict[str, str]:
    """Each value (node) -> the kernel output owning its memory (a view's source, transitively)."""
    root: dict[str, str] = {}
    for n in g.nodes:
        root[n.name] = root.get(n.inputs[0], n.inputs[0]) if not OPS[n.op].kernel else n.name
    return root


def _last_use(g: Graph, root: dict[str, str]) -> dict[str, int]:
    """Root value -> index of the last node reading it (or a view of it); outputs live to the end."""
    last: dict[str, int] = {}
    for i, n in enumerate(g.nodes):
        for inp in n.inputs:
            if inp in root:
                last[root[inp]] = i
    for o in g.outputs:
        last[root[o]] = len(g.nodes)
    return last


def in_place_input(g: Graph, n: Node) -> int | None:
    """The input of n its kernel can overwrite element by element (read before written), if any:
    a matmul's residual (the operand of a trailing `add` after only elementwise functions and a
    leading bias), a row op's input 0."""
    if n.op in ROW_OPS:
        return 0
    if n.op != "matmul":
        return None
    ep = n.attrs.get("epilogue") or []
    if not ep or ep[-1].get("fn") != "add" or "operand" not in ep[-1] or ep[-1].get("reverse"):
        return None
    for k, st in enumerate(ep[:-1]):
        if "operand" in st:
            if not (k == 0 and st["fn"] == "add" and n.inputs[2 + st["operand"]] in g.weights):
                return None
        elif st["fn"] not in elementwise.FUNCTIONS:
            return None
    return 2 + ep[-1]["operand"]


def _whole(g: Graph, name: str, root: dict[str, str]) -> bool:
    """name is its root's whole buffer, element for element (itself, or reshapes/casts of it)."""
    while name != root.get(name, name):
        n = g.node(name)
        if n.op not in WHOLE_VIEWS:
            return False
        name = n.inputs[0]
    return name in root


def _cache_writes(g: Graph) -> dict[str, dict]:
    """k/v values to write straight into their attention's cache (see the module docstring)."""
    users = g.users()
    nodes = {n.name for n in g.nodes}
    out = {}
    for a in g.nodes:
        if a.op != "attention" or a.attrs.get("layout") != "BTHD":
            continue
        for idx, part in ((1, "k"), (2, "v")):
            x = a.inputs[idx]
            if x in g.outputs or x not in nodes:
                continue
            if g.node(x).op in CACHE_WRITERS and [u.name for u in users.get(x, [])] == [a.name] \
                    and a.inputs.count(x) == 1:
                out[x] = {"attention": a.name, "part": part}
    return out


def memory_plan(g: Graph) -> Graph:
    root = _roots(g)
    last_use = _last_use(g, root)
    kv_write = _cache_writes(g)
    buffers: list[dict] = []
    free: list[int] = []
    assign: dict[str, int] = {}
    owner: dict[int, str] = {}  # buffer -> the root value living in it now
    in_place: dict[str, str] = {}
    for i, n in enumerate(g.nodes):
        if OPS[n.op].kernel and n.name not in kv_write:
            per_tok, fixed = _per_token(n.type.shape)
            k = in_place_input(g, n)
            x = n.inputs[k] if k is not None else None
            r = root.get(x)
            if (r in assign and last_use[r] == i and owner.get(assign[r]) == r and _whole(g, x, root)
                    and _per_token(g.type_of(x).shape) == (per_tok, fixed)
                    and sum(root.get(y) == r for y in n.inputs) == 1):
                pick = assign[r]
                in_place[n.name] = x
            else:
                # the smallest free buffer that fits, else the largest free one grows (the least growth)
                fits = [b for b in free if buffers[b]["per_token"] >= per_tok and buffers[b]["fixed"] >= fixed]
                pick = min(fits, key=lambda b: (buffers[b]["per_token"], buffers[b]["fixed"]), default=None)
                if pick is None and free:
                    pick = max(free, key=lambda b: (buffers[b]["per_token"], buffers[b]["fixed"]))
                if pick is None:
                    pick = len(buffers)
                    buffers.append({"id": pick, "per_token": 0, "fixed": 0})
                else:
                    free.remove(pick)
            buffers[pick]["per_token"] = max(buffers[pick]["per_token"], per_tok)
            buffers[pick]["fixed"] = max(buffers[pick]["fixed"], fixed)
            assign[n.name] = pick
            owner[pick] = n.name
        # free what died at this node (after its output was placed: in place only as decided above)
        for inp in dict.fromkeys(n.inputs):  # ordered: the plan must not depend on hash seeds
            r = root.get(inp)
            if r in assign and last_use.get(r) == i and owner.get(assign[r]) == r and assign[r] not in free:
                free.append(assign[r])
        if n.name in assign and last_use.get(n.name, -1) < i:
            free.append(assign[n.name])
    cfg = g.meta.get("config", {})
    kv = [{"node": n.name, "positions": cfg.get("sequence_len"), "n_kv_head": n.attrs["n_kv_head"],
           "head_dim": n.attrs["head_dim"]} for n in g.nodes if n.op == "attention"]
    g.meta["memory_plan"] = {
        "f32_buffers": buffers,
        "assign": {k: assign[root[k]] if root.get(k) in assign else None for k in root},
        "in_place": in_place,
        "kv_write": kv_write,
        "kv_cache": kv,
        "naive_per_token": sum(_per_token(n.type.shape)[0] for n in g.nodes if OPS[n.op].kernel),
    }
    return check_memory_plan(g)


def check_memory_plan(g: Graph) -> Graph:
    """Refuse a plan under which a value is read after its buffer was overwritten (PlanError, naming
    both values), a buffer smaller than a value placed in it, an in-place decision a kernel cannot
    take, or a KV-cache write some other node reads. Walks the schedule once, tracking which value
    each buffer holds."""
    mp = g.meta.get("memory_plan")
    if not mp:
        raise PlanError("the IR has no memory plan: run the whole pass pipeline first")
    root = _roots(g)
    last_use = _last_use(g, root)
    assign, in_place, kv_write = mp["assign"], mp.get("in_place", {}), mp.get("kv_write", {})
    sizes = {b["id"]: (b["per_token"], b["fixed"]) for b in mp["f32_buffers"]}
    holds: dict[int, str] = {}  # buffer -> the value written there last
    for i, n in enumerate(g.nodes):
        if not OPS[n.op].kernel:
            continue
        for x in dict.fromkeys(n.inputs):
            if x not in root:
                continue
            if root[x] in kv_write and (n.op != "attention" or kv_write[root[x]]["attention"] != n.name):
                raise PlanError(f"memory plan: %{n.name} reads %{x}, which is written only into the KV cache "
                                f"of %{kv_write[root[x]]['attention']}")
            b = assign.get(x)
            if b is not None and holds.get(b) != root[x]:
                raise PlanError(f"memory plan: %{n.name} reads %{x} from buffer {b}, which %{holds.get(b)} "
                                f"overwrote (two live values in one buffer)")
        if n.name in kv_write:
            if n.op not in CACHE_WRITERS:
                raise PlanError(f"memory plan: %{n.name} ({n.op}) cannot write into a KV cache")
            continue
        b = assign.get(n.name)
        if b is None or b not in sizes:
            raise PlanError(f"memory plan: %{n.name} has no buffer")
        need = _per_token(n.type.shape)
        if sizes[b][0] < need[0] or sizes[b][1] < need[1]:
            raise PlanError(f"memory plan: %{n.name} needs {need} elements (per token, fixed), buffer {b} has {sizes[b]}")
        prev = holds.get(b)
        if prev is not None and last_use.get(prev, -1) >= i:
            k = in_place_input(g, n)
            ok = k is not None and in_place.get(n.name) == n.inputs[k] and root.get(n.inputs[k]) == prev \
                and last_use[prev] == i and _whole(g, n.inputs[k], root)
            if not ok:
                later = next((m.name for m in g.nodes[i + 1:] if any(root.get(y) == prev for y in m.inputs)), None)
                why = (f"read by %{later}" if later else "a graph output" if last_use[prev] == len(g.nodes)
                       else f"an input of %{n.name}, which the plan does not mark in place over it")
                raise PlanError(f"memory plan: %{n.name} overwrites buffer {b} while %{prev} still lives there "
                                f"({why}): two live values in one buffer")
        elif n.name in in_place:
            raise PlanError(f"memory plan: %{n.name} is marked in place over %{in_place[n.name]}, which is not in its buffer")
        holds[b] = n.name
    return g


def intact_until(g: Graph, value: str, reader: str, skip: tuple = ()) -> bool:
    """Whether `value` still holds its contents in its buffer when node `reader` runs, if the kernel
    nodes in `skip` do not run: no other kernel between the value's producer and `reader` writes
    that buffer. The claim a backend makes when a fused kernel reads a value later than the graph
    does (wgsl_plan: a matmul reading a norm's input, the norm folded into its prologue)."""
    mp = g.meta["memory_plan"]
    root = _roots(g)
    r = root.get(value)
    b = mp["assign"].get(value)
    if r is None or b is None or r in mp["kv_write"]:
        return False
    order = {n.name: i for i, n in enumerate(g.nodes)}
    return not any(OPS[n.op].kernel and n.name not in skip and n.name not in mp["kv_write"] and mp["assign"].get(n.name) == b
                   for n in g.nodes[order[r] + 1:order[reader]])


def schedule(g: Graph) -> Graph:
    """Both schedules dispatch the same kernels in graph order; they differ only in T.

    Decode runs them with T = 1 at the cache position; prefill runs them per chunk of up to
    PREFILL_CHUNK tokens (attention reads the cache written by earlier chunks).
    """
    kernels = [n.name for n in g.nodes if OPS[n.op].kernel]
    chunk = min(PREFILL_CHUNK, int(g.meta.get("config", {}).get("sequence_len", PREFILL_CHUNK)))
    g.meta["schedule"] = {"kernels": kernels, "decode": {"T": 1}, "prefill": {"chunk": chunk}}
    return g
