"""Which nanochat version a checkpoint is (Dec 2025 to Mar 2026).

A nanochat checkpoint stores only weights and the sizes; which version it is shows in its keys and
shapes (../shared/NANOCHAT.md). `detect` turns those into a `NanochatConfig`, whose forward is
`NanochatGPT` (both in monologue_compile/models/nanochat.py).
"""

from __future__ import annotations

import math
import re

from ..errors import MonologueError
from ..models.nanochat import NanochatConfig


# S layers' left window (keys before the query's own) by version, from sequence_len
SHORT_WINDOW = {
    "half": lambda n: n // 2,  # Jan 2026, when windows came
    "third": lambda n: math.ceil(n / 3 / 128) * 128,  # Mar 9 2026
    "quarter": lambda n: math.ceil(n / 4 / 128) * 128,  # Mar 14 2026 and since
}

# Every key a nanochat state dict of a known version may hold; anything else is a variant this
# compiler does not know (the Jan 2026 "engram" bigram_lambdas, say) and is refused by name.
KNOWN_KEYS = re.compile(r"transformer\.wte\.weight|lm_head\.weight|resid_lambdas|x0_lambdas|smear_gate\.weight"
                        r"|smear_lambda|backout_lambda|value_embeds\.\d+\.weight"
                        r"|transformer\.h\.\d+\.(attn\.(c_q|c_k|c_v|c_proj|ve_gate)|mlp\.(c_fc|c_proj))\.weight")


def is_later(sd: dict, cfg: dict) -> bool:
    later = ("resid_lambdas", "x0_lambdas", "smear_gate.weight", "smear_lambda", "backout_lambda")
    padded = sd["transformer.wte.weight"].shape[0] != cfg.get("vocab_size")
    return (any(k in sd for k in later) or any(k.startswith("value_embeds.") for k in sd) or padded
            or bool(cfg.get("window_pattern", "L").upper().strip("L")))


def check_keys(sd: dict) -> None:
    """Refuse, by name, a key no known nanochat version has, and the gateless value-embedding variant."""
    for k in sd:
        if not KNOWN_KEYS.fullmatch(k):
            raise MonologueError(f"state dict key {k!r} belongs to no nanochat version this compiler knows "
                                 f"(a short-lived variant?); refusing to guess its meaning")
    for k in sd:
        if k.startswith("value_embeds."):
            gate = f"transformer.h.{k.split('.')[1]}.attn.ve_gate.weight"
            if gate not in sd:
                raise MonologueError(f"{k} has no {gate}: value embeddings without a gate (a Jan 2026 variant) "
                                     f"are not supported")
    for k in ("smear_gate.weight", *(k for k in sd if k.endswith("ve_gate.weight"))):
        if k in sd and sd[k].ndim != 2:
            raise MonologueError(f"{k} has shape {tuple(sd[k].shape)}; a gate is a 2-D weight")


def detect(sd: dict, cfg: dict) -> tuple[NanochatConfig, dict[str, str]]:
    """The version's constants from the state dict's keys and shapes plus meta's model_config, and
    the constants the checkpoint cannot show: {config key: what was assumed and how to say otherwise}."""
    try:
        c = NanochatConfig(**{k: cfg[k] for k in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head",
                                                  "n_embd")})
    except KeyError as e:
        raise MonologueError(f"nanochat model_config lacks {e.args[0]}") from None
    c.window_pattern = cfg.get("window_pattern", "L")
    if not isinstance(c.window_pattern, str) or not set(c.window_pattern.upper()) <= {"S", "L"}:
        raise MonologueError(f"window_pattern={c.window_pattern!r}: only S and L are known")
    check_keys(sd)
    c.padded_vocab = sd["transformer.wte.weight"].shape[0]
    c.lambdas = "resid_lambdas" in sd
    c.ve_layers = sorted(int(k.split(".")[1]) for k in sd if k.startswith("value_embeds."))
    if c.ve_layers:
        c.ve_gate_channels = sd[f"transformer.h.{c.ve_layers[0]}.attn.ve_gate.weight"].shape[1]
    c.smear_channels = sd["smear_gate.weight"].shape[1] if "smear_gate.weight" in sd else 0
    c.backout = "backout_lambda" in sd
    assumed = {}
    if c.smear_channels:
        c.version, window = "mar2026b", "quarter"
        c.ve_gate_scale, c.qk_scale, c.rope_theta = 3.0, 1.2, 100000.0
    elif c.ve_layers and c.ve_gate_channels == 12:
        c.version, window = "mar2026a", "third"
        c.ve_gate_scale, c.qk_scale, c.rope_theta = 3.0, 1.15, 100000.0
    else:
        c.version = "jan2026b" if c.ve_layers else "jan2026a" if c.lambdas else "dec2025"
        window, c.rope_bf16 = "half", True
        if c.ve_layers:  # the shape nanochat saved from Jan to Mar 9 2026: two constants changed inside it
            assumed["softcap"] = "15 (this shape had softcap 20 from Mar 2 to Mar 9 2026: --softcap 20)"
            assumed["rope_bf16"] = ("true (bf16 rotary tables until Mar 4 2026; a checkpoint from Mar 4-9: "
                                    "--set rope_bf16=false)")
    c.short_window = SHORT_WINDOW[window](c.sequence_len)
    return c, assumed
