"""`monologue train`, `monologue eval` and `monologue data` (click commands registered in the main CLI)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from monologue_compile.errors import MonologueError

from .presets import PRESETS


@click.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="demo", show_default=True, help="model size and schedule")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="run directory (checkpoint.pt lands here)")
@click.option("--seed", type=int, default=0, show_default=True, help="weights, data order and corpus all follow it")
@click.option("--resume", is_flag=True, help="continue from OUT/checkpoint.pt and OUT/train_state.pt")
@click.option("--steps", type=int, default=None, help="override the preset's number of steps")
@click.option("--batch-size", type=int, default=None, help="override rows per step per process")
@click.option("--lr", type=float, default=None, help="override the peak learning rate of the matrices")
@click.option("--optimizer", type=click.Choice(["adamw", "muon"]), default=None, help="override the preset's optimizer for the block matrices")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available)")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="token shards from `monologue data` (default: the built-in reasoning corpus)")
def train_cmd(preset, out_dir, seed, resume, steps, batch_size, lr, optimizer, device, data_dir):
    """Train a GPT into OUT/checkpoint.pt (the compiler's input). Works under torchrun too."""
    from .presets import get_preset
    from .train import train

    cfg = get_preset(preset, steps=steps, batch_size=batch_size, lr=lr, optimizer=optimizer)
    tokenizer = None
    if data_dir is not None:
        from monologue_compile.tokenizer import Tokenizer

        tokenizer_path = Path(data_dir) / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise MonologueError(f"{tokenizer_path}: missing (shards and their tokenizer travel together)")
        tokenizer = Tokenizer.load(str(tokenizer_path))
    meta = train(cfg, out_dir, seed=seed, resume=resume, preset=preset, device=device, data_dir=data_dir, tokenizer=tokenizer)
    if os.environ.get("RANK", "0") == "0":
        click.echo(f"saved {Path(out_dir) / 'checkpoint.pt'} (step {meta['step']}, val_loss {meta['val_loss']:.4f}, "
                   f"{meta.get('wall_seconds', 0):.0f}s)")


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--n", "n_per_family", type=int, default=50, show_default=True, help="held-out problems per family")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
@click.option("--show", type=int, default=0, help="also print this many example replies")
def eval_cmd(checkpoint, n_per_family, seed, as_json, show):
    """Held-out accuracy per task family (greedy), well-formed replies and validation loss."""
    from .evaluate import evaluate, format_report, load_checkpoint
    from .train import set_cpu_threads

    set_cpu_threads()
    model, tokenizer, _ = load_checkpoint(checkpoint)
    result = evaluate(model, tokenizer, n_per_family, seed)
    if as_json:
        click.echo(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=1))
    else:
        click.echo(format_report(result))
    for example in result["examples"][:show]:
        mark = "ok " if example["correct"] else "BAD"
        click.echo(f"{mark} {example['user']}\n    think: {example['thought']}\n    answer: {example['answer']}")


@click.group()
def data_cmd():
    """Real training data: download parquet shards (only when asked) and tokenize a mix of them."""


@data_cmd.command("download")
@click.option("--dataset", type=click.Choice(["fineweb-edu", "openr1"]), required=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--shards", type=int, default=1, show_default=True, help="how many parquet files to fetch")
def download_cmd(dataset, out_dir, shards):
    """Fetch parquet shards from the Hugging Face hub (needs internet; skips files already there)."""
    from .data.realdata import download

    for path in download(dataset, out_dir, shards):
        click.echo(str(path))


@data_cmd.command("prepare")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="shard directory for `train --data`")
@click.option("--fineweb", default=None, help="FineWeb-Edu parquet: a directory or a glob")
@click.option("--openr1", default=None, help="OpenR1 parquet: a directory or a glob")
@click.option("--mix", default=None, help="ratios, e.g. fineweb=0.6,openr1=0.3,builtin=0.1 (default: equal)")
@click.option("--vocab-size", type=int, default=65536, show_default=True)
@click.option("--max-documents", type=int, default=None, help="stop after this many documents")
@click.option("--seed", type=int, default=0, show_default=True)
def prepare_cmd(out_dir, fineweb, openr1, mix, vocab_size, max_documents, seed):
    """Train a tokenizer on the sources and write token shards of the mix."""
    from .data.realdata import parse_mix, prepare

    index = prepare(out_dir, fineweb, openr1, parse_mix(mix) if mix else None, vocab_size, max_documents=max_documents, seed=seed)
    click.echo(f"{out_dir}: {index['documents']} documents, {index['num_tokens']} tokens, mix {index['mix']}")
