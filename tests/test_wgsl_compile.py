"""Every template, rendered once per family and per switch, compiles under naga (wgpu-py) and under
Tint (headless Chromium): the two disagree on features (see shared/WEBGPU.md), so both are checked.
A variant whose feature an implementation lacks is skipped with the reason."""

from __future__ import annotations

import json
import re

import pytest

from monologue_compile.wgsl.render import template_dir
from wgsl_harness import chromium_session, device_or_skip  # noqa: F401 (fixture)
from wgsl_harness.catalog import catalog, needs

NAMES = sorted(catalog("naga"))


def test_catalog_uses_every_template():
    """Every template is compiled by a test: the catalog's here, the generic ones (elementwise, row
    mean, token shift) through the conformance plan (test_conformance.py, under naga and Tint)."""
    from test_conformance import conformance_graph

    from monologue_compile.backends.wgsl_plan import build_plan

    used = {k.template for k in catalog("naga").values()}
    used |= {"_step.wgsl.j2", "_int8.wgsl.j2", "_epilogue.wgsl.j2", "_score_terms.wgsl.j2",
             "_sinks.wgsl.j2"}  # included by the kernels above
    # a plan's kernel files are named NNN_<template stem>[_<variant>].wgsl
    used |= {re.sub(r"^\d+_(.*?)(_\d+)?\.wgsl$", r"\1.wgsl.j2", name) for name in build_plan(conformance_graph()[0]).kernels}
    assert {p.name for p in template_dir().glob("*.wgsl.j2")} <= used


def test_headers_name_shapes_and_covers():
    for name, k in catalog("naga").items():
        body = k.wgsl.split("\n")
        assert body[0].startswith(f"// {k.name}:"), name
        assert any(line.startswith("// covers: catalog") for line in body[:12]), name
        assert any(line.startswith("// shapes: ") for line in body[:12]), name


@pytest.mark.parametrize("name", NAMES)
def test_compiles_under_naga(name):
    from monologue_compile.wgsl.device import Program, adapter_features

    k = catalog("naga")[name]
    device_or_skip()  # skips when there is no wgpu-py or no adapter at all
    missing = [f for f in k.features if f not in adapter_features()]
    if missing:
        pytest.skip(f"{name}: wgpu-py adapter lacks {missing}")
    Program(k, device_or_skip(k.features))  # raises on a WGSL or pipeline error


@pytest.fixture(scope="module")
def tint_results(chromium_session):
    """The whole Tint catalog compiled in the shared browser session."""
    browser, why = chromium_session
    if browser is None:
        pytest.skip(f"Tint check unavailable: {why}")
    return {name: browser.compile(k, needs(k)) for name, k in catalog("tint").items()}


@pytest.mark.parametrize("name", NAMES)
def test_compiles_under_tint(name, tint_results):
    r = tint_results[name]
    if "skip" in r:
        pytest.skip(f"{name}: {r['skip']}")
    assert not r["errors"], f"{name} under Tint:\n" + json.dumps(r["errors"], indent=1) + "\n" + catalog("tint")[name].wgsl
