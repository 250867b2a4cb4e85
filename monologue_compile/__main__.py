"""`python -m monologue_compile ...` is `monologue ...` (for scripts that should not rely on PATH)."""

from .cli import main

main(prog_name="monologue")
