"""Render `templates/wgsl/*.wgsl.j2` into WGSL source.

Templates are shape-specialized: every size is a render parameter, so the generated WGSL contains
literal constants and the shader compiler can unroll and strength-reduce. StrictUndefined makes a
missing parameter a render error instead of an empty string in the kernel.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jinja2

from ..resources import templates_dir


def template_dir() -> Path:
    """The folder holding the `*.wgsl.j2` templates."""
    return templates_dir() / "wgsl"


def wgsl_float(x: float) -> str:
    """A WGSL f32 literal that round-trips the f32 value (repr of the f32, never `inf`/`nan`)."""
    import numpy as np

    v = float(np.float32(x))
    if not math.isfinite(v):
        raise ValueError(f"cannot write {x!r} as a WGSL literal")
    s = repr(v)
    if "e" not in s and "." not in s:
        s += ".0"
    return s + "f"


@functools.lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["f32"] = wgsl_float
    return env


def render(template: str, **params) -> str:
    """Render one template with its parameters; collapses runs of blank lines left by jinja blocks."""
    src = _env().get_template(template).render(**params)
    out, blank = [], False
    for line in src.splitlines():
        if not line.strip():
            if blank:
                continue
            blank = True
        else:
            blank = False
        out.append(line.rstrip())
    return "\n".join(out).strip() + "\n"
