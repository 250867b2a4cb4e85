"""The streaming think-parser of the web shell (web_shell/think.js), unit-tested with `node --test`."""

from pathlib import Path

from web_helpers import run_node_tests

NODE_TESTS = Path(__file__).with_name("test_web_think.mjs")


def test_think_parser_node_suite(tmp_path):
    proc = run_node_tests(NODE_TESTS, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# fail 0" in proc.stdout and "# pass 0" not in proc.stdout, proc.stdout
