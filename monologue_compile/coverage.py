"""Which backend runs which IR op: the coverage table `monologue ops` prints, read from the op table
(ir.OPS), the elementwise definitions (elementwise.py) and each backend's own op table."""

from __future__ import annotations

import click

BACKENDS = ("interpreter", "wgsl", "rust")


def coverage() -> dict[str, dict[str, str]]:
    """op -> backend -> "kernel" | "view" | "view/copy" (a view where it moves no data, else made a
    `copy` by the passes) | "bound" (read by its users' kernels) | "-> op" (always rewritten by the
    passes first) | "" (not covered)."""
    from .backends import rust_crate, wgsl_plan
    from .interpreter import KERNELS
    from .ir import OPS
    from .passes.views import COPIED

    tables = {
        "interpreter": (KERNELS, ()),
        "wgsl": (wgsl_plan.EMITTERS, wgsl_plan.VIEWS),
        "rust": (rust_crate.KERNELS, rust_crate.VIEWS),
    }
    out: dict[str, dict[str, str]] = {}
    for op, info in OPS.items():
        row = {}
        for b, (kernels, views) in tables.items():
            if b != "interpreter" and info.becomes:
                row[b] = f"-> {info.becomes}"
            elif op in kernels:
                row[b] = "kernel"
            elif op in views:
                row[b] = "view/copy" if op in COPIED and "copy" in kernels else "view"
            elif b == "wgsl" and op in wgsl_plan.BOUND:
                row[b] = "bound"
            else:
                row[b] = ""
        out[op] = row
    return out


def table() -> str:
    from . import elementwise
    from .ir import OPS

    cov = coverage()
    lines = [f"{'op':<13} {'seq':<9} " + " ".join(f"{b:<14}" for b in BACKENDS), "-" * 68]
    for op, row in cov.items():
        lines.append(f"{op:<13} {OPS[op].seq:<9} " + " ".join(f"{row[b] or 'MISSING':<14}" for b in BACKENDS))
    lines += ["", "elementwise functions (attrs.fn and epilogue steps; one definition in elementwise.py, rendered for "
              "numpy, WGSL and Rust):",
              "  unary:  " + ", ".join(elementwise.UNARY), "  binary: " + ", ".join(elementwise.BINARY)]
    return "\n".join(lines) + "\n"


@click.command("ops")
def ops_cmd():
    """Print the IR op x backend coverage table."""
    click.echo(table(), nl=False)
