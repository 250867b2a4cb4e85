"""Helpers shared by tests/test_wgsl_*.py: skip cleanly without a Vulkan adapter, run one kernel."""

from __future__ import annotations

import pytest


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


def run(kernel, inputs, outputs, pos=0, n_tokens=1):
    from monologue_compile.wgsl import device

    dev = device_or_skip(kernel.features)
    return device.run(kernel, inputs, outputs, pos=pos, n_tokens=n_tokens, device=dev)
