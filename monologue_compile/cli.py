"""Command-line entry points: `monologue` (a click group) and `monologue-compile`.

Each subcommand lives beside the stage it drives and is registered here, so this file is the
table of contents of the CLI. User mistakes surface as `MonologueError`: one line, exit code 2; a bug, as one line, exit code 70.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

# Set before anything loads torch (OpenMP reads it once): torch's idle threads then sleep rather than
# spin. On a machine where other work holds a core, spinning threads cost training several times
# its throughput (benchmarks/bench_train_threads.py); on an idle one sleeping costs little.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402

from .errors import MonologueError  # noqa: E402


REPORT = "please report it, with this line and the command you ran, on the Monologue issue tracker"


def _one_line(call):
    """Run `call`, turning every way it can fail into one line on stderr and an exit code: a
    MonologueError or a bad option is the user's (its own code, 2), anything else is a bug in
    Monologue (70), never a traceback. MONOLOGUE_DEBUG=1 lets a bug's traceback through."""
    try:
        return call()
    except MonologueError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 -- the catch-all at the CLI boundary
        if os.environ.get("MONOLOGUE_DEBUG") == "1":
            raise
        tb = traceback.extract_tb(e.__traceback__)[-1]
        where = f"{Path(tb.filename).name}:{tb.lineno}"
        msg = " ".join(str(e).split())[:200]
        click.echo(f"error: internal error ({type(e).__name__} at {where}: {msg}); {REPORT}", err=True)
        sys.exit(70)


class _Group(click.Group):
    """A click group whose every failure is one line on stderr (see `_one_line`)."""

    def main(self, args=None, **kwargs):
        kwargs["standalone_mode"] = False
        return _one_line(lambda: super(_Group, self).main(args=args, **kwargs))


@click.group(cls=_Group)
@click.version_option(package_name="monologue-compile")
def main():
    """Monologue: train a reasoning GPT, compile it for the browser, verify, chat and serve it."""


def run_command(command: click.Command, args=None):
    """Run a single click command with the same error handling as the group (used by monologue-compile)."""
    _one_line(lambda: command.main(args=args, standalone_mode=False))


def compile_main():
    """`monologue-compile CHECKPOINT -o DIR`: the compiler on its own, same as `monologue compile`."""
    from .driver import compile_cmd

    run_command(compile_cmd)


def _needs_checkout(name: str, why: MonologueError) -> click.Command:
    """`monologue NAME` where the training/ package is absent (an installed wheel): one line saying so."""
    def fail(args):
        raise why

    return click.Command(name, callback=fail, help=f"(needs the repository checkout) {why}",
                         params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
                         context_settings={"ignore_unknown_options": True, "help_option_names": []})


# --- subcommands, in pipeline order: train -> compile -> verify -> chat / bench / serve ---
# Imported here rather than lazily: each module is cheap to import next to torch, which they share.
from .resources import training_module  # noqa: E402

try:
    _training = training_module("cli")
    train_cmd, eval_cmd, data_cmd = _training.train_cmd, _training.eval_cmd, _training.data_cmd
except MonologueError as _why:
    train_cmd, eval_cmd, data_cmd = (_needs_checkout(n, _why) for n in ("train", "eval", "data"))

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
