"""Typed checks of the numbers users hand the compiler and its commands, in one place.

Each field has a type and a range: a wrong type, NaN, an infinity or a value out of range is a
MonologueError naming the field, raised before anything is allocated from it. The ranges bound
sizes (a config asking for 10**12 layers fails at once) and refuse values that make the model
compute NaN (a RoPE base of 0 or 1 has no decaying frequencies; its tables overflow or repeat).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import click

from .errors import MonologueError


@dataclass(frozen=True)
class Num:
    kind: type  # int or float (an int is accepted for a float; a bool never for either)
    lo: float
    hi: float
    lo_open: bool = False  # lo itself is out of range

    def problem(self, v) -> str | None:
        """Why v is not acceptable, or None."""
        ok_types = (int,) if self.kind is int else (int, float)
        if isinstance(v, bool) or not isinstance(v, ok_types):
            return f"must be {'an integer' if self.kind is int else 'a number'}, not {type(v).__name__}"
        if not math.isfinite(v):
            return "must be finite"
        if v < self.lo or (self.lo_open and v == self.lo) or v > self.hi:
            return f"must be in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"
        return None


# Bounds well past every model this project targets (d20: 20 layers, 1280 wide, 65536 tokens) and
# far below what would exhaust memory before the state dict is even compared with the config.
MODEL_CONFIG = {
    "sequence_len": Num(int, 4, 1 << 20),  # frontend/trace.py traces lengths 3..max(4, sequence_len)
    "vocab_size": Num(int, 1, 1 << 24),
    "n_layer": Num(int, 1, 1024),
    "n_head": Num(int, 1, 1024),
    "n_kv_head": Num(int, 1, 1024),
    "n_embd": Num(int, 1, 1 << 16),
    "mlp_ratio": Num(float, 0, 64, lo_open=True),
    "softcap": Num(float, 0, 1e4),
    "rope_theta": Num(float, 1, 1e12, lo_open=True),
}
MODEL_FLAGS = ("qk_norm", "tie_embeddings")
MODEL_NAMES = ("activation", "window_pattern")


def check_model_config(cfg: dict, where) -> dict:
    """cfg itself after checking every field it has that the schema knows; MonologueError else."""
    for key, spec in MODEL_CONFIG.items():
        if key in cfg:
            why = spec.problem(cfg[key])
            if why:
                raise MonologueError(f"{where}: model_config {key}={_show(cfg[key])} {why}")
    for key in MODEL_FLAGS:
        if key in cfg and not isinstance(cfg[key], bool):
            raise MonologueError(f"{where}: model_config {key}={_show(cfg[key])} must be true or false")
    for key in MODEL_NAMES:
        if key in cfg and not isinstance(cfg[key], str):
            raise MonologueError(f"{where}: model_config {key}={_show(cfg[key])} must be a string")
    for key, v in cfg.items():  # fields the schema does not know still reach the manifest (JSON)
        if not _finite(v):
            raise MonologueError(f"{where}: model_config {key}={_show(v)} must be finite")
    return cfg


def _finite(v) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, (list, tuple)):
        return all(_finite(x) for x in v)
    if isinstance(v, dict):
        return all(_finite(x) for x in v.values())
    return True


def json_loads(text):
    """json.loads without NaN and Infinity, which Python accepts but JSON has not (a config or
    tokenizer carrying them would be written on into the manifest, which then no reader parses).
    Raises ValueError (json.JSONDecodeError is one) and RecursionError (nested too deeply)."""
    return json.loads(text, parse_constant=_no_constant)


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _show(v) -> str:
    return repr(v)[:40]


class FiniteFloat(click.ParamType):
    """A click option type: a finite number in [lo, hi] (click's FloatRange lets NaN through)."""

    name = "number"

    def __init__(self, lo: float = -math.inf, hi: float = math.inf):
        self.lo, self.hi = lo, hi

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v) or not self.lo <= v <= self.hi:
            self.fail(f"{value!r} must be a finite number in [{self.lo:g}, {self.hi:g}]", param, ctx)
        return v
