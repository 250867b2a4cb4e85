"""The page's wasm glue refuses NaN, 2**32+5, "7" and the like as token ids and sampler values
(web_shell/wasm_runtime.js, unit-tested with `node --test`)."""

from pathlib import Path

from web_helpers import run_node_tests

NODE_TESTS = Path(__file__).with_name("test_web_glue.mjs")


def test_wasm_glue_refuses_invalid_ids_and_values(tmp_path):
    proc = run_node_tests(NODE_TESTS, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# fail 0" in proc.stdout and "# pass 0" not in proc.stdout, proc.stdout
