"""What the compiler finds beside its code: the resource folders it emits (`templates/`,
`web_shell/` and the `runtime_rs/` crate sources) and the repository's `training/` package.

The resource folders live at the repository root; `monologue_compile/_resources/` holds a symlink
to each, and a wheel holds real copies at that same path (`[tool.maturin] include` in
pyproject.toml follows the links), so one lookup serves a checkout, an editable install and a
wheel, and a wheel installs no top-level name but `monologue_compile`. `training/` (the train
loop, the reasoning corpus, eval) is not in the wheel: it needs the repository checkout.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from .errors import MonologueError

_ROOT = Path(__file__).resolve().parent / "_resources"


def _resource_dir(name: str, marker: str) -> Path:
    # resolved: in a checkout the crate is copied and hashed from its real place, not through a link
    path = (_ROOT / name).resolve()
    if not (path / marker).exists():
        raise MonologueError(
            f"resource folder {name}/ is missing (looked for {path / marker}); reinstall monologue-compile"
        )
    return path


def templates_dir() -> Path:
    """The jinja2 templates (`templates/wgsl/*.wgsl.j2`)."""
    return _resource_dir("templates", "wgsl")


def web_shell_dir() -> Path:
    """The static chat page (HTML, CSS, ES modules)."""
    return _resource_dir("web_shell", "index.html")


def runtime_rs_dir() -> Path:
    """The Rust runtime crate sources (`Cargo.toml`, `src/`), without build output."""
    return _resource_dir("runtime_rs", "Cargo.toml")


def training_module(name: str) -> ModuleType:
    """`training.<name>` from the repository checkout, or a MonologueError saying that it needs one."""
    try:
        return importlib.import_module(f"training.{name}")
    except ModuleNotFoundError as e:
        if e.name not in ("training", f"training.{name}"):
            raise
        raise MonologueError(
            "this needs the training/ package of the Monologue repository checkout, which the installed "
            "wheel does not ship: run it from a clone (pip install -e .)") from None
