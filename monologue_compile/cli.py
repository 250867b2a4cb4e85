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


# --- subcommands: each stage registers its command with one line below ---
from .serve import serve_cmd; main.add_command(serve_cmd, "serve")  # noqa: E402,E702
from .driver import compile_cmd, verify_cmd; main.add_command(compile_cmd, "compile"); main.add_command(verify_cmd, "verify")  # noqa: E402,E702
from .chat import chat_cmd; main.add_command(chat_cmd, "chat")  # noqa: E402,E702
from .backends.rust_crate import build_runtime_cmd; main.add_command(build_runtime_cmd, "build-runtime")  # noqa: E402,E702
from training.cli import train_cmd, eval_cmd, data_cmd; main.add_command(train_cmd, "train"); main.add_command(eval_cmd, "eval"); main.add_command(data_cmd, "data")  # noqa: E402,E702
from benchmarks.bench_backends import bench_cmd; main.add_command(bench_cmd, "bench")  # noqa: E402,E702
