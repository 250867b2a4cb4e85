"""`monologue bench DIR`: prefill and decode tokens/s of every backend present on a compiled model,
beside PyTorch CPU eager fp32 on the same model in the same run, with dispatches and bytes moved per
token for the WebGPU plan.

    monologue bench DIST [--prompt 64] [--steps 32] [--json out.json]
    monologue bench DIST --peers [--hf-folder F] [--rounds 5]   (monologue_compile/peers.py)

Backends: numpy (the reference interpreter), wgpu (plan.json on wgpu-py: lavapipe on a CPU machine,
Vulkan on a GPU), native and wasm (the Rust runtime's own decode measurement,
`monologue_compile.backends.native.decode_speeds`, which builds them when missing; --no-rust skips).
torch: R_q rebuilt from DIST (the dequantized weights; the same shapes and fp32 eager math as the
original checkpoint), prefill = one forward over the prompt, decode = single-token forwards with its
KV cache. Lavapipe (and SwiftShader) timings are correctness-device timings: a CPU emulating a GPU,
not a ranking of GPU kernels.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

def _time(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def _session_rates(s, prompt: list[int], steps: int, greedy=None) -> dict:
    """Prefill tokens/s (one forward over the prompt) and decode tokens/s (greedy steps after it)."""
    s.reset()
    t_pre = [None]

    def pre():
        t_pre[0] = int(np.argmax(s.forward(prompt)[-1]))

    tp = _time(pre)
    tok = t_pre[0]

    def dec():
        nonlocal tok
        for _ in range(steps):
            tok = greedy(tok) if greedy else int(np.argmax(s.forward([tok])[-1]))

    td = _time(dec)
    return {"prefill_tok_s": len(prompt) / tp, "decode_tok_s": steps / td}


def _torch_rates(g, prompt: list[int], steps: int) -> dict:
    import torch

    from .frontend.load import build_module
    from .parity import rq_state_dict

    if g.meta.get("arch") != "gpt":
        return {"error": f"torch timing supports arch gpt (this is {g.meta.get('arch')})"}
    from .models.gpt import KVCache

    model = build_module("gpt", g.meta["config"], rq_state_dict(g)).eval()
    with torch.no_grad():
        model(torch.tensor([prompt[:2]]), kv_cache=KVCache(model.config, 1, 4))  # warm-up (first-call costs)
        cache = KVCache(model.config, 1, len(prompt) + steps + 1)
        out = {}
        tp = _time(lambda: out.setdefault("l", model(torch.tensor([prompt]), kv_cache=cache)[0, -1]))
        tok = int(torch.argmax(out["l"]))

        def dec():
            nonlocal tok
            for _ in range(steps):
                tok = int(torch.argmax(model(torch.tensor([[tok]]), kv_cache=cache)[0, -1]))

        td = _time(dec)
    return {"prefill_tok_s": len(prompt) / tp, "decode_tok_s": steps / td, "threads": torch.get_num_threads()}


def plan_traffic(plan: dict, mean_pos: float) -> dict:
    """Dispatches per token and bytes a decode token moves: every weight buffer a decode dispatch
    binds (an embedding table: one row), the KV cache rows attention reads at the mean position,
    and the logits row; prefill dispatches are per chunk, so per token they are divided by the chunk."""
    sizes = {b["name"]: b for b in plan["buffers"]}
    weight = kv = 0
    seen = set()
    for d in plan["dispatch"]["decode"]:
        p = plan["pipelines"][d["pipeline"]]
        for name in plan["bind_groups"][d["bind_group"]]["entries"]:
            b = sizes[name]
            if name in seen:
                continue
            seen.add(name)
            if b["role"] == "weight" and p["name"].startswith("embed"):
                weight += b["bytes"] // max(1, b["init"]["rows"][1] - b["init"]["rows"][0])
            elif b["role"] == "weight":
                weight += b["bytes"]
            elif b["role"] == "kv_cache":
                kv += int(b["bytes"] / plan["max_seq"] * mean_pos)
    return {"decode_dispatches_per_token": len(plan["dispatch"]["decode"]) + len(plan["dispatch"]["argmax"]),
            "prefill_dispatches_per_token": len(plan["dispatch"]["prefill"]) / plan["chunk"],
            "decode_bytes_per_token": weight + kv + 4 * plan["vocab_size"],
            "decode_weight_bytes_per_token": weight, "decode_kv_bytes_per_token": kv}


def model_shape(g) -> dict:
    """Layers, width and heads read off the graph (a Hugging Face or --model-code config names them
    its own way)."""
    attention = [n for n in g.nodes if n.op == "attention"]
    embedding = next((n for n in g.nodes if n.op == "embedding"), None)
    return {"n_layer": len(attention),
            "n_embd": g.weights[embedding.inputs[0]].shape[-1] if embedding is not None else None,
            "n_head": attention[0].attrs["n_head"] if attention else None,
            "n_kv_head": attention[0].attrs["n_kv_head"] if attention else None,
            "vocab_size": g.meta["config"]["vocab_size"]}


def bench(dist, prompt_len: int = 64, steps: int = 32, rust: bool = True, wasm: bool = True) -> dict:
    from .artifact import load_model
    from .interpreter import Session

    dist = Path(dist)
    g, manifest, _ = load_model(dist)
    cfg = g.meta["config"]
    prompt_len = min(prompt_len, cfg["sequence_len"] - steps - 1)
    prompt = np.random.default_rng(0).integers(0, cfg["vocab_size"], prompt_len).tolist()
    res: dict = {"model": {**model_shape(g), **{k: cfg[k] for k in ("n_layer", "n_embd", "n_head", "n_kv_head",
                                                                    "vocab_size") if cfg.get(k) is not None}},
                 "quant": g.meta.get("quant"), "prompt": prompt_len, "steps": steps, "backends": {}}
    rows = res["backends"]
    rows["torch (fp32 eager, CPU)"] = _torch_rates(g, prompt, steps)
    rows["numpy"] = _session_rates(Session(g), prompt, steps)
    try:
        from .backends.wgpu_executor import WgpuSession
        from .wgsl import device as wdev

        s = WgpuSession.from_dist(dist)
        s.forward(prompt[:2]), s.decode_greedy(1)  # first use compiles the pipelines on some drivers
        info = wdev.adapter().info
        rows["wgpu"] = {**_session_rates(s, prompt, steps, greedy=s.decode_greedy),
                        "adapter": f"{info.get('device', '?')} ({info.get('backend_type', '?')})",
                        **plan_traffic(s.plan, prompt_len + steps / 2)}
    except Exception as e:  # no adapter, no plan (quant none): say so and go on
        rows["wgpu"] = {"error": str(e).splitlines()[0]}
    if rust:
        try:  # the Rust runtime's own measurement (it builds the native library / runtime.wasm if missing)
            from .backends.native import decode_speeds

            r = decode_speeds(dist, steps, wasm=wasm)
            note = "decode only, after a 16-token prompt; {} kernels"
            rows["native"] = {"decode_tok_s": r["native_tok_s"], "note": note.format(r["native_kernels"])}
            if "wasm_tok_s" in r:
                rows["wasm (node)"] = {"decode_tok_s": r["wasm_tok_s"], "note": note.format(r["wasm_kernels"])}
        except Exception as e:  # no Rust toolchain, or the backend is not importable
            rows["native"] = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
    return res


def table(res: dict) -> str:
    lines = [f"model {res['model']}, quant {res['quant']}, prompt {res['prompt']} tokens, {res['steps']} decode steps",
             f"{'backend':<26} {'prefill tok/s':>14} {'decode tok/s':>13}  notes"]
    for name, r in res["backends"].items():
        if "error" in r:
            lines.append(f"{name:<26} {'-':>14} {'-':>13}  {r['error']}")
            continue
        notes = [r["note"]] if "note" in r else []
        if "decode_dispatches_per_token" in r:
            notes.append(f"{r['decode_dispatches_per_token']} dispatches/decode token, "
                         f"{r['prefill_dispatches_per_token']:.2f}/prefill token, "
                         f"{r['decode_bytes_per_token'] / 1e6:.2f} MB moved/decode token; {r['adapter']}")
        if "threads" in r:
            notes.append(f"{r['threads']} threads")
        pre = f"{r['prefill_tok_s']:>14.1f}" if "prefill_tok_s" in r else f"{'-':>14}"
        lines.append(f"{name:<26} {pre} {r['decode_tok_s']:>13.1f}  {'; '.join(notes)}")
    lines.append("wgpu on lavapipe/SwiftShader is a correctness device (a CPU emulating a GPU): its timings do "
                 "not rank GPU kernels.")
    return "\n".join(lines)


@click.command("bench")
@click.argument("dist", type=click.Path(exists=True, path_type=Path))
@click.option("--prompt", "prompt_len", type=int, default=64, show_default=True, help="prefill tokens")
@click.option("--steps", type=int, default=32, show_default=True, help="greedy decode steps")
@click.option("--no-rust", is_flag=True, help="skip the native and wasm runtimes (building them takes minutes)")
@click.option("--no-wasm", is_flag=True, help="skip runtime.wasm")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="also write the numbers here")
@click.option("--peers", is_flag=True,
              help="beside llama.cpp, ONNX Runtime and PyTorch (prompt 128, generate 64, interleaved rounds)")
@click.option("--hf-folder", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="with --peers: the Hugging Face folder DIST was compiled from (the peers run it)")
@click.option("--rounds", type=click.IntRange(1, 100), default=5, show_default=True, help="with --peers: interleaved rounds")
def bench_cmd(dist, prompt_len, steps, no_rust, no_wasm, json_out, peers, hf_folder, rounds):
    """Prefill and decode tokens/s of each backend on DIST, beside PyTorch CPU eager fp32."""
    if peers:
        from .peers import bench_peers

        text, res = bench_peers(dist, hf_folder, rounds, not no_rust, not no_wasm, log=lambda m: click.echo(m, err=True))
        click.echo(text)
    else:
        res = bench(dist, prompt_len, steps, rust=not no_rust, wasm=not no_wasm)
        click.echo(table(res))
    if json_out:
        Path(json_out).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
