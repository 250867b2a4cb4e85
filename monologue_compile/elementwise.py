"""The elementwise functions of the IR, each defined once and rendered for every backend.

A definition is a Python function of its arguments and a namespace `m` of primitives
(`m.exp`, `m.tanh`, `m.clamp`, ...). Called with numpy arrays and `NUMPY` it is the interpreter's
semantics; called with `Expr` placeholders and `SYMBOLIC` it builds an expression tree that
`wgsl_function` and `rust_function` write out as a WGSL or Rust function of f32. So the tanh clamp
of softcap and gelu_tanh, the erf of gelu, and every constant are stated here and nowhere else.

`UNARY` and `BINARY` are the functions the IR's `unary`/`binary` ops and epilogue steps name; a
definition may call another (`m.call("erf", ...)` in gelu), which is rendered once as a function of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

_F = np.float32


# --- the expression tree the backends render ---------------------------------------------------

@dataclass(frozen=True)
class Expr:
    kind: str  # "var" | "lit" | "prim" (a primitive) | "call" (a registry function) | "op" (+ - * /) | "neg"
    name: str = ""
    args: tuple = ()
    value: float = 0.0

    def __add__(self, o):
        return Expr("op", "+", (self, _lit(o)))

    def __radd__(self, o):
        return Expr("op", "+", (_lit(o), self))

    def __sub__(self, o):
        return Expr("op", "-", (self, _lit(o)))

    def __rsub__(self, o):
        return Expr("op", "-", (_lit(o), self))

    def __mul__(self, o):
        return Expr("op", "*", (self, _lit(o)))

    def __rmul__(self, o):
        return Expr("op", "*", (_lit(o), self))

    def __truediv__(self, o):
        return Expr("op", "/", (self, _lit(o)))

    def __rtruediv__(self, o):
        return Expr("op", "/", (_lit(o), self))

    def __neg__(self):
        return Expr("neg", args=(self,))


def _lit(v) -> Expr:
    return v if isinstance(v, Expr) else Expr("lit", value=float(v))


class _Numpy:
    """The primitives on f32 numpy arrays (Python float constants stay f32: numpy's weak scalars)."""

    exp = staticmethod(np.exp)
    tanh = staticmethod(np.tanh)
    sqrt = staticmethod(np.sqrt)
    abs = staticmethod(np.abs)
    max = staticmethod(np.maximum)
    pow = staticmethod(np.power)
    copysign = staticmethod(np.copysign)
    log = staticmethod(np.log)

    @staticmethod
    def select(c, a, b):
        return np.where(np.asarray(c) != 0, a, b).astype(_F, copy=False)

    # comparisons are 1.0 or 0.0 (an f32 mask), so that select and arithmetic take them
    gt = staticmethod(lambda a, b: (np.asarray(a) > b).astype(_F))
    ge = staticmethod(lambda a, b: (np.asarray(a) >= b).astype(_F))
    lt = staticmethod(lambda a, b: (np.asarray(a) < b).astype(_F))
    le = staticmethod(lambda a, b: (np.asarray(a) <= b).astype(_F))
    eq = staticmethod(lambda a, b: (np.asarray(a) == b).astype(_F))
    ne = staticmethod(lambda a, b: (np.asarray(a) != b).astype(_F))

    @staticmethod
    def clamp(x, lo, hi):
        return np.clip(x, _F(lo), _F(hi))

    @staticmethod
    def let(x):
        return x

    @staticmethod
    def call(name, *args):
        return _call_numpy(name, *args)


class _Symbolic:
    """The primitives as expression-tree nodes; `let` names a value used more than once."""

    def __init__(self):
        self.lets: list[tuple[str, Expr]] = []

    def let(self, e):
        name = f"t{len(self.lets)}"
        self.lets.append((name, _lit(e)))
        return Expr("var", name)

    def __getattr__(self, prim):
        return lambda *args: Expr("prim", prim, tuple(_lit(a) for a in args))

    @staticmethod
    def call(name, *args):
        return Expr("call", name, tuple(_lit(a) for a in args))


NUMPY = _Numpy()


# --- the definitions -----------------------------------------------------------------------------

def _erf(x, m):
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): neither numpy nor WGSL nor Rust's core has erf.
    a = m.let(m.abs(x))
    t = m.let(1.0 / (1.0 + 0.3275911 * a))
    y = m.let(1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * m.exp(-(a * a)))
    return m.copysign(y, x)


