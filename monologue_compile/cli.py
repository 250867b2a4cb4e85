"""Command-line entry points: `monologue` (a click group) and `monologue-compile`.

Each subcommand lives beside the stage it drives and is registered here, so this file is the
table of contents of the CLI. User mistakes surface as `MonologueError`: one line, exit code 2.
"""

from __future__ import annotations

import sys

import click

from .errors import MonologueError


class _Group(click.Group):
    """A click group that turns MonologueError into one line on stderr and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MonologueError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)


@click.group(cls=_Group)
@click.version_option(package_name="monologue-compile")
def main():
    """Monologue: train a reasoning GPT, compile it for the browser, verify, chat and serve it."""


def run_command(command: click.Command, args=None):
    """Run a single click command with the same error handling as the group (used by monologue-compile)."""
    try:
        command.main(args=args, standalone_mode=False)
    except MonologueError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)


def compile_main():
    """`monologue-compile CHECKPOINT -o DIR`: the compiler on its own, same as `monologue compile`."""
    from .driver import compile_cmd

    run_command(compile_cmd)


# --- subcommands, in pipeline order: train -> compile -> verify -> chat / bench / serve ---
# Imported here rather than lazily: each module is cheap to import next to torch, which they share.
from training.cli import data_cmd, eval_cmd, train_cmd  # noqa: E402

from .backends.rust_crate import build_runtime_cmd  # noqa: E402
from .bench import bench_cmd  # noqa: E402
from .chat import chat_cmd  # noqa: E402
from .coverage import ops_cmd  # noqa: E402
from .driver import compile_cmd, verify_cmd  # noqa: E402
from .serve import serve_cmd  # noqa: E402

for _name, _command in [
    ("train", train_cmd), ("eval", eval_cmd), ("data", data_cmd),
    ("compile", compile_cmd), ("build-runtime", build_runtime_cmd), ("verify", verify_cmd), ("ops", ops_cmd),
    ("chat", chat_cmd), ("bench", bench_cmd), ("serve", serve_cmd),
]:
    main.add_command(_command, _name)
