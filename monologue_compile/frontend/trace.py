"""Trace the plain full-sequence forward into an fx graph of ATen ops, with a symbolic length T.

torch.export (non-strict) with `idx` of shape (1, T), T dynamic in [1, sequence_len]: every
shape that depends on the length stays symbolic, so the one graph serves prefill of any length
and decode (T = 1). No cache code is needed in the model.

There is no torch.fx `symbolic_trace` fallback (yet): non-strict export runs the model's Python as
is, with fake tensors, so what stops it (branches on tensor values, int() of a length) stops
symbolic_trace too; what remains (a custom op without a fake-tensor kernel) would have no entry in
the ATen table either.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys

import torch

from ..errors import MonologueError
from .rewrites import decompose, drop_dead_code, ids_shape_only, inline_autocast, written_softmax
from .experts import dense_experts


def trace(module: torch.nn.Module, sequence_len: int) -> torch.export.ExportedProgram:
    # Lengths 0 and 1 get specialized (and a token shift's T - 1 would for T = 2), so the traced
    # range starts at 3; the IR is T-generic, and decode runs the same graph with T = 1.
    hi = max(4, sequence_len)
    example = torch.zeros(1, min(8, hi), dtype=torch.long)
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    # export logs what it could not trace, traceback and all, besides raising it: the one-line
    # error below says it, and the user's terminal gets nothing else
    torch_log.setLevel(logging.CRITICAL)
    # and prints the partial graph of a failed trace to stderr (torch/export/_trace.py), a hundred
    # lines of it: held back, and passed on only when the trace succeeds (the model's own warnings)
    held = io.StringIO()
    guards: list[str] = []
    try:
        with torch.no_grad(), contextlib.redirect_stderr(held), dense_experts(module), _guards_added(guards):
            ep = _export(module, example, hi)
        sys.stderr.write(held.getvalue())
        if isinstance(getattr(module, "every", None), torch.fx.GraphModule):
            _restore_sources(ep, module.every)
    except MonologueError:
        raise
    except Exception as e:  # export's own message names the construct it could not trace
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        if lines and lines[0].startswith("Constraints violated"):
            guard = next((ln for ln in lines if "guard" in ln), lines[0])
            if any("specialized it to be a constant" in ln for ln in lines):
                guard = "its code turns the length into a Python number (int(T), range(T), a shape computed in " \
                        "Python)" + _guard_source(guards)
            raise MonologueError("the model treats some sequence lengths specially, so no single graph serves every "
                                 f"length (sequence-mixing the compiler does not understand): {guard[:300]}") from None
        first = lines[0] if lines else type(e).__name__
        raise MonologueError(f"torch.export could not trace the model: {first[:300]}{_cause(lines)}") from None
    finally:
        torch_log.setLevel(level)
    inline_autocast(ep)
    decompose(ep)
    ids_shape_only(ep)
    written_softmax(ep)
    drop_dead_code(ep)
    return ep


@contextlib.contextmanager
def _guards_added(into: list[str]):
    """The shape guards export adds while it traces (each with the user's file:line), collected from
    torch's symbolic-shapes log and kept off the terminal."""
    log = logging.getLogger("torch.fx.experimental.symbolic_shapes")

    class Collect(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if "[guard added]" in msg:
                into.append(msg)

    handlers, level, propagate = log.handlers, log.level, log.propagate
    log.handlers, log.propagate = [Collect()], False
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.handlers, log.propagate = handlers, propagate
        log.setLevel(level)


def _guard_source(guards: list[str]) -> str:
    """" at file.py:559 (the line)" of the first guard fixing the length to a number, else ""."""
    import linecache

    for g in guards:
        m = re.search(r"eval Eq\(\w+, \d+\) \[guard added\].*?\(([^()]*?):(\d+) in \w+\)", g)
        if not m:
            continue
        tail, line = m.group(1), int(m.group(2))
        path = next((f for f in (getattr(mod, "__file__", None) for mod in list(sys.modules.values()))
                     if f and f.endswith(tail)), None)
        code = linecache.getline(path, line).strip() if path else ""
        return f" at {tail.rsplit('/', 1)[-1]}:{line}" + (f" ({code[:100]})" if code else "")
    return ""


def _restore_sources(ep: torch.export.ExportedProgram, edited: torch.fx.GraphModule) -> None:
    """A model traced through its edited graph (last_position.py) gets, at each node, the frames of
    that graph's generated code: each node is given back the stack trace of the edited graph's node
    at that line, the user's own, so errors still name their file and line."""
    nodes = {n.name: n for n in edited.graph.nodes}
    by_line = {}
    for i, line in enumerate(edited.code.splitlines(), 1):
        node = nodes.get(line.strip().partition(" = ")[0])
        if node is not None and node.meta.get("stack_trace"):
            by_line[i] = node.meta["stack_trace"]
    for n in ep.graph.nodes:
        at = re.findall(r'File "<eval_with_key>\.\d+", line (\d+)', n.meta.get("stack_trace") or "")
        if at and int(at[-1]) in by_line:
            n.meta["stack_trace"] = by_line[int(at[-1])]


def _cause(lines: list[str]) -> str:
    """" (at file.py:101: the line)" of the model's code export names as the cause, else ""."""
    at = next((i for i, ln in enumerate(lines) if ln.startswith("The following call raised this error")), None)
    if at is None or at + 2 >= len(lines) or not lines[at + 1].startswith("File "):
        return ""
    m = re.match(r'File "(?:.*/)?([^/"]+)", line (\d+)', lines[at + 1])
    return f" (at {m.group(1)}:{m.group(2)}: {lines[at + 2][:120]})" if m else ""


def _export(module, example, hi: int):
    T = torch.export.Dim("T", min=3, max=hi)
    try:
        return torch.export.export(module, (example,), dynamic_shapes=({1: T},), strict=False)
    except Exception as e:
        # `buffer[:T]` of a buffer with exactly `hi` rows: export specializes T == hi (a slice that
        # ends at the size is another case), so the graph serves every length but the last
        if f"!= {hi}" in str(e) or f"<= {hi - 1}" in str(e):
            hi -= 1
        elif not _guards_only(e):
            raise
    T = torch.export.Dim("T", min=3, max=hi)
    try:
        return torch.export.export(module, (example,), dynamic_shapes=({1: T},), strict=False)
    except Exception as e:
        if not _guards_only(e):
            raise
    return _export_proving_guards(module, example, hi)


def _guards_only(e: Exception) -> bool:
    """Whether export refused only for guards on the length it could not prove (no length made a
    Python number), which evaluating them may prove."""
    text = str(e)
    return text.startswith("Constraints violated") and "specialized it to be a constant" not in text


def _export_proving_guards(module, example, hi: int) -> torch.export.ExportedProgram:
    """The graph for lengths 3..hi, where export's symbolic reasoning could not prove the guards
    its trace added (Llama 4's `T * min(32, 32 * T) == 32 * T`, `min(2048, T) <= T`): traced
    with the length left dynamic, then each guard evaluated at every length 1..hi (decode runs
    the graph at 1). A guard false at some length is refused, naming it and the length."""
    T = torch.export.Dim.DYNAMIC(min=3, max=hi)
    ep = torch.export.export(module, (example,), dynamic_shapes=({1: T},), strict=False)
    length = [n for n in ep.graph.nodes if n.op == "placeholder"][-1].meta["val"].shape[1]
    ranges = [(int(r.lower), int(r.upper)) for r in ep.range_constraints.values()]
    if not isinstance(length, torch.SymInt) or ranges != [(3, hi)]:
        raise MonologueError("the model treats some sequence lengths specially, so no single graph serves every "
                             f"length (sequence-mixing the compiler does not understand): export narrowed the "
                             f"length to {ranges or 'a constant'}")
    for guard in getattr(ep, "_guards_code", None) or []:
        expression = re.sub(r"L\['\w+'\]\.size\(\)\[1\]", "T", guard)
        # only the length, numbers, arithmetic, comparisons, min and max are evaluated
        arithmetic = re.fullmatch(r"[\sT0-9()+\-*/%<>=!,]*", expression.replace("min(", "(").replace("max(", "("))
        holds = eval(f"lambda T: {expression}", {"__builtins__": {}, "min": min, "max": max}) if arithmetic else None  # noqa: S307
        failing = next((t for t in range(1, hi + 1) if not _holds(holds, t)), None)
        if failing is not None:
            raise MonologueError("the model treats some sequence lengths specially, so no single graph serves every "
                                 f"length (sequence-mixing the compiler does not understand): the guard "
                                 f"{guard[:200]} fails at T = {failing}")
    return ep


def _holds(guard, t: int) -> bool:
    """Whether `guard` (None: one that is not arithmetic on the length) is true at length t."""
    try:
        return guard is not None and bool(guard(t))
    except ArithmeticError:  # a division by zero at this length
        return False


def source_line(n: torch.fx.Node) -> str:
    """'file.py:123 code' for the innermost frame of the user's model (not torch's own)."""
    st = n.meta.get("stack_trace") or ""
    lines = st.strip().splitlines()
    best = ""
    for i, ln in enumerate(lines):
        ln = ln.strip()
        if ln.startswith("File ") and "/torch/" not in ln:
            parts = ln.split('"')
            fname = parts[1].rsplit("/", 1)[-1] if len(parts) > 1 else "?"
            lineno = ln.split("line ")[-1].split(",")[0]
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            best = f"{fname}:{lineno} {code}"
    return best