UNARY: dict[str, Callable] = {
    "neg": lambda x, m: -x,
    "relu": lambda x, m: m.max(x, 0.0),
    "square": lambda x, m: x * x,
    # tanh of a large argument is NaN on some GPU implementations; past |x| = 15 f32 tanh is +-1 anyway.
    "tanh": lambda x, m: m.tanh(m.clamp(x, -15.0, 15.0)),
    "sigmoid": lambda x, m: 1.0 / (1.0 + m.exp(-x)),
    "silu": lambda x, m: x / (1.0 + m.exp(-x)),
    "gelu": lambda x, m: 0.5 * x * (1.0 + m.call("erf", x / math.sqrt(2.0))),
    "gelu_tanh": lambda x, m: 0.5 * x * (1.0 + m.call("tanh", math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x)))),
    "exp": lambda x, m: m.exp(x),
    "rsqrt": lambda x, m: 1.0 / m.sqrt(x),
    "sqrt": lambda x, m: m.sqrt(x),
    "abs": lambda x, m: m.abs(x),
    "log": lambda x, m: m.log(x),
    # exp(x) - 1 (no expm1 in WGSL): 6e-8 from the true value near 0, as absolute error
    "expm1": lambda x, m: m.exp(x) - 1.0,
    # log(1 + x) likewise (no log1p in WGSL): 6e-8 from the true value near 0, as absolute error
    "log1p": lambda x, m: m.log(1.0 + x),
    "log2": lambda x, m: m.log(x) * (1.0 / math.log(2.0)),
    "log10": lambda x, m: m.log(x) * (1.0 / math.log(10.0)),
    "exp2": lambda x, m: m.exp(x * math.log(2.0)),
    # torch's (beta 1, threshold 20): x past 20; the clamp keeps the branch not taken finite
    "softplus": lambda x, m: m.select(m.gt(x, 20.0), x, m.log(1.0 + m.exp(m.clamp(x, -1.0e30, 20.0)))),
    "mish": lambda x, m: x * m.call("tanh", m.call("softplus", x)),
    "hardswish": lambda x, m: x * m.clamp(x + 3.0, 0.0, 6.0) / 6.0,
    "hardsigmoid": lambda x, m: m.clamp(x + 3.0, 0.0, 6.0) / 6.0,
    # torch's min(x, 0) - log1p(exp(-|x|)) is -softplus(-x): softplus's threshold gives x exactly below -20
    "log_sigmoid": lambda x, m: -m.call("softplus", -x),
    "erf": _erf,
    "reciprocal": lambda x, m: 1.0 / x,
    "sign": lambda x, m: m.gt(x, 0.0) - m.lt(x, 0.0),
}

BINARY: dict[str, Callable] = {
    "add": lambda a, b, m: a + b,
    "sub": lambda a, b, m: a - b,
    "mul": lambda a, b, m: a * b,
    "div": lambda a, b, m: a / b,
    "pow": lambda a, b, m: m.pow(a, b),
    "maximum": lambda a, b, m: m.max(a, b),
    "minimum": lambda a, b, m: m.select(m.gt(a, b), b, a),
    "gt": lambda a, b, m: m.gt(a, b),
    "ge": lambda a, b, m: m.ge(a, b),
    "lt": lambda a, b, m: m.lt(a, b),
    "le": lambda a, b, m: m.le(a, b),
    "eq": lambda a, b, m: m.eq(a, b),
    "ne": lambda a, b, m: m.ne(a, b),
    # torch.where(c, a, b) is pick(a, c) + pick_not(b, c): the branch not taken is 0 exactly, even
    # where it is inf or NaN
    "pick": lambda a, c, m: m.select(c, a, 0.0),
    "pick_not": lambda a, c, m: m.select(c, 0.0, a),
    "leaky_relu": lambda x, slope, m: m.select(m.gt(x, 0.0), x, x * slope),
    "elu": lambda x, alpha, m: m.select(m.gt(x, 0.0), x, alpha * (m.exp(m.clamp(x, -1.0e30, 0.0)) - 1.0)),
}

FUNCTIONS: dict[str, Callable] = {**UNARY, **BINARY}

# Functions defined (real, finite) for positive arguments only (pow: base; div: divisor nonzero):
# tests draw their inputs accordingly.
POSITIVE_DOMAIN = ("rsqrt", "sqrt", "pow", "div", "log", "reciprocal", "log1p", "log2", "log10")


def arity(name: str) -> int:
    return 2 if name in BINARY else 1


def _call_numpy(name: str, *args):
    """Function `name` on numpy values: f32 for float inputs, integer inputs keep their dtype."""
    args = [np.asarray(a) for a in args]
    dt = np.result_type(*args)
    return np.asarray(FUNCTIONS[name](*args, NUMPY), dtype=_F if dt.kind == "f" else dt)


