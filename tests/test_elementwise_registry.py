"""The elementwise functions are defined once (monologue_compile/elementwise.py): the interpreter
evaluates the definitions, the WGSL and Rust backends render them, and the definitions mean what the
PyTorch model computes."""

from pathlib import Path

import numpy as np
import pytest
import torch

from monologue_compile import elementwise
from monologue_compile.interpreter import UNARY_FNS
from monologue_compile.ir import BINARY, UNARY
from monologue_compile.wgsl import kernels

ROOT = Path(__file__).resolve().parents[1]

TORCH = {
    "neg": torch.neg, "relu": torch.relu, "square": torch.square, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"), "exp": torch.exp, "rsqrt": torch.rsqrt,
    "sqrt": torch.sqrt, "abs": torch.abs, "log": torch.log, "expm1": torch.expm1,
    "log1p": torch.log1p, "log2": torch.log2, "log10": torch.log10, "exp2": torch.exp2,
    "softplus": torch.nn.functional.softplus, "mish": torch.nn.functional.mish,
    "hardswish": torch.nn.functional.hardswish, "hardsigmoid": torch.nn.functional.hardsigmoid,
    "log_sigmoid": torch.nn.functional.logsigmoid, "erf": torch.erf, "reciprocal": torch.reciprocal, "sign": torch.sign,
}
TORCH_BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
    "maximum": torch.maximum, "minimum": torch.minimum, "gt": torch.gt, "ge": torch.ge, "lt": torch.lt, "le": torch.le,
    "eq": torch.eq, "ne": torch.ne, "pick": lambda a, c: torch.where(c != 0, a, 0.0),
    "pick_not": lambda a, c: torch.where(c != 0, 0.0, a),
    "leaky_relu": lambda x, s: torch.nn.functional.leaky_relu(x, float(s[0])),
    "elu": lambda x, alpha: torch.nn.functional.elu(x, float(alpha[0])),
}


def test_every_ir_function_has_a_definition():
    assert set(UNARY) == set(elementwise.UNARY) == set(TORCH)
    assert set(BINARY) == set(elementwise.BINARY) == set(TORCH_BINARY)


@pytest.mark.parametrize("name", list(elementwise.UNARY))
def test_unary_definition_matches_torch(name):
    x = np.random.default_rng(0).normal(0, 4, 4001).astype(np.float32)
    if name in elementwise.POSITIVE_DOMAIN:
        x = np.abs(x) + 1e-3
    if name == "exp":
        x = np.clip(x, -60, 60)
    got = UNARY_FNS[name](x)
    assert got.dtype == np.float32
    want = TORCH[name](torch.from_numpy(x.astype(np.float64))).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)  # atol: the A&S erf (1.5e-7) times |x| / 2


@pytest.mark.parametrize("name", list(elementwise.BINARY))
def test_binary_definition_matches_torch(name):
    """Against torch on values that tie and values that do not (comparisons, minimum, where's picks),
    with a scalar second operand where torch's function takes one (the slope of leaky_relu, elu's alpha)."""
    rng = np.random.default_rng(1)
    a = np.round(rng.normal(0, 3, 4001), 1).astype(np.float32)
    b = np.round(rng.normal(0, 3, 4001), 1).astype(np.float32)
    if name in ("leaky_relu", "elu"):
        b = np.full_like(b, 0.3)
    if name in elementwise.POSITIVE_DOMAIN:
        a, b = np.abs(a) + 0.5, np.abs(b) / 4 + 0.5
    got = elementwise.binary(name, a, b)
    assert got.dtype == np.float32
    want = TORCH_BINARY[name](torch.from_numpy(a.astype(np.float64)), torch.from_numpy(b.astype(np.float64)))
    np.testing.assert_allclose(got, want.double().numpy(), rtol=2e-6, atol=2e-6)


def test_tanh_saturates_without_nan_in_every_rendering():
    """The clamp that keeps a GPU's tanh finite is part of the definition, so every backend has it."""
    x = np.array([-1e30, -100.0, 100.0, 1e30], np.float32)
    assert np.array_equal(UNARY_FNS["tanh"](x), [-1, -1, 1, 1])
    assert "clamp(x, -15.0f, 15.0f)" in elementwise.wgsl_functions(["gelu_tanh"])
    assert "crate::math::tanhf(pmin(pmax(x, -15.0_f32), 15.0_f32))" in elementwise.rust_source()


def test_committed_rust_source_is_current():
    """runtime_rs/src/elementwise.rs is generated: a definition changed without regenerating fails here."""
    committed = (ROOT / "runtime_rs" / "src" / "elementwise.rs").read_text()
    assert committed == elementwise.rust_source(), (
        "regenerate: python -m monologue_compile.elementwise > runtime_rs/src/elementwise.rs")


def test_wgsl_epilogue_is_a_step_chain():
    """Any chain of unary and scalar steps renders; no fixed shapes are recognised."""
    steps = [{"fn": "sigmoid"}, {"fn": "sub", "scalar": 1.5, "reverse": True}, {"fn": "pow", "scalar": 2.0},
             {"fn": "gelu_tanh"}]
    k = kernels.matvec_int8(32, 64, steps=steps, covers=["test"])
    body = k.wgsl[k.wgsl.index("fn epilogue"):]
    assert ["ew_sigmoid(v)", "ew_sub(1.5f, v)", "ew_pow(v, 2.0f)", "ew_gelu_tanh(v)"] == \
        [line.split("= ", 1)[1].rstrip(";") for line in body.splitlines() if line.strip().startswith("v = ")]
    with pytest.raises(ValueError, match="not a unary or scalar step"):
        kernels.matvec_int8(32, 64, steps=[{"fn": "mul", "operand": 0}])
