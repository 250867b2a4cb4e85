"""A wgpu-py device for running the kernels from Python (lavapipe on CPU machines, Vulkan on GPUs),
and a small harness that runs one `Kernel` on numpy arrays.

Only the features a kernel needs are requested, and limits stay at the WebGPU defaults unless asked,
so a kernel that runs here also fits what a browser page gets by default.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from .kernels import STEP_BYTES, Kernel

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # silences lavapipe's warning on headless machines


class NoAdapter(RuntimeError):
    """No WebGPU adapter (no Vulkan driver, or wgpu not installed)."""


@functools.lru_cache(maxsize=None)
def adapter():
    try:
        import wgpu
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise NoAdapter(f"wgpu-py is not installed: {e}") from e
    try:
        a = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    except Exception as e:  # pragma: no cover
        raise NoAdapter(f"no Vulkan adapter: {e}") from e
    if a is None:  # pragma: no cover
        raise NoAdapter("no Vulkan adapter")
    return a


def adapter_features() -> frozenset[str]:
    return frozenset(adapter().features)


# WebGPU's defaults for the limits kernels press on. wgpu-native hands out the adapter's limits when
# none are asked for (lavapipe: 1024 invocations, 32 KiB workgroup memory), so they are requested
# explicitly: a kernel over a browser's default then fails here too.
WEBGPU_DEFAULT_LIMITS = {
    "max-compute-invocations-per-workgroup": 256,
    "max-compute-workgroup-storage-size": 16384,
    "max-storage-buffers-per-shader-stage": 8,
    "max-storage-buffer-binding-size": 128 << 20,
}


@functools.lru_cache(maxsize=None)
def get_device(features: frozenset[str] = frozenset(), limits: frozenset[tuple[str, int]] = frozenset()):
    """A device with exactly `features` (e.g. {"subgroup"}) and WebGPU default limits except `limits`
    (e.g. {("max-storage-buffer-binding-size", 1 << 30)}), which a plan must state it needs.
    Cached per (features, limits)."""
    missing = set(features) - adapter_features()
    if missing:
        raise NoAdapter(f"adapter lacks features {sorted(missing)}")
    have = adapter().limits
    too_big = {k: v for k, v in limits if v > have[k]}
    if too_big:
        raise NoAdapter(f"adapter limits too small for {too_big}")
    return adapter().request_device_sync(required_features=sorted(features),
                                         required_limits=WEBGPU_DEFAULT_LIMITS | dict(limits))


class Program:
    """One kernel compiled on a device: pipeline built once, bind groups built per buffer set."""

    def __init__(self, kernel: Kernel, device=None):
        import wgpu

        self.kernel = kernel
        self.device = device or get_device(frozenset(kernel.features))
        module = self.device.create_shader_module(code=kernel.wgsl, label=kernel.name)
        entries = []
        for i, b in enumerate(kernel.bindings):
            t = {
                "read": wgpu.BufferBindingType.read_only_storage,
                "read_write": wgpu.BufferBindingType.storage,
                "uniform": wgpu.BufferBindingType.uniform,
            }[b.kind]
            entries.append({"binding": i, "visibility": wgpu.ShaderStage.COMPUTE, "buffer": {"type": t}})
        self.bgl = self.device.create_bind_group_layout(entries=entries)
        layout = self.device.create_pipeline_layout(bind_group_layouts=[self.bgl])
        self.pipeline = self.device.create_compute_pipeline(
            layout=layout, compute={"module": module, "entry_point": kernel.entry_point}
        )

    def bind(self, buffers: dict):
        return self.device.create_bind_group(
            layout=self.bgl,
            entries=[
                {"binding": i, "resource": {"buffer": buffers[b.name], "offset": 0, "size": buffers[b.name].size}}
                for i, b in enumerate(self.kernel.bindings)
            ],
        )

    def encode(self, encoder, bind_group):
        p = encoder.begin_compute_pass()
        p.set_pipeline(self.pipeline)
        p.set_bind_group(0, bind_group)
        p.dispatch_workgroups(*self.kernel.workgroups)
        p.end()


def step_bytes(pos: int = 0, n_tokens: int = 1) -> bytes:
    """The `Step` uniform every kernel shares: absolute position of the step's first token, token count."""
    return np.array([pos, n_tokens, 0, 0], dtype=np.uint32).tobytes()[:STEP_BYTES]


def make_buffer(device, data: np.ndarray | None = None, nbytes: int | None = None, uniform: bool = False):
    import wgpu

    usage = wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST
    usage |= wgpu.BufferUsage.UNIFORM if uniform else wgpu.BufferUsage.STORAGE
    if data is not None:
        raw = np.ascontiguousarray(data).tobytes()
        pad = (-len(raw)) % 16
        return device.create_buffer_with_data(data=raw + b"\0" * pad, usage=usage)
    return device.create_buffer(size=max(16, -(-nbytes // 16) * 16), usage=usage)


def run(kernel: Kernel, inputs: dict[str, np.ndarray], outputs: dict[str, tuple], pos: int = 0,
        n_tokens: int = 1, device=None) -> dict[str, np.ndarray]:
    """Run one dispatch of `kernel`.

    inputs: binding name -> array (read-write bindings given here start with that content);
    outputs: binding name -> (shape, dtype) read back after the dispatch (read-write bindings
    not in `inputs` start zeroed). The `step` uniform is filled from pos / n_tokens.
    """
    prog = Program(kernel, device)
    dev = prog.device
    bufs = {}
    for b in kernel.bindings:
        if b.kind == "uniform":
            bufs[b.name] = make_buffer(dev, np.frombuffer(step_bytes(pos, n_tokens), np.uint32), uniform=True)
        elif b.name in inputs:
            bufs[b.name] = make_buffer(dev, inputs[b.name])
        else:
            shape, dtype = outputs[b.name]
            bufs[b.name] = make_buffer(dev, nbytes=int(np.prod(shape)) * np.dtype(dtype).itemsize)
    enc = dev.create_command_encoder()
    prog.encode(enc, prog.bind(bufs))
    dev.queue.submit([enc.finish()])
    res = {}
    for name, (shape, dtype) in outputs.items():
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = dev.queue.read_buffer(bufs[name])[:n]
        res[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return res