def unary(name: str, x) -> np.ndarray:
    """The interpreter's `unary` op."""
    return _call_numpy(name, x)


def binary(name: str, a, b) -> np.ndarray:
    return _call_numpy(name, a, b)


def params(name: str) -> tuple[str, ...]:
    return ("a", "b") if arity(name) == 2 else ("x",)


def expr(name: str) -> tuple[list[tuple[str, Expr]], Expr]:
    """Function `name` over the variables `params(name)`: its local bindings and its result."""
    m = _Symbolic()
    body = _lit(FUNCTIONS[name](*(Expr("var", p) for p in params(name)), m))
    return m.lets, body


def calls(name: str) -> list[str]:
    """`name` after the registry functions it calls, dependencies first (each once)."""
    out: list[str] = []

    def walk(e: Expr):
        for a in e.args:
            walk(a)
        if e.kind == "call":
            out.extend(c for c in calls(e.name) if c not in out)

    lets, body = expr(name)
    for _, e in lets:
        walk(e)
    walk(body)
    return out + [name]


# --- rendering: one walk of the tree, each target language's spelling of leaves and primitives ---------

def _render(e: Expr, lit, call, prim) -> str:
    if e.kind == "var":
        return e.name
    if e.kind == "lit":
        return lit(e.value)
    args = [_render(a, lit, call, prim) for a in e.args]
    if e.kind == "op":
        return f"({args[0]} {e.name} {args[1]})"
    if e.kind == "neg":
        return f"(-{args[0]})"
    if e.kind == "call":
        return f"{call(e.name)}({', '.join(args)})"
    return prim(e.name, args)


# --- WGSL -------------------------------------------------------------------------------------------

def _wgsl_float(v: float) -> str:
    from .wgsl.render import wgsl_float

    return wgsl_float(v)


_COMPARE = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "==", "ne": "!="}


def _wgsl_prim(name: str, args: list[str]) -> str:
    if name == "copysign":
        return f"select(-abs({args[0]}), abs({args[0]}), {args[1]} >= 0.0)"
    if name == "select":
        return f"select({args[2]}, {args[1]}, {args[0]} != 0.0)"
    if name in _COMPARE:
        return f"select(0.0, 1.0, {args[0]} {_COMPARE[name]} {args[1]})"
    return f"{WGSL_PRIMS[name]}({', '.join(args)})"


WGSL_PRIMS = {"exp": "exp", "tanh": "tanh", "sqrt": "sqrt", "abs": "abs", "max": "max", "pow": "pow", "clamp": "clamp",
              "log": "log"}


def wgsl_expr(e: Expr) -> str:
    return _render(e, _wgsl_float, lambda name: f"ew_{name}", _wgsl_prim)


def wgsl_function(name: str) -> str:
    lets, body = expr(name)
    lines = [f"fn ew_{name}({', '.join(f'{p}: f32' for p in params(name))}) -> f32 {{"]
    lines += [f"    let {v} = {wgsl_expr(e)};" for v, e in lets]
    lines += [f"    return {wgsl_expr(body)};", "}", ""]
    return "\n".join(lines)


def wgsl_functions(names) -> str:
    """WGSL source defining `ew_<name>` for each name and everything they call, dependencies first."""
    order: list[str] = []
    for nm in names:
        for c in calls(nm):
            if c not in order:
                order.append(c)
    return "".join(wgsl_function(nm) for nm in order)


def softcap_steps(cap: float) -> list[dict]:
    """A softcap, cap * tanh(x / cap), as steps: nanochat's logits, Gemma 2's attention scores."""
    return [{"fn": "div", "scalar": cap}, {"fn": "tanh"}, {"fn": "mul", "scalar": cap}]


def wgsl_step(step: dict, v: str = "v") -> str:
    """One scalar or unary epilogue step applied to the WGSL f32 variable `v`, as an expression."""
    fn = step["fn"]
    if fn in UNARY:
        return f"ew_{fn}({v})"
    if fn in BINARY and "scalar" in step:
        s = _wgsl_float(step["scalar"])
        a, b = (s, v) if step.get("reverse") else (v, s)
        return f"ew_{fn}({a}, {b})"
    raise ValueError(f"epilogue step {step} is not a unary or scalar step")


def describe(step: dict) -> str:
    """A step in a kernel header: `gelu`, `div 15.0`, `sub(15.0, v)`."""
    if "scalar" in step:
        return f"{step['fn']}({step['scalar']!r}, v)" if step.get("reverse") else f"{step['fn']} {step['scalar']!r}"
    return step["fn"] + (f" operand {step['operand']}" if "operand" in step else "")


# --- Rust -------------------------------------------------------------------------------------------

