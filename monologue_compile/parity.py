"""Parity: the numpy interpreter against R_q (the PyTorch model with dequantized weights) and fp32.

Per layer: the R_q model is traced again and run through an fx interpreter that records every
node's value; each IR kernel is named after the fx node whose value it produces (lowering names
nodes after fx nodes and fusion keeps the last one), so the two are compared by name.
End to end: logits on prompts, 64 greedy tokens, decode-with-cache against full recompute, and
against the fp32 model top-1 agreement, KL and perplexity change on held-out text.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

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
    diff = np.abs(a - ref)
    denom = max(float(np.abs(ref).max()), 1e-12)
    na, nr = np.linalg.norm(a), np.linalg.norm(ref)
    cos = float(a @ ref / (na * nr)) if na > 0 and nr > 0 else float(na == nr)
    return {"max_abs": float(diff.max()), "rel": float(diff.max() / denom), "cosine": cos}


def rq_state_dict(g: Graph) -> dict[str, torch.Tensor]:
    """State dict of R_q: every quantized weight replaced by its dequantized value (merged ones split)."""
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
    return sd


def _torch_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids], dtype=torch.long))[0].float().numpy()


def _interp_logits(g: Graph, ids: list[int]) -> np.ndarray:
    return Session(g).forward(ids)


def _greedy_interp(g: Graph, prompt: list[int], steps: int) -> list[int]:
    s = Session(g)
    logits = s.forward(prompt)[-1]
    out = []
    for _ in range(steps):
        tok = int(np.argmax(logits))
        out.append(tok)
        if len(prompt) + len(out) >= s.max_len:
            break
        logits = s.forward([tok])[-1]
    return out


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


def run_parity(g: Graph, fp32_model=None, rq_model=None, tokenizer_json: str | None = None,
               trained: bool = False, layers: bool = True, eval_per_family: int = 20, backends=(), dist=None) -> dict:
    """The full report (a JSON-able dict with "ok"); fp32_model is optional (needs the original weights).
    `backends` adds those backends' checks (BACKEND_CHECKS) to the same report, run on DIST's files when given."""
    from .frontend.load import build_module

    cfg = g.meta["config"]
    if rq_model is None:
        rq_model = build_module(g.meta.get("arch", "gpt"), cfg, rq_state_dict(g))
    seqs = held_out_sequences(tokenizer_json, cfg["vocab_size"], cfg["sequence_len"])
    report: dict = {"quant": g.meta.get("quant"), "tolerances": TOLERANCES, "checks": {}}
    checks = report["checks"]

    # logits vs R_q
    worst = {"max_abs": 0.0, "rel": 0.0, "cosine": 1.0}
    for s in seqs:
        m = metrics(_interp_logits(g, s), _torch_logits(rq_model, s))
        worst = {"max_abs": max(worst["max_abs"], m["max_abs"]), "rel": max(worst["rel"], m["rel"]),
                 "cosine": min(worst["cosine"], m["cosine"])}
    checks["logits_vs_rq"] = {**worst, "ok": worst["rel"] <= TOLERANCES["logits_rel_vs_rq"]
                              and worst["cosine"] >= TOLERANCES["logits_cosine_vs_rq"]}

    # decode with the cache vs full recompute (interpreter)
    s0 = seqs[0]
    split = max(1, len(s0) // 2)
    sess = Session(g)
    parts = [sess.forward(s0[:split])] + [sess.forward([t]) for t in s0[split:]]
    m = metrics(np.concatenate(parts), _interp_logits(g, s0))
    checks["decode_vs_prefill"] = {**m, "ok": m["rel"] <= TOLERANCES["decode_vs_prefill_rel"]}

    # greedy tokens vs R_q (reference generate, with its own KV cache)
    steps = min(TOLERANCES["greedy_steps"], cfg["sequence_len"] - 8)
    prompt = s0[:8]
    ours = _greedy_interp(g, prompt, steps)
    theirs = rq_model.generate(prompt, steps, temperature=0.0)
    mism = sum(a != b for a, b in zip(ours, theirs)) + abs(len(ours) - len(theirs))
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    checks["greedy_vs_rq"] = {"steps": len(theirs), "mismatches": mism, "first_mismatch": first,
                              "ok": mism <= TOLERANCES["greedy_mismatches"]}

    if layers:
        rows = per_layer(g, rq_model, s0)
        report["layers"] = rows
        bad = [r["node"] for r in rows if not r["ok"]]
        checks["layers_vs_rq"] = {"compared": len(rows), "worst_cosine": min((r["cosine"] for r in rows), default=1.0),
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
            "top1_agreement": top1, "kl_mean": kl_sum / total, "ppl_fp32": ppl_fp, "ppl_quant": ppl_q,
            "ppl_change_pct": 100 * (ppl_q / ppl_fp - 1), "positions": total, "enforced": trained,
            "ok": (top1 >= TOLERANCES["top1_agreement_vs_fp32"]) or not trained,
        }
    if fp32_model is not None and trained and tokenizer_json and eval_per_family:
        checks["eval_vs_fp32"] = _eval_accuracy(g, fp32_model, tokenizer_json, eval_per_family)
    for name in backends:
        checks.update(BACKEND_CHECKS[name](g, rq_model, fp32_model, seqs, dist))
    report["ok"] = all(c["ok"] for c in checks.values())
    return report


def _wgpu_checks(*args):
    from .backends.wgpu_executor import parity_checks

    return parity_checks(*args)


# backend -> fn(graph, rq_model, fp32_model, sequences, dist) -> {check name: {..., "ok"}}
BACKEND_CHECKS = {"wgpu": _wgpu_checks}


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
    """Held-out task accuracy of fp32 (PyTorch) and of the compiled model (interpreter), same problems."""
    from training.evaluate import evaluate

    from .tokenizer import Tokenizer

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
    lines = [f"# Parity report ({'PASS' if r['ok'] else 'FAIL'})", "", f"Quantization: `{r['quant']}`", "",
             "| check | result | ok |", "| --- | --- | --- |"]
    for name, c in r["checks"].items():
        vals = ", ".join(f"{k}={_short(v)}" for k, v in c.items() if k != "ok")
        lines.append(f"| {name} | {vals} | {'yes' if c['ok'] else '**NO**'} |")
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
