"""`monologue-compile CHECKPOINT -o DIR` and `monologue verify DIR`: the pipeline end to end.

    load -> trace -> lower -> passes -> write model/ -> WGSL plan -> Rust crate (+ runtime.wasm)
         -> web page (+ parity report with --verify)

The output is written into a temporary sibling directory and renamed into place only when every
step succeeded, so a failed compile leaves nothing behind (and an existing DIR untouched). DIR is
only ever replaced when it is a previous Monologue output holding nothing but what the compiler
wrote (every file is listed in its manifest), or with `--force`; never when it is, or holds, an input.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console

from .errors import MonologueError
from .frontend.load import LoadedModel, load, overridden
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
    chat: dict | None = None  # the manifest's "chat"


@contextmanager
def _step(name: str, timings: dict):
    t0 = time.perf_counter()
    with console.status(f"{name}..."):
        yield
    timings[name] = time.perf_counter() - t0


def build(checkpoint, quant: str = "int8", tokenizer=None, config=None, overrides: dict | None = None,
          chat_template=None) -> Compiled:
    """Checkpoint -> final IR with quantized weights (nothing written). `overrides`: config values
    that replace the loaded or detected ones. The chat template (`chat_template` or the model's own)
    is reduced right after loading, so a bad one fails before the long steps."""
    if quant not in SCHEMES:
        raise MonologueError(f"--quant {quant}: unknown scheme; choose one of {', '.join(SCHEMES)}")
    timings: dict = {}
    with _step("load", timings):
        if isinstance(checkpoint, LoadedModel):
            loaded = overridden(checkpoint, overrides) if overrides else checkpoint
        else:
            loaded = load(checkpoint, tokenizer=tokenizer, config=config, overrides=overrides)
        module = loaded.build_module()
    with _step("chat template", timings):
        chat = _chat(loaded, chat_template)
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
    return Compiled(loaded, g, lowered_ops, records, timings, chat)


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
                     f"(without reuse {mp['naive_per_token'] * 4} bytes/token); {len(mp['in_place'])} in place, "
                     f"{len(mp['kv_write'])} values written into "
                     f"the KV cache of {len(mp['kv_cache'])} layers")
    lines.append("times: " + ", ".join(f"{k} {v:.2f}s" for k, v in c.timings.items()))
    return "\n".join(lines)


def _manifest_extra(c: Compiled) -> dict:
    from .tokenizer import Tokenizer

    return {
        "compiler": {"name": "monologue-compile", "version": compiler_version()},
        "model": {"arch": c.loaded.arch, "config": c.loaded.config, "quant": c.graph.meta["quant"],
                  "source": c.loaded.source, "attention_windows": attention_windows(c.graph),
                  **({"attention_softcaps": caps} if any(caps := attention_softcaps(c.graph)) else {}),
                  **({"stacked_weights": st} if (st := stacked_weights(c.graph)) else {}),
                  **({"gated_matmuls": gated} if (gated := gated_matmuls(c.graph)) else {}),
                  "assumed": c.loaded.assumed},
        "special_tokens": Tokenizer.from_json(c.loaded.tokenizer_json).special_tokens if c.loaded.has_tokenizer else {},
        "chat": c.chat,
    }


def _chat(loaded: LoadedModel, chat_template) -> dict | None:
    """The manifest's "chat" (chat_template.chat_section); None without a tokenizer."""
    from .chat_template import chat_section, find_template
    from .tokenizer import Tokenizer

    if not loaded.has_tokenizer:
        if chat_template is not None:
            raise MonologueError(f"--chat-template {chat_template}: the model has no tokenizer to apply it with")
        return None
    inputs = loaded.chat
    template = find_template(None, chat_template) if chat_template is not None else inputs.get("template")
    return chat_section(Tokenizer.from_json(loaded.tokenizer_json), template, inputs.get("specials", {}),
                        inputs.get("eos", []))


def attention_windows(g: Graph) -> list[int]:
    """Keys each attention layer's query sees, its own included, in layer order (0: all)."""
    return [int(n.attrs.get("window") or 0) for n in g.nodes if n.op == "attention"]


def attention_softcaps(g: Graph) -> list[float]:
    """Each attention layer's score softcap c (scores c * tanh(s / c), Gemma 2), in layer order (0: none)."""
    return [float(n.attrs.get("softcap") or 0.0) for n in g.nodes if n.op == "attention"]


def stacked_weights(g: Graph) -> dict[str, int]:
    """Parameters lowering cut into a weight per expert (an MoE layer's stacked (E, N, K) tensors,
    frontend/experts.py): how many weights each gave."""
    n = Counter(v["of"] for v in g.meta.get("weight_views", {}).values())
    return {k: c for k, c in n.items() if c > 1}


def gated_matmuls(g: Graph) -> int:
    """Matmuls that skip the tokens whose gate is 0 (passes/gate.py: an expert its router did not pick)."""
    return sum(1 for n in g.nodes if n.op == "matmul" and n.attrs.get("gate") is not None)


def model_summary(model: dict) -> list[str]:
    """What the compiled model computes that a checkpoint may not say (the manifest's "model"):
    attention windows, softcap, rotary tables, and what was assumed or overridden."""
    cfg = model["config"]
    windows = model.get("attention_windows", [])
    short = sorted({w for w in windows if w})
    what = model["arch"] + (f" ({cfg['version']})" if cfg.get("version") else "")
    win = (f"windows: {sum(1 for w in windows if w)} of {len(windows)} layers see {'/'.join(map(str, short))} keys, "
           f"the rest all" if short else f"attention: all {len(windows)} layers see every earlier key")
    parts = [what, win] + ([f"softcap {cfg['softcap']}"] if "softcap" in cfg else [])
    caps = sorted({c for c in model.get("attention_softcaps", []) if c})
    if caps:
        parts.append(f"attention scores softcapped at {'/'.join(map(str, caps))}")
    stacked = model.get("stacked_weights", {})
    if stacked:
        gated = model.get("gated_matmuls", 0)
        parts.append(f"experts: {'/'.join(map(str, sorted(set(stacked.values()))))} in each of {len(stacked)} stacked "
                     "tensors, " + (f"{gated} matmuls skipping the tokens the router did not pick" if gated
                                    else "every one run on every token (dense)"))
    parts.append(f"rotary tables {'bf16-rounded' if cfg.get('rope_bf16') else 'fp32'}")
    lines = ["model: " + "; ".join(parts)]
    lines += [f"assumed {k} = {v}" for k, v in model.get("assumed", {}).items()]
    if model["source"].get("last_position_only"):
        lines.append("the model returns logits for its last position only; compiled for every position, without "
                     f"the selection at {model['source']['last_position_only']}")
    if model["source"].get("overrides"):
        lines.append("overridden: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in model["source"]["overrides"].items()))
    return lines


def compile_to(checkpoint, out, quant="int8", tokenizer=None, config=None, verify=False, dump_ir=False,
               show_explain=False, eval_per_family: int = 20, wasm: bool = False, overrides: dict | None = None,
               force: bool = False, model_code: str | None = None, chat_template=None) -> dict:
    """The whole compile; returns the manifest. Writes `out` atomically.

    `wasm` builds runtime.wasm with cargo (the CLI's default; off here because a release wasm build
    takes a while and most callers, tests above all, do not need it). `force` replaces an existing
    `out` that is not a previous Monologue output. `checkpoint` may be a LoadedModel (the Python API).
    `chat_template`: a Jinja file that replaces the model's own chat template."""
    inputs = [p for p in (checkpoint, tokenizer, config, chat_template) if isinstance(p, (str, Path))]
    out = check_output(out, inputs, force)
    if model_code:
        from .frontend.module import from_model_code

        checkpoint = from_model_code(model_code, checkpoint, config, tokenizer, (overrides or {}).get("sequence_len"))
    c = build(checkpoint, quant, tokenizer, config, overrides, chat_template)
    if dump_ir:
        click.echo(c.graph.dump(), nl=False)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise MonologueError(f"-o {out}: cannot write there: {e.strerror or e}") from None
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
        from .artifact import list_site

        manifest = list_site(tmp)
        if verify:
            from .parity import rq_state_dict, run_parity, write_report

            with _step("verify", c.timings):
                fp32 = c.loaded.build_module()
                rq = c.loaded.build_module(rq_state_dict(c.graph)).eval()
                report = run_parity(c.graph, fp32_model=fp32, rq_model=rq, tokenizer_json=c.loaded.tokenizer_json,
                                    trained=bool(c.loaded.source.get("trained")), eval_per_family=eval_per_family,
                                    dist=tmp)
                report["model"] = model_summary(manifest["model"])
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


def check_output(out, inputs: list, force: bool = False) -> Path:
    """The absolute output folder, after refusing what compiling into it would destroy: a file, the
    folder we run in (or one above it), an input or a folder holding one, and (unless `force`) a
    non-empty folder that is not wholly a previous Monologue output."""
    out = Path(os.path.abspath(out))
    try:
        return _checked_output(out, inputs, force)
    except OSError as e:  # a name too long, a loop of links, a folder we may not read
        raise MonologueError(f"-o {out}: {e.strerror or e}") from None


def _checked_output(out: Path, inputs: list, force: bool) -> Path:
    for p in inputs:
        p = Path(p).resolve()
        if p == out.resolve() or out.resolve() in p.parents:
            raise MonologueError(f"-o {out}: is or contains the input {p}; give a different output folder")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise MonologueError(f"-o {out}: is a file or link, not a folder; give a folder to write the site into")
    cwd = Path.cwd().resolve()
    if out.resolve() == cwd or out.resolve() in cwd.parents:
        raise MonologueError(f"-o {out}: is the current folder or one above it; give a new folder such as dist/")
    if out.is_dir() and not force:
        stray = _not_from_monologue(out)
        if stray is not None:
            raise MonologueError(f"-o {out}: not empty and not a previous Monologue output ({stray}); "
                                 f"give a new folder, or --force to replace it")
    return out


def _not_from_monologue(out: Path) -> str | None:
    """None when every file under `out` is one a previous compile wrote (listed in its manifest's
    site list, or a parity report), else why not."""
    from .artifact import SITE_EXTRAS, read_manifest

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir() or p.is_symlink())
    if not files:
        return None
    try:
        manifest = read_manifest(out / "model")
        listed = {f["path"] for f in manifest["site"]} | set(SITE_EXTRAS)
    except Exception:  # noqa: BLE001 -- any unreadable or foreign manifest means "not ours"
        return "no Monologue model/manifest.json listing its files"
    unlisted = [f for f in files if f not in listed]
    return f"{unlisted[0]} is not a file the compiler wrote" if unlisted else None


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an existing out (checked by check_output) is swapped away first and
    removed only after."""
    try:
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except OSError as e:
        raise MonologueError(f"-o {out}: cannot move the compiled site into place: {e.strerror or e}") from None


@click.command("compile")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), help="output directory")
@click.option("--quant", default="int8", show_default=True, help="int8 | int8-g64 | int8-g128 | int4-g32 | int4-g64 | int4-g128 | none; int4 keeps the output projection and tables int8, int4-gNN-all puts them at 4 bits too")
@click.option("--tokenizer", type=click.Path(path_type=Path), help="tokenizer.json (Monologue or Hugging Face) or tokenizer.pkl")
@click.option("--config", type=click.Path(path_type=Path), help="model config JSON (for a bare state dict)")
@click.option("--dump-ir", is_flag=True, help="print the final IR")
@click.option("--explain", is_flag=True, help="print what each pass did")
@click.option("--verify", is_flag=True, help="run the parity harness and write parity.json / parity.md")
@click.option("--eval-per-family", type=click.IntRange(min=0), default=20, show_default=True,
              help="held-out problems per task family for the accuracy check of a trained model (0: skip)")
@click.option("--no-wasm", is_flag=True, help="skip building runtime.wasm (the browser's CPU fallback; needs cargo + wasm32)")
@click.option("--softcap", type=float, help="logit softcap (a checkpoint cannot show it; nanochat used 20 in Mar 2-9 2026)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override a loaded or detected model config value (JSON value), e.g. --set short_window=512")
@click.option("--force", is_flag=True, help="replace OUTPUT even if it holds files the compiler did not write")
@click.option("--model-code", help="path.py:Name: build the model with your own code, Name(**config), or "
              "Name(Config(**config)) where Name takes one config object (config: --config JSON or the checkpoint's "
              "model_args); verify uses it as the reference")
@click.option("--chat-template", type=click.Path(path_type=Path),
              help="a Jinja chat template to use instead of the model's own (tokenizer_config.json / chat_template.jinja)")
def compile_cmd(checkpoint, output, quant, tokenizer, config, dump_ir, explain, verify, eval_per_family, no_wasm,
                softcap, sets, force, model_code, chat_template):
    """Compile CHECKPOINT (checkpoint.pt, a nanochat checkpoint folder or model_<step>.pt, a Hugging Face
    model folder, or a state dict) into the static site OUTPUT."""
    overrides = parse_sets(sets)
    if softcap is not None:
        overrides["softcap"] = softcap
    manifest = compile_to(checkpoint, output, quant, tokenizer, config, verify, dump_ir, explain, eval_per_family,
                          wasm=not no_wasm, overrides=overrides, force=force,
                          model_code=model_code, chat_template=chat_template)
    for line in model_summary(manifest["model"]) + chat_summary(manifest.get("chat")):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if verify:
        backends = json.loads((Path(output) / "parity.json").read_text())["backends"]
        ran = [k for k, v in backends.items() if v["status"] == "pass"]
        console.print(f"parity: PASS on {', '.join(ran)}"
                      + "".join(f"; {k} {v['status']}" + (f": {v['reason']}" if v.get("reason") else "")
                                for k, v in backends.items() if k not in ran)
                      + f" ({Path(output) / 'parity.md'})", markup=False, highlight=False, soft_wrap=True)
    total = sum(f["bytes"] for f in manifest["files"])
    console.print(f"wrote {output} (model {total / 2**20:.1f} MiB, quant {quant}); `monologue serve {output}` serves it")


def chat_summary(chat: dict | None) -> list[str]:
    """The manifest's chat in a line: where the template came from, what proved it, how a reply ends."""
    if chat is None:
        return []
    if chat.get("continues_text"):
        ends = f"an eos id ({chat['stop']})" if chat["stop"] else "the token limit (no eos id is known)"
        return [f"chat: no chat template, so the model continues the text; a reply ends at {ends}"]
    t = chat["template"]
    proved = f", proved token for token on {chat['proved']} conversations" if chat["proved"] else ""
    switch = "; thinking can be switched off" if t and t.get("generation_no_thinking") is not None else ""
    return [f"chat template: {chat['source']}{proved}; a reply ends at {chat['end_of_turn'] or 'eos'} "
            f"(ids {chat['stop']}){'; the model thinks' if chat['thought'] else ''}{switch}"]


def parse_sets(sets) -> dict:
    """`--set KEY=VALUE` options -> {key: value}; VALUE is JSON (512, false, 20.0, "SSL") or else a string."""
    out = {}
    for item in sets:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise MonologueError(f"--set {item}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text
    return out


@click.command("verify")
@click.argument("dist", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="the original checkpoint, to compare with fp32 too (top-1 agreement, KL, perplexity)")
@click.option("--tokenizer", type=click.Path(path_type=Path))
@click.option("--config", type=click.Path(path_type=Path))
@click.option("--eval-per-family", type=click.IntRange(min=0), default=20, show_default=True,
              help="held-out problems per task family for the accuracy check of a trained model (0: skip)")
@click.option("--model-code", help="path.py:Name: the model code DIST was compiled with (--model-code), to rebuild "
              "its reference with --checkpoint")
def verify_cmd(dist, checkpoint, tokenizer, config, eval_per_family, model_code):
    """Re-run the parity harness on a compiled DIST, on every backend whose files it holds; exit 1
    when a bound is broken."""
    from .artifact import load_model
    from .parity import markdown, rq_state_dict, run_parity, write_report

    g, manifest, tok = load_model(dist)
    fp32 = rq = None
    trained = False
    source = manifest["model"]["source"]
    if g.meta.get("arch") == "module" and (model_code is None or checkpoint is None):
        how = (f"--checkpoint {source['name']} --model-code {source['code']}" if source.get("kind") == "model-code"
               else "monologue_compile.compile(model, ..., verify=True) from Python")
        raise MonologueError(f"{dist}: compiled from a model given as code, whose reference the dist cannot rebuild: "
                             f"verify it with {how}")
    if model_code is not None and checkpoint is None:
        raise MonologueError("--model-code: give the checkpoint too (--checkpoint)")
    if checkpoint is not None:
        if model_code is not None:
            from .frontend.module import from_model_code

            loaded = from_model_code(model_code, checkpoint, config, tokenizer, g.meta["config"]["sequence_len"])
        else:
            loaded = load(checkpoint, tokenizer=tokenizer, config=config)
        # the config the dist was compiled with: detected constants and the user's overrides
        loaded = dataclasses.replace(loaded, config=g.meta["config"])
        fp32 = loaded.build_module()
        rq = loaded.build_module(rq_state_dict(g)).eval()
        trained = bool(loaded.source.get("trained"))
    with console.status("verifying..."):
        report = run_parity(g, fp32_model=fp32, rq_model=rq, tokenizer_json=tok, trained=trained,
                            eval_per_family=eval_per_family, dist=dist)
    report["model"] = model_summary(manifest["model"])
    write_report(report, Path(dist))
    click.echo(markdown(report).split("\n## Per layer")[0])
    if not report["ok"]:
        raise MonologueError("parity bounds broken; see parity.md", exit_code=1)
