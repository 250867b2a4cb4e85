"""Parity: the numpy interpreter against R_q (the PyTorch model with dequantized weights) and fp32.

Per layer: the R_q model is traced again and run through an fx interpreter that records every
node's value; each IR kernel is named after the fx node whose value it produces (lowering names
nodes after fx nodes and fusion keeps the last one), so the two are compared by name.
End to end, on every backend the dist ships (numpy interpreter; wgpu running plan.json under each
dispatch profile; the emitted crate built natively; runtime.wasm under Node): logits on prompts, one
sequence reaching sequence_len whose last tokens are decoded one step at a time (past the shortest
attention window), 64 greedy tokens from a prompt longer than that window; and for the interpreter
decode-with-cache against full recompute, and against the fp32 model top-1 agreement, KL and
perplexity change on held-out text. Each check names its backend; a backend this machine cannot run
is listed as skipped, with the reason.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from .errors import MonologueError
from .interpreter import Session, dense_weight
from .ir import OPS, Graph

# Every bound the parity report enforces, in one place.
TOLERANCES = {
    # interpreter vs R_q logits, relative to the largest |logit|: both compute the same f32 math,
    # differing only in summation order and in applying the int8 scale after the dot product
    # instead of before it (a few f32 ulps per layer, growing with depth).
    "logits_rel_vs_rq": 1e-3,
    # cosine of interpreter vs R_q logit vectors: a direction error means a wrong kernel, not rounding.
    "logits_cosine_vs_rq": 0.99999,
    # decode step by step with the KV cache vs recomputing the whole sequence, relative to max |logit|:
    # the same kernels on the same numbers, only a different T, so only summation order differs.
    "decode_vs_prefill_rel": 1e-4,
    # greedy tokens vs R_q: the contract is identical tokens.
    "greedy_steps": 64,
    # the long-context check: one sequence reaching sequence_len (capped here, in tokens), its last
    # tokens fed one decode step at a time, so windows and caches are checked past the shortest window.
    "long_context_cap": 2048,
    "long_context_decode_steps": 16,
    "greedy_mismatches": 0,
    # per-layer values vs R_q (cosine): loose enough for rounding in deep stacks, tight enough to catch
    # a wrong kernel (a wrong kernel gives a cosine far below 0.999).
    "layer_cosine_vs_rq": 0.999,
    # per-layer max error relative to the layer's largest |value|: same reasoning as logits_rel_vs_rq.
    "layer_rel_vs_rq": 1e-3,
    # held-out task accuracy (training/evaluate.py) of the compiled model may drop this much below
    # fp32's (fraction): the issue's "within 1 point"; trained models only, greedy replies.
    "eval_accuracy_drop": 0.01,
    # int8 vs the fp32 original on held-out text: the design's bar for the default quantization.
    # Only enforced for trained models (meta "trained": true) with real text; random weights have
    # near-flat logits where int8 noise flips the argmax, so for them it is reported, not enforced.
    "top1_agreement_vs_fp32": 0.99,
}


def metrics(a: np.ndarray, ref: np.ndarray) -> dict:
    a, ref = np.asarray(a, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    # a fill of -inf is float32's lowest in the IR (lower._finite): both at or below -1e30 agree
    agree = (a <= -1e30) & (ref <= -1e30)
    if agree.any():
        a, ref = a[~agree], ref[~agree]
    if not a.size:
        return {"max_abs": 0.0, "rel": 0.0, "cosine": 1.0}
    diff = np.abs(a - ref)
    denom = max(float(np.abs(ref).max()), 1e-12)
    na, nr = np.linalg.norm(a), np.linalg.norm(ref)
    cos = float(a @ ref / (na * nr)) if na > 0 and nr > 0 else float(na == nr)
    return {"max_abs": float(diff.max()), "rel": float(diff.max() / denom), "cosine": cos}


def rq_state_dict(g: Graph) -> dict[str, torch.Tensor]:
    """State dict of R_q: every quantized weight replaced by its dequantized value (merged ones split,
    scalars folded into ops restored, norm weights folded into matmuls set to ones)."""
    merged = g.meta.get("merged_weights", {})
    sd: dict[str, torch.Tensor] = {}
    for name, w in g.weights.items():
        if w.role == "table":
            continue
        dense = dense_weight(w)
        if name in merged:
            start = 0
            for part, rows in merged[name]:
                sd[part] = torch.from_numpy(dense[start:start + rows].copy())
                start += rows
        else:
            sd[name] = torch.from_numpy(dense.copy())
    _write_views(g, sd)
    for name, w in g.meta.get("scalar_weights", {}).items():  # one-element weights the passes made scalars
        sd.setdefault(name, torch.full(tuple(w["shape"]), w["value"], dtype=torch.float32))
    for name, shape in g.meta.get("folded_norm_weights", {}).items():  # now in the matmuls' columns
        sd[name] = torch.ones(tuple(shape), dtype=torch.float32)
    return sd


def _write_views(g: Graph, sd: dict[str, torch.Tensor]) -> None:
    """Weights that lowering cut out of a parameter (meta "weight_views": an expert's W[e]) put back
    in their places; a parameter is made whole only where its views cover every element (else the
    model keeps the checkpoint's)."""
    parts: dict[str, list[tuple[str, dict]]] = {}
    for name, v in g.meta.get("weight_views", {}).items():
        if name in sd:
            parts.setdefault(v["of"], []).append((name, v))
    for param, views in parts.items():
        shape = tuple(views[0][1]["shape"])
        whole, seen = torch.zeros(shape), torch.zeros(shape, dtype=torch.bool)
        for name, v in views:
            value = sd.pop(name)
            whole.as_strided(value.shape, v["strides"], v["offset"]).copy_(value)
            seen.as_strided(value.shape, v["strides"], v["offset"]).fill_(True)
        if bool(seen.all()):
            sd[param] = whole


def _torch_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids], dtype=torch.long))[0].float().numpy()


