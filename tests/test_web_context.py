"""The web shell's context fitting (web_shell/context.js), unit-tested with `node --test`."""

from pathlib import Path

from web_helpers import run_node_tests

NODE_TESTS = Path(__file__).with_name("test_web_context.mjs")


def test_context_fitting_node_suite(tmp_path):
    proc = run_node_tests(NODE_TESTS, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# fail 0" in proc.stdout and "# pass 0" not in proc.stdout, proc.stdout
