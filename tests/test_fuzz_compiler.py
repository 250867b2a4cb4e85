"""A sample of the compiler's input fuzzer (benchmarks/fuzz_compiler.py; the full run is 10,000
cases): two cases of each kind (mutated pickle opcodes, zip structure, state-dict keys and dtypes,
configs, config JSON, tokenizer files, paths), each in its own bounded process. Every case compiles
or is refused in one line with exit code 2: no traceback, crash, hang or internal error."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_fuzzed_compiler_inputs_compile_or_are_refused_in_one_line():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuzz_compiler.py"), "--count", "14", "--seed", "5",
                        "--timeout", "120"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert stats["cases"] == 14 and stats["rejected"] >= 7, stats
    bad = {k: stats[k] for k in ("traceback", "crash", "hang", "internal_error", "other")}
    assert not any(bad.values()), (bad, stats["failures"])
