"""The web shell's reply loop (web_shell/generate.js): stop, limits, device-loss fallback; via `node --test`."""

import shutil
import subprocess
from pathlib import Path

import pytest

NODE_TESTS = Path(__file__).with_name("test_web_generate.mjs")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_reply_loop_node_suite():
    proc = subprocess.run(
        ["node", "--test", "--test-timeout=30000", str(NODE_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# fail 0" in proc.stdout and "# pass 0" not in proc.stdout, proc.stdout
