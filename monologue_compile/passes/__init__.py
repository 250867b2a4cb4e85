"""The pass pipeline: IR in, IR out, the verifier after every pass, a record of what each did."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..ir import OPS, Graph, verify
from .canonicalize import canonicalize
from .fold_norm import fold_norm_weights
from .fuse import fuse
from .layout import layout
from .plan import memory_plan, schedule
from .quantize import quantize
from .views import materialize_views


@dataclass
class PassRecord:
    name: str
    ops_before: int
    ops_after: int
    kernels_before: int
    kernels_after: int
    weight_bytes: int
    ops: dict
    detail: str = ""

    def line(self) -> str:
        return (f"{self.name:<13} ops {self.ops_before:>5} -> {self.ops_after:<5} kernels {self.kernels_before:>5} -> "
                f"{self.kernels_after:<5} weights {self.weight_bytes / 2**20:9.2f} MiB" +
                (f"  ({self.detail})" if self.detail else ""))


def _detail(name: str, g: Graph) -> str:
    """What a pass did, in the terms of its own rules."""
    mm = [n for n in g.nodes if n.op == "matmul"]
    if name == "layout":
        return f"attention layouts {sorted({n.attrs['layout'] for n in g.nodes if n.op == 'attention'})}"
    if name == "fuse":
        return (f"{sum(1 for n in mm if n.attrs['prologue'])} norm prologues, "
                f"{sum(1 for n in mm if n.attrs['epilogue'])} epilogues, "
                f"{len(g.meta.get('merged_weights', {}))} merged projections, "
                f"{sum(1 for n in g.nodes if n.op == 'rope')} rope, "
                f"{sum(1 for n in g.nodes if n.op == 'elementwise')} elementwise")
    if name == "views":
        return f"{sum(1 for n in g.nodes if n.op == 'copy')} copies"
    if name == "fold_norm":
        return f"{len(g.meta.get('folded_norm_weights', {}))} norm weights folded into matmuls"
    if name == "quantize":
        q = [w for w in g.weights.values() if w.dtype == "q8"]
        return f"{len(q)} int8 tensors, {len(g.weights) - len(q)} f32"
    return ""


def run_pipeline(g: Graph, quant: str = "int8") -> tuple[Graph, list[PassRecord]]:
    passes = [
        ("canonicalize", canonicalize),
        ("fold_norm", lambda x: fold_norm_weights(x, quant)),
        ("layout", layout),
        ("fuse", fuse),
        ("views", materialize_views),
        ("quantize", lambda x: quantize(x, quant)),
        ("memory_plan", memory_plan),
        ("schedule", schedule),
    ]
    records = []
    verify(g, "lowering")
    for name, fn in passes:
        before, kb = len(g.nodes), g.kernel_count()
        g = verify(fn(g), name)
        records.append(PassRecord(name, before, len(g.nodes), kb, g.kernel_count(), g.weight_bytes(),
                                   dict(Counter(n.op for n in g.nodes)), _detail(name, g)))
    return g, records


def kernels_per_layer(g: Graph) -> dict[str, int]:
    """Kernel count by the transformer layer its source names (`h.{i}.`), plus 'other'."""
    import re

    out: Counter = Counter()
    for n in g.nodes:
        if OPS[n.op].kernel:
            m = re.search(r"\bh\.(\d+)\b", n.source)
            out[f"layer {m.group(1)}" if m else "outside layers"] += 1
    return dict(out)
