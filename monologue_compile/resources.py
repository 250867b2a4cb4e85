"""Where the resource folders the compiler emits live: `templates/`, `web_shell/` and the
`runtime_rs/` crate sources. In a repository checkout (or an editable install) they sit beside
the `monologue_compile` package at the repository root; a wheel installs them at the same
relative place in site-packages (see `[tool.maturin] include` in pyproject.toml), so one lookup
serves both.
"""

from __future__ import annotations

from pathlib import Path

from .errors import MonologueError

_ROOT = Path(__file__).resolve().parent.parent


def _resource_dir(name: str, marker: str) -> Path:
    path = _ROOT / name
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
