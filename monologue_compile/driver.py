"""`monologue-compile CHECKPOINT -o DIR` and `monologue verify DIR`: the pipeline end to end.

    load -> trace -> lower -> passes -> write model/ -> WGSL plan -> Rust crate (+ runtime.wasm)
         -> web page (+ parity report with --verify)

The output is written into a temporary sibling directory and renamed into place only when every
step succeeded, so a failed compile leaves nothing behind (and an existing DIR untouched).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console

from .errors import MonologueError
from .frontend.load import LoadedModel, load
from .frontend.trace import trace
from .ir import Graph
from .lower import lower
from .passes import PassRecord, kernels_per_layer, run_pipeline
from .passes.quantize import SCHEMES
from .site import copy_web_shell

console = Console(stderr=True)

def compiler_version() -> str:
    try:
        from importlib.metadata import version

        return version("monologue-compile")
    except Exception:  # running from a source tree that is not installed
        return "0.0.0+source"


@dataclass
class Compiled:
    loaded: LoadedModel
    graph: Graph
    lowered_ops: int
    records: list[PassRecord]
    timings: dict


@contextmanager
def _step(name: str, timings: dict):
    t0 = time.perf_counter()
    with console.status(f"{name}..."):
        yield
    timings[name] = time.perf_counter() - t0


def build(checkpoint, quant: str = "int8", tokenizer=None, config=None) -> Compiled:
    """Checkpoint -> final IR with quantized weights (nothing written)."""
    if quant not in SCHEMES:
        raise MonologueError(f"--quant {quant}: unknown scheme; choose one of {', '.join(SCHEMES)}")
    timings: dict = {}
    with _step("load", timings):
        loaded = checkpoint if isinstance(checkpoint, LoadedModel) else load(checkpoint, tokenizer=tokenizer, config=config)
        module = loaded.build_module()
    with _step("trace", timings):
        ep = trace(module, loaded.config["sequence_len"])
        # the traced range can end one short of sequence_len (trace.py): the tables and caches follow it
        loaded.config["sequence_len"] = min(loaded.config["sequence_len"],
                                            max(int(r.upper) for r in ep.range_constraints.values()))
    with _step("lower", timings):
        g = lower(ep)
        g.meta.update({"arch": loaded.arch, "config": loaded.config})
        lowered_ops = len(g.nodes)
    del ep, module
    with _step("passes", timings):
        g, records = run_pipeline(g, quant)
    return Compiled(loaded, g, lowered_ops, records, timings)


def explain(c: Compiled) -> str:
    g = c.graph
    lines = [f"lowering      ops {c.lowered_ops:>5} (ATen ops -> IR ops, views included)"]
    lines += [r.line() for r in c.records]
    per_layer = kernels_per_layer(g)
    layers = sorted((k for k in per_layer if k.startswith("layer")), key=lambda k: int(k.split()[1]))
    if layers:
        counts = sorted({per_layer[k] for k in layers})
        lines.append(f"kernels per layer: {'/'.join(map(str, counts))} x {len(layers)} layers; "
                     f"outside layers: {per_layer.get('outside layers', 0)}")
    ops = c.records[-1].ops if c.records else {}
    lines.append("final ops: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
    mp = g.meta.get("memory_plan", {})
    if mp:
        per_tok = sum(b["per_token"] for b in mp["f32_buffers"]) * 4
        lines.append(f"memory plan: {len(mp['f32_buffers'])} activation buffers, {per_tok} bytes/token "
                     f"(without reuse {mp['naive_per_token'] * 4} bytes/token); "
                     f"KV cache {len(mp['kv_cache'])} layers")
    lines.append("times: " + ", ".join(f"{k} {v:.2f}s" for k, v in c.timings.items()))
    return "\n".join(lines)


def _manifest_extra(c: Compiled) -> dict:
    tok = json.loads(c.loaded.tokenizer_json)
    return {
        "compiler": {"name": "monologue-compile", "version": compiler_version()},
        "model": {"arch": c.loaded.arch, "config": c.loaded.config, "quant": c.graph.meta["quant"],
                  "source": c.loaded.source},
        "special_tokens": tok.get("special_tokens", {}),
    }


def compile_to(checkpoint, out, quant="int8", tokenizer=None, config=None, verify=False, dump_ir=False,
               show_explain=False, eval_per_family: int = 20, wasm: bool = False, model_code: str | None = None) -> dict:
    """The whole compile; returns the manifest. Writes `out` atomically.

    `wasm` builds runtime.wasm with cargo (the CLI's default; off here because a release wasm build
    takes a while and most callers, tests above all, do not need it)."""
    out = Path(out)
    if model_code:
        from .frontend.module import from_model_code

        checkpoint = from_model_code(model_code, checkpoint, config, tokenizer)
    c = build(checkpoint, quant, tokenizer, config)
    if dump_ir:
        click.echo(c.graph.dump(), nl=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with _step("write", c.timings):
            from .artifact import write_model

            manifest = write_model(c.graph, tmp / "model", c.loaded.tokenizer_json, _manifest_extra(c))
        with _step("wgsl", c.timings):
            from .backends.wgsl_plan import emit_wgsl

            emit_wgsl(c, tmp)
        with _step("runtime" + (" (cargo, wasm32)" if wasm else ""), c.timings):
            _emit_runtime(c, tmp, wasm)
        copy_web_shell(tmp)
        from .artifact import read_manifest

        manifest = read_manifest(tmp / "model")
        if verify:
            from .parity import rq_state_dict, run_parity, write_report

            with _step("verify", c.timings):
                fp32 = c.loaded.build_module()
                rq = c.loaded.build_module(rq_state_dict(c.graph)).eval()
                report = run_parity(c.graph, fp32_model=fp32, rq_model=rq, tokenizer_json=c.loaded.tokenizer_json,
                                    trained=bool(c.loaded.source.get("trained")), eval_per_family=eval_per_family)
                write_report(report, tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verify and not report["ok"]:
        # the compile worked and its output stays, so the report can be read; the exit code says it failed
        failing = [k for k, v in report["checks"].items() if not v["ok"]]
        raise MonologueError(f"parity check failed ({', '.join(failing)}); see {out / 'parity.md'}", exit_code=1)
    if show_explain:
        click.echo(explain(c))
    return manifest


def _emit_runtime(c: Compiled, dist: Path, wasm: bool) -> None:
    """DIST/runtime_rs (the runtime crate with the model's generated code) and, with `wasm`,
    DIST/runtime.wasm listed in the manifest so the page verifies it like every other file."""
    from .artifact import add_files_to_manifest
    from .backends.rust_crate import emit_and_build

    try:
        emit_and_build(c.graph, dist, wasm=wasm)
    except MonologueError as e:
        if wasm:
            raise MonologueError(f"{e} (--no-wasm skips the CPU runtime)") from None
        click.echo(f"warning: no Rust runtime crate: {e}", err=True)
        return
    if wasm:
        add_files_to_manifest(dist / "model", ["../runtime.wasm"])


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an existing out is swapped away first and removed only after."""
    os.chmod(tmp, 0o755)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


@click.command("compile")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), help="output directory")
@click.option("--quant", default="int8", show_default=True, help="int8 | int8-g64 | int8-g128 | none")
@click.option("--tokenizer", type=click.Path(path_type=Path), help="tokenizer.json or tokenizer.pkl")
@click.option("--config", type=click.Path(path_type=Path), help="model config JSON (for a bare state dict)")
@click.option("--dump-ir", is_flag=True, help="print the final IR")
@click.option("--explain", is_flag=True, help="print what each pass did")
@click.option("--verify", is_flag=True, help="run the parity harness and write parity.json / parity.md")
@click.option("--eval-per-family", type=int, default=20, show_default=True,
              help="held-out problems per task family for the accuracy check of a trained model (0: skip)")
