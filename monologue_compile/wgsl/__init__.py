"""WGSL kernel library: jinja2 templates in `templates/wgsl/`, a table of kernel families
(`kernels.py`), the renderer (`render.py`) and a small wgpu-py device/harness (`device.py`)."""
