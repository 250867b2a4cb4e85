"""The static chat page inside a compiled site: the compiler copies web_shell/ into dist/."""

from __future__ import annotations

import shutil
from pathlib import Path

from .resources import web_shell_dir

# web_shell/ holds only what a visitor's browser loads; anything else there is not part of the site.
SITE_SUFFIXES = {".html", ".css", ".js", ".svg", ".png", ".ico"}


def copy_web_shell(dist_dir: Path) -> list[Path]:
    """Copy the page's files into `dist_dir` (created if needed); returns the paths written, sorted.

    Files are copied by content only (no timestamps), in a fixed order, so the same sources give a
    byte-identical dist/.
    """
    source = web_shell_dir()
    dist_dir = Path(dist_dir)
    written = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if not path.is_file() or path.suffix not in SITE_SUFFIXES or rel.parts[0].startswith("."):
            continue
        target = dist_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        written.append(target)
    return written