@click.option("--no-wasm", is_flag=True, help="skip building runtime.wasm (the browser's CPU fallback; needs cargo + wasm32)")
@click.option("--model-code", help="path.py:Name: build the model with your own code, Name(**config) "
              "(config: --config JSON or the checkpoint's model_args); verify uses it as the reference")
def compile_cmd(checkpoint, output, quant, tokenizer, config, dump_ir, explain, verify, eval_per_family, no_wasm,
                model_code):
    """Compile CHECKPOINT (checkpoint.pt, a nanochat dir, a Hugging Face model folder, or a state dict) into the
    static site OUTPUT."""
    manifest = compile_to(checkpoint, output, quant, tokenizer, config, verify, dump_ir, explain, eval_per_family,
                          wasm=not no_wasm, model_code=model_code)
    total = sum(f["bytes"] for f in manifest["files"])
    console.print(f"wrote {output} (model {total / 2**20:.1f} MiB, quant {quant}); `monologue serve {output}` serves it")


@click.command("verify")
@click.argument("dist", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="the original checkpoint, to compare with fp32 too (top-1 agreement, KL, perplexity)")
@click.option("--tokenizer", type=click.Path(path_type=Path))
@click.option("--config", type=click.Path(path_type=Path))
@click.option("--eval-per-family", type=int, default=20, show_default=True,
              help="held-out problems per task family for the accuracy check of a trained model (0: skip)")
def verify_cmd(dist, checkpoint, tokenizer, config, eval_per_family):
    """Re-run the parity harness on a compiled DIST; exit 1 when a bound is broken."""
    from .artifact import load_model
    from .parity import markdown, run_parity, write_report

    g, manifest, tok = load_model(dist)
    fp32 = None
    trained = False
    if checkpoint is not None:
        loaded = load(checkpoint, tokenizer=tokenizer, config=config)
        fp32 = loaded.build_module()
        trained = bool(loaded.source.get("trained"))
    with console.status("verifying..."):
        report = run_parity(g, fp32_model=fp32, tokenizer_json=tok, trained=trained, eval_per_family=eval_per_family,
                            backends=("wgpu",) if (Path(dist) / "model" / "plan.json").exists() else (), dist=dist)
    write_report(report, Path(dist))
    click.echo(markdown(report).split("\n## Per layer")[0])
    if not report["ok"]:
        raise MonologueError("parity bounds broken; see parity.md", exit_code=1)