def _interp_logits(g: Graph, ids: list[int]) -> np.ndarray:
    return Session(g).forward(ids)


def _layer_values(model, ids: list[int]) -> dict[str, np.ndarray]:
    from .frontend.trace import trace

    ep = trace(model, model.config.sequence_len)
    gm = ep.module()
    values: dict[str, np.ndarray] = {}

    class Rec(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                values[n.name] = out.detach().float().numpy()
            return out

    with torch.no_grad():
        Rec(gm).run(torch.tensor([ids], dtype=torch.long))
    return values


def per_layer(g: Graph, model, ids: list[int]) -> list[dict]:
    ref = _layer_values(model, ids)
    probe: dict[str, np.ndarray] = {}
    Session(g).forward(ids, probe=probe)
    rows = []
    for n in g.nodes:
        if not OPS[n.op].kernel or n.name not in ref:
            continue
        a, r = probe[n.name], ref[n.name]
        if a.shape != r.shape and a.ndim == 4 and a.transpose(0, 2, 1, 3).shape == r.shape:
            a = a.transpose(0, 2, 1, 3)  # attention in (1, T, H, D) vs SDPA's (1, H, T, D)
        if a.shape != r.shape:
            continue
        m = metrics(a, r)
        rows.append({"node": n.name, "op": n.op, "source": n.source, **m,
                     "ok": m["cosine"] >= TOLERANCES["layer_cosine_vs_rq"] and m["rel"] <= TOLERANCES["layer_rel_vs_rq"]})
    return rows


def held_out_sequences(tokenizer_json: str | None, vocab: int, seq_len: int, n: int = 8) -> list[list[int]]:
    """Held-out conversations through the model's tokenizer when both are available, else seeded ids."""
    seqs: list[list[int]] = []
    if tokenizer_json:
        try:
            from training.data.reasoning import heldout_conversations

            from .tokenizer import Tokenizer

            tok = Tokenizer.from_json(tokenizer_json)
            convs = heldout_conversations(max(1, n // 4))
            think = "<think>" in tok.special_tokens  # a nanochat tokenizer has no think tokens
            seqs = [tok.render_conversation([{k: v for k, v in m.items() if think or k != "thought"}
                                             for m in c.messages()])[0][:seq_len] for c in convs]
            seqs = [s for s in seqs if len(s) >= 8 and max(s) < vocab][:n]
        except Exception:  # no tokenizer extension or corpus in this install: seeded ids still test parity
            seqs = []
    if seqs:
        return seqs
    rng = np.random.default_rng(1234)
    return [rng.integers(0, vocab, size=min(seq_len, 48)).tolist() for _ in range(4)]


def shortest_window(g: Graph) -> int:
    """Keys the most restricted attention layer sees (0: every layer sees all)."""
    return min((int(n.attrs["window"]) for n in g.nodes if n.op == "attention" and n.attrs.get("window")), default=0)


def long_sequence(cfg: dict) -> list[int]:
    """Seeded ids reaching sequence_len (capped): past every window the model has."""
    n = min(cfg["sequence_len"], TOLERANCES["long_context_cap"])
    return np.random.default_rng(4321).integers(0, cfg["vocab_size"], size=n).tolist()


class Reference:
    """R_q's answers, computed once and shared by every backend's checks: logits of the held-out
    sequences and of the long one, and greedy tokens from a prompt longer than the shortest window."""

    def __init__(self, g: Graph, rq_model, seqs: list[list[int]]):
        cfg = g.meta["config"]
        self.seqs, self.long = seqs, long_sequence(cfg)
        self.window = shortest_window(g)
        self.logits = [_torch_logits(rq_model, s) for s in seqs]
        self.long_logits = _torch_logits(rq_model, self.long)
        steps = min(TOLERANCES["greedy_steps"], cfg["sequence_len"] - 8)
        # past the window when there is one (and room for the steps), else the start of real text
        self.prompt = self.long[: min(self.window + 8, cfg["sequence_len"] - steps)] if self.window else seqs[0][:8]
        self.greedy = rq_model.generate(self.prompt, steps, temperature=0.0)


def session_checks(backend: str, s, ref: Reference) -> dict:
    """One backend's rows: logits vs R_q on the held-out sequences, the long sequence prefilled and
    then decoded token by token past the window, and greedy tokens from past the window. `s` has the
    interpreter's interface (forward(ids) -> logits (T, V), reset())."""
    prefix = "" if backend == "numpy" else backend.replace("-", "_") + "_"
    worst = {"max_abs": 0.0, "rel": 0.0, "cosine": 1.0}
    for seq, want in zip(ref.seqs, ref.logits):
        s.reset()
        m = metrics(s.forward(seq), want)
        worst = {"max_abs": max(worst["max_abs"], m["max_abs"]), "rel": max(worst["rel"], m["rel"]),
                 "cosine": min(worst["cosine"], m["cosine"])}
    out = {prefix + "logits_vs_rq": {"backend": backend, **worst, "ok": _logits_ok(worst)}}

    long = ref.long
    split = max(1, len(long) - TOLERANCES["long_context_decode_steps"])
    s.reset()
    got = np.concatenate([s.forward(long[:split])] + [s.forward([t]) for t in long[split:]])
    m = metrics(got, ref.long_logits)
    last = metrics(got[-1], ref.long_logits[-1])  # the longest position alone
    out[prefix + "long_context_vs_rq"] = {
        "backend": backend, "tokens": len(long), "longest_position": len(long) - 1, "decode_steps": len(long) - split,
        "shortest_window": ref.window, **m, "max_abs_at_longest": last["max_abs"], "ok": _logits_ok(m)}

    s.reset()
    logits = s.forward(ref.prompt)[-1]
    ours: list[int] = []
    while len(ours) < len(ref.greedy):
        ours.append(int(np.argmax(logits)))
        if len(ours) < len(ref.greedy):
            logits = s.forward([ours[-1]])[-1]
    mism = sum(a != b for a, b in zip(ours, ref.greedy))
    out[prefix + "greedy_vs_rq"] = {
        "backend": backend, "prompt_tokens": len(ref.prompt), "steps": len(ref.greedy), "mismatches": mism,
        "first_mismatch": next((i for i, (a, b) in enumerate(zip(ours, ref.greedy)) if a != b), None),
        "ok": mism <= TOLERANCES["greedy_mismatches"]}
    return out


def _logits_ok(m: dict) -> bool:
    return m["rel"] <= TOLERANCES["logits_rel_vs_rq"] and m["cosine"] >= TOLERANCES["logits_cosine_vs_rq"]


def run_parity(g: Graph, fp32_model=None, rq_model=None, tokenizer_json: str | None = None,
               trained: bool = False, layers: bool = True, eval_per_family: int = 20, dist=None,
               backends: tuple | None = None) -> dict:
    """The full report (a JSON-able dict with "ok"); fp32_model is optional (needs the original weights).
    The interpreter is always checked; with DIST, so is every backend whose files DIST holds
    (`backends` narrows that to the names given; see available_backends)."""
    from .frontend.load import build_module

    cfg = g.meta["config"]
    if rq_model is None:
        rq_model = build_module(g.meta.get("arch", "gpt"), cfg, rq_state_dict(g))
    seqs = held_out_sequences(tokenizer_json, cfg["vocab_size"], cfg["sequence_len"])
    ref = Reference(g, rq_model, seqs)
    report: dict = {"quant": g.meta.get("quant"), "tolerances": TOLERANCES, "checks": {}, "backends": {}}
    checks = report["checks"]

    checks.update(session_checks("numpy", Session(g), ref))
    report["backends"]["numpy"] = {"status": "ran"}

    # decode with the cache vs full recompute (interpreter)
    s0 = seqs[0]
    split = max(1, len(s0) // 2)
    sess = Session(g)
    parts = [sess.forward(s0[:split])] + [sess.forward([t]) for t in s0[split:]]
    m = metrics(np.concatenate(parts), _interp_logits(g, s0))
    checks["decode_vs_prefill"] = {"backend": "numpy", **m, "ok": m["rel"] <= TOLERANCES["decode_vs_prefill_rel"]}

    if layers:
        rows = per_layer(g, rq_model, s0)
        report["layers"] = rows
        bad = [r["node"] for r in rows if not r["ok"]]
        checks["layers_vs_rq"] = {"backend": "numpy", "compared": len(rows),
                                  "worst_cosine": min((r["cosine"] for r in rows), default=1.0),
                                  "failing": bad[:5], "ok": not bad}

    if fp32_model is not None:
        agree = total = 0
        kl_sum = nll_fp = nll_q = 0.0
        for s in seqs:
            lf = _torch_logits(fp32_model, s).astype(np.float64)
            lq = _interp_logits(g, s).astype(np.float64)
            agree += int((lf.argmax(-1) == lq.argmax(-1)).sum())
            total += len(s)
            pf, pq = _log_softmax(lf), _log_softmax(lq)
            kl_sum += float((np.exp(pf) * (pf - pq)).sum())
            tgt = np.asarray(s[1:])
            nll_fp += float(-pf[np.arange(len(s) - 1), tgt].sum())
            nll_q += float(-pq[np.arange(len(s) - 1), tgt].sum())
        n_pred = sum(len(s) - 1 for s in seqs)
        ppl_fp, ppl_q = math.exp(nll_fp / n_pred), math.exp(nll_q / n_pred)
        top1 = agree / total
        checks["vs_fp32"] = {
            "backend": "numpy", "top1_agreement": top1, "kl_mean": kl_sum / total, "ppl_fp32": ppl_fp,
            "ppl_quant": ppl_q, "ppl_change_pct": 100 * (ppl_q / ppl_fp - 1), "positions": total, "enforced": trained,
            "ok": (top1 >= TOLERANCES["top1_agreement_vs_fp32"]) or not trained,
        }
    if fp32_model is not None and trained and tokenizer_json and eval_per_family:
        checks["eval_vs_fp32"] = {"backend": "numpy", **_eval_accuracy(g, fp32_model, tokenizer_json, eval_per_family)}

    if dist is not None:
        for name, open_session in available_backends(dist).items():
            if backends is not None and name not in backends:
                continue
            report["backends"][name] = _backend_checks(name, open_session, ref, checks, g, fp32_model, seqs, dist)
    for name, b in report["backends"].items():
        if b["status"] == "ran":
            mine = [c for c in checks.values() if c.get("backend") == name]
            b["status"] = "pass" if all(c["ok"] for c in mine) else "fail"
            b["longest_position"] = max((c.get("longest_position", -1) for c in mine), default=-1)
    report["longest_position"] = max((b.get("longest_position", -1) for b in report["backends"].values()), default=-1)
    report["ok"] = all(c["ok"] for c in checks.values())
    return report


def _backend_checks(name, open_session, ref, checks, g, fp32_model, seqs, dist) -> dict:
    """Run one backend's checks into `checks`; its row of report["backends"]."""
    try:
        s = open_session()
    except SkipBackend as e:
        return {"status": "skipped", "reason": str(e)}
    except Exception as e:  # a backend that should run and cannot is a failure, named in the report
        checks[name.replace("-", "_") + "_runs"] = {"backend": name, "error": str(e).strip()[:300], "ok": False}
        return {"status": "ran"}
    try:
        checks.update(session_checks(name, s, ref))
        if name == "wgpu":
            from .backends.wgpu_executor import parity_checks

            checks.update({k: {"backend": name, **v} for k, v in parity_checks(g, fp32_model, seqs, dist).items()})
    finally:
        close = getattr(s, "close", None)
        if close is not None:
            close()
    return {"status": "ran"}


class SkipBackend(Exception):
    """This machine cannot run the backend (no adapter, toolchain or Node); the report says why."""


def available_backends(dist) -> dict:
    """Backend name -> a function opening a session on DIST's own files (or raising SkipBackend):
    plan.json under each dispatch profile (wgpu: the default lists, wgpu-<profile>: that profile's),
    the emitted crate built natively, runtime.wasm under Node."""
    dist = Path(dist)
    out: dict = {}
    if (dist / "model" / "plan.json").exists():
        plan = json.loads((dist / "model" / "plan.json").read_text())
        for profile in [None, *plan.get("profiles", {})]:
            out["wgpu" + (f"-{profile}" if profile else "")] = lambda profile=profile: _wgpu_session(dist, profile)
    else:
        out["wgpu"] = lambda: _skip("the dist has no plan.json (the compile's warning says why the WGSL backend "
                                    "could not express this model)")
    out["native"] = lambda: _native_session(dist)
    out["wasm"] = lambda: _wasm_session(dist)
    return out


def _skip(reason: str):
    raise SkipBackend(reason)


def _wgpu_session(dist, profile):
    from .backends.wgpu_executor import WgpuSession
    from .wgsl.device import NoAdapter

    try:
        return WgpuSession.from_dist(dist, profile=profile)
    except NoAdapter as e:
        raise SkipBackend(f"no WebGPU adapter: {e}") from None


def _native_session(dist):
    from .backends.native import NativeModel
    from .backends.rust_crate import find_toolchain

    if not (Path(dist) / "runtime_rs" / "src" / "model_gen.rs").exists():
        raise SkipBackend("the dist has no runtime_rs/ crate")
    try:
        find_toolchain(wasm=False)
    except MonologueError as e:
        raise SkipBackend(f"no Rust toolchain to build the native runtime: {e}") from None
    return NativeModel.from_dist(dist)


def _wasm_session(dist):
    import shutil

    from .backends.native import WasmModel

    if not (Path(dist) / "runtime.wasm").exists():
        raise SkipBackend("the dist has no runtime.wasm (compiled with --no-wasm)")
    if not shutil.which("node"):
        raise SkipBackend("no Node.js (node) to run runtime.wasm")
    return WasmModel.from_dist(dist)


def _interp_generate_fn(g: Graph):
    def generate(prompt, max_new_tokens, stop_tokens):
        s = Session(g)
        logits = s.forward(prompt)[-1]
        out = []
        while len(out) < max_new_tokens:
            t = int(np.argmax(logits))
            out.append(t)
            if t in stop_tokens or s.pos >= s.max_len:
                break
            logits = s.forward([t])[-1]
        return out

    return generate


def _eval_accuracy(g: Graph, fp32_model, tokenizer_json: str, n_per_family: int) -> dict:
    """Held-out task accuracy of fp32 (PyTorch) and of the compiled model (interpreter), same problems;
    skipped, and saying why, where the eval code (training/) is not installed."""
    from .resources import training_module
    from .tokenizer import Tokenizer

    try:
        evaluate = training_module("evaluate").evaluate
    except MonologueError as e:
        return {"skipped": str(e), "ok": True}

    tok = Tokenizer.from_json(tokenizer_json)
    ref = evaluate(fp32_model, tok, n_per_family=n_per_family, with_loss=False)
    ours = evaluate(None, tok, n_per_family=n_per_family, generate_fn=_interp_generate_fn(g),
                    sequence_len=g.meta["config"]["sequence_len"], with_loss=False)
    drop = ref["accuracy"] - ours["accuracy"]
    same = sum((a["thought"], a["answer"]) == (b["thought"], b["answer"]) for a, b in zip(ref["examples"], ours["examples"]))
    return {"fp32_accuracy": ref["accuracy"], "compiled_accuracy": ours["accuracy"], "problems": len(ours["examples"]),
            "same_replies": same / max(len(ours["examples"]), 1),
            "well_formed_fp32": ref["well_formed"], "well_formed_compiled": ours["well_formed"],
            "ok": drop <= TOLERANCES["eval_accuracy_drop"] + 1e-9}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def write_report(report: dict, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    (out_dir / "parity.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    (out_dir / "parity.md").write_text(markdown(report))


def markdown(r: dict) -> str:
    lines = [f"# Parity report ({'PASS' if r['ok'] else 'FAIL'})", "", f"Quantization: `{r['quant']}`", ""]
    lines += [f"- {line}" for line in r.get("model", [])] + ([""] if r.get("model") else [])
    if r.get("backends"):
        lines += [f"Longest position checked: {r.get('longest_position')}", "",
                  "| backend | status | longest position |", "| --- | --- | --- |"]
        for name, b in r["backends"].items():
            status = f"skipped: {b['reason']}" if b["status"] == "skipped" else b["status"].upper()
            lines.append(f"| {name} | {status} | {b.get('longest_position', '-')} |")
        lines.append("")
    lines += ["| backend | check | result | ok |", "| --- | --- | --- | --- |"]
    for name, c in r["checks"].items():
        vals = ", ".join(f"{k}={_short(v)}" for k, v in c.items() if k not in ("ok", "backend"))
        lines.append(f"| {c.get('backend', '')} | {name} | {vals} | {'yes' if c['ok'] else '**NO**'} |")
    if r.get("layers"):
        lines += ["", "## Per layer (interpreter vs R_q)", "", "| node | op | max_abs | rel | cosine | ok |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in r["layers"]:
            lines.append(f"| {row['node']} | {row['op']} | {row['max_abs']:.3g} | {row['rel']:.3g} | "
                         f"{row['cosine']:.7f} | {'yes' if row['ok'] else '**NO**'} |")
    lines += ["", "Tolerances (monologue_compile/parity.py):", ""]
    lines += [f"- `{k}` = {v}" for k, v in r["tolerances"].items()]
    return "\n".join(lines) + "\n"


def _short(v):
    return f"{v:.4g}" if isinstance(v, float) else v
