"""Helpers shared by tests/test_wgsl_*.py.

`gpu` (import it into a test module) is a fixture over two WebGPU implementations: wgpu-py (naga
over lavapipe or a real Vulkan device) and headless Chromium (Tint over SwiftShader). Each skips with
the reason when that implementation is absent. `gpu.run(kernel, inputs, outputs, pos, n_tokens)`
returns {binding: array}.
"""

from __future__ import annotations

import pytest

from monologue_compile.wgsl.render import render

BACKENDS = ["wgpu", "chromium"]


def device_or_skip(features=()):
    """The wgpu-py device with `features`, or skip the test saying what is missing."""
    try:
        from monologue_compile.wgsl import device
    except ImportError as e:
        pytest.skip(f"wgpu-py not importable: {e}")
    try:
        return device.get_device(frozenset(features))
    except device.NoAdapter as e:
        pytest.skip(f"no WebGPU adapter for wgpu-py ({e}); install mesa-vulkan-drivers for lavapipe")


def for_tint(kernel):
    """The same kernel with Tint's subgroup spelling (`enable subgroups;`)."""
    if kernel.params.get("subgroups") != "naga":
        return kernel
    import dataclasses

    params = dict(kernel.params, subgroups="tint")
    return dataclasses.replace(kernel, params=params, wgsl=render(kernel.template, name=kernel.name, **params))


class WgpuRunner:
    name = "wgpu"

    def run(self, kernel, inputs, outputs, pos=0, n_tokens=1):
        from monologue_compile.wgsl import device

        dev = device_or_skip(kernel.features)
        return device.run(kernel, inputs, outputs, pos=pos, n_tokens=n_tokens, device=dev)


class _Chromium:
    name = "chromium"

    def __init__(self, browser):
        self.browser = browser

    def run(self, kernel, inputs, outputs, pos=0, n_tokens=1):
        from wgsl_harness.catalog import needs

        k = for_tint(kernel)
        res = self.browser.run(k, needs(k), inputs, outputs, pos=pos, n_tokens=n_tokens)
        if "skip" in res:
            pytest.skip(res["skip"])
        assert "out" in res, f"{k.name} failed under Tint: {res.get('errors')}"
        return res["out"]


_browser: list = []  # one Chromium per test session, shared by every module that imports the fixture


@pytest.fixture(scope="session")
def chromium_session():
    from wgsl_harness.browser import Browser

    if not _browser:
        _browser.append(Browser.open())
    yield _browser[0]
    # Every importing module registers its own copy of this fixture; the first teardown closes it.
    browser = _browser[0][0]
    if browser is not None and not browser.closed:
        browser.close()


@pytest.fixture(params=BACKENDS)
def gpu(request):
    if request.param == "wgpu":
        return WgpuRunner()
    browser, why = request.getfixturevalue("chromium_session")
    if browser is None:
        pytest.skip(f"Chromium/Tint run unavailable: {why}")
    return _Chromium(browser)