def _rust_float(v: float) -> str:
    v = float(_F(v))
    if not math.isfinite(v):
        raise ValueError(f"cannot write {v!r} as a Rust literal")
    return f"{v!r}_f32"


def _rust_prim(name: str, args: list[str]) -> str:
    # f32::max / clamp lower to libm calls on wasm32: compare and select instead
    if name == "max":
        return f"pmax({args[0]}, {args[1]})"
    if name == "clamp":
        return f"pmin(pmax({args[0]}, {args[1]}), {args[2]})"
    if name == "pow":
        return f"{args[0]}.powf({args[1]})"
    if name == "log":
        return f"{args[0]}.ln()"
    if name == "select":
        return f"(if {args[0]} != 0.0_f32 {{ {args[1]} }} else {{ {args[2]} }})"
    if name in _COMPARE:
        return f"(if {args[0]} {_COMPARE[name]} {args[1]} {{ 1.0_f32 }} else {{ 0.0_f32 }})"
    # the runtime's own exp and tanh: the same bits on every target, whatever libm it links
    if name in ("exp", "tanh"):
        return f"crate::math::{name}f({args[0]})"
    return f"{args[0]}.{name}({', '.join(args[1:])})"


def rust_expr(e: Expr) -> str:
    return _render(e, _rust_float, lambda name: name, _rust_prim)


def _camel(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("_"))


def rust_variant(name: str) -> str:
    """The `Unary::` / `Binary::` variant of a function in the Rust runtime."""
    return _camel(name)


def rust_source() -> str:
    """runtime_rs/src/elementwise.rs: the enums, one function per registry entry, and the row loops."""
    un, bi = list(UNARY), list(BINARY)
    lines = [
        "//! Generated by monologue_compile/elementwise.py from its definitions (the interpreter's and the",
        "//! WGSL kernels' too). Do not edit: change the definition and run",
        "//! `python -m monologue_compile.elementwise > runtime_rs/src/elementwise.rs`; tests check it is current.",
        "#![allow(clippy::all, unused_parens)]",
        "",
        "#[derive(Debug, Clone, Copy, PartialEq)]",
        "pub enum Unary {",
        *[f"    {_camel(n)}," for n in un],
        "}",
        "",
        "#[derive(Debug, Clone, Copy, PartialEq)]",
        "pub enum Binary {",
        *[f"    {_camel(n)}," for n in bi],
        "}",
        "",
        "#[inline(always)]",
        "fn pmax(a: f32, b: f32) -> f32 {",
        "    if a > b { a } else { b }",
        "}",
        "",
        "#[inline(always)]",
        "fn pmin(a: f32, b: f32) -> f32 {",
        "    if a < b { a } else { b }",
        "}",
        "",
    ]
    for name in FUNCTIONS:
        lets, body = expr(name)
        lines += ["#[inline(always)]", f"pub fn {name}({', '.join(f'{p}: f32' for p in params(name))}) -> f32 {{"]
        lines += [f"    let {v} = {rust_expr(e)};" for v, e in lets]
        lines += [f"    {rust_expr(body)}", "}", ""]
    lines += [
        "#[inline]",
        "pub fn unary(f: Unary, x: f32) -> f32 {",
        "    match f {",
        *[f"        Unary::{_camel(n)} => {n}(x)," for n in un],
        "    }",
        "}",
        "",
        "#[inline]",
        "pub fn binary(f: Binary, a: f32, b: f32) -> f32 {",
        "    match f {",
        *[f"        Binary::{_camel(n)} => {n}(a, b)," for n in bi],
        "    }",
        "}",
        "",
        "/// f of every element, with the match on f outside the loop (so each loop is a tight one).",
        "pub fn unary_row(f: Unary, row: &mut [f32]) {",
        "    match f {",
        *[f"        Unary::{_camel(n)} => row.iter_mut().for_each(|v| *v = {n}(*v))," for n in un],
        "    }",
        "}",
        "",
        "/// v op b(j) (or b(j) op v when reversed) for every element v = row[j], the match outside the loop.",
        "#[inline(always)]",
        "pub fn binary_row(f: Binary, rev: bool, row: &mut [f32], b: impl Fn(usize) -> f32) {",
        "    match (f, rev) {",
    ]
    for n in bi:
        lines += [f"        (Binary::{_camel(n)}, false) => row.iter_mut().enumerate().for_each(|(j, v)| *v = {n}(*v, b(j))),",
                  f"        (Binary::{_camel(n)}, true) => row.iter_mut().enumerate().for_each(|(j, v)| *v = {n}(b(j), *v)),"]
    lines += ["    }", "}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(rust_source(), end="")
