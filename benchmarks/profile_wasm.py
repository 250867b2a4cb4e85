"""Where a wasm decode token's time goes: runtime.wasm under Node's sampling profiler (--cpu-prof).

    python benchmarks/profile_wasm.py DIST [--prompt 128] [--steps 64] [--rounds 3] [--top 25]

Loads DIST (compiled with runtime.wasm) through web_shell/wasm_runtime.js, prefills a random
prompt, then times `steps` greedy next-token calls; the profiler (100 us samples) records the decode
steps of the last round only.
Prints decode tok/s and each function's share of the decode time, self and with its callees
(wasm functions by their Rust names, JS by theirs). Kernels Rust inlines appear in their caller.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Warm-up rounds, then one more whose decode steps alone run under the profiler.
DRIVER = r"""
import { readFileSync, writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
const [glue, dir, wasmPath, prompt, n, rounds, out] = process.argv.slice(1);
const { instantiate } = await import(glue);
const manifestBytes = readFileSync(dir + "/manifest.json");
const manifest = JSON.parse(manifestBytes.toString("utf8"));
const rt = await instantiate(readFileSync(wasmPath));
const model = rt.createModel({ manifest: manifestBytes, shards: manifest.weights.shards.map((s) => readFileSync(dir + "/" + s)) });
let seed = 1;
const ids = Array.from({ length: +prompt }, () => (seed = (seed * 1103515245 + 12345) % 2147483648) % model.vocab);
const session = new Session();
session.connect();
await session.post("Profiler.enable");
await session.post("Profiler.setSamplingInterval", { interval: 100 });
let best = Infinity;
// the samples counted are those inside steps() (not the inspector's own work at Profiler.stop)
function steps(n) {
  for (let i = 0; i < n; i++) model.nextToken();
}
const decode = async (profile) => {
  model.reset();
  model.setSampler({ temperature: 0 });
  model.forward(ids, false);
  if (profile) await session.post("Profiler.start");
  const t0 = performance.now();
  steps(+n);
  const t = performance.now() - t0;
  best = Math.min(best, t);
  return profile ? (await session.post("Profiler.stop")).profile : null;
};
for (let r = 0; r < +rounds; r++) await decode(false);  // warm-up: V8 tiers the hot functions up
const profile = await decode(true);
writeFileSync(out, JSON.stringify({ profile, best_ms: best, steps: +n }));
"""


def rust_name(symbol: str) -> str:
    """runtime_rs::kernels::attention for _ZN10runtime_rs7kernels9attention17h...E (Rust's legacy
    mangling, as the wasm name section keeps it); other names as they are."""
    if not (symbol.startswith("_ZN") and symbol.endswith("E")):
        return symbol
    parts, i, body = [], 3, symbol[:-1]
    while i < len(body) and body[i].isdigit():
        j = i
        while body[j].isdigit():
            j += 1
        n = int(body[i:j])
        parts.append(body[j:j + n])
        i = j + n
    if parts and parts[-1].startswith("h") and len(parts[-1]) == 17:
        parts.pop()  # the hash
    escapes = {"$u7b$": "{", "$u7d$": "}", "$LT$": "<", "$GT$": ">", "$u20$": " ", "$RF$": "&", "$C$": ",", "..": "::"}
    out = "::".join(parts)
    for k, v in escapes.items():
        out = out.replace(k, v)
    return out


def shares(profile: dict, root: str = "steps") -> tuple[dict, dict, float]:
    """Self and inclusive sample time (microseconds) per function name, and the total, of the
    samples inside the function ROOT."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    parent = {c: n["id"] for n in profile["nodes"] for c in n.get("children", [])}
    name = {i: rust_name(n["callFrame"]["functionName"] or "(anonymous)") for i, n in nodes.items()}
    self_t, incl_t = defaultdict(float), defaultdict(float)
    total = 0.0
    for node, dt in zip(profile["samples"], profile["timeDeltas"]):
        stack, i = [], node
        while i is not None:
            stack.append(name[i])
            i = parent.get(i)
        if root not in stack:
            continue
        total += dt
        self_t[name[node]] += dt
        for fn in set(stack):
            incl_t[fn] += dt
    return self_t, incl_t, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dist", type=Path)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="untimed warm-up rounds before the profiled one")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from monologue_compile.artifact import checked_manifest
    from monologue_compile.resources import web_shell_dir

    model_dir, _, _ = checked_manifest(a.dist)
    wasm = a.dist / "runtime.wasm"
    if not wasm.exists():
        sys.exit(f"{wasm}: missing; compile with the wasm build")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.json"
        glue = (web_shell_dir() / "wasm_runtime.js").resolve().as_uri()
        subprocess.run(["node", "--input-type=module", "-e", DRIVER, "--", glue, str(model_dir), str(wasm),
                        str(a.prompt), str(a.steps), str(a.rounds), str(out)], check=True)
        r = json.loads(out.read_text())
    self_t, incl_t, total = shares(r["profile"])
    print(f"decode: {1000 * r['steps'] / r['best_ms']:.1f} tok/s (best of {a.rounds + 1}), "
          f"{r['best_ms'] / r['steps']:.3f} ms/token; profiled {total / 1000:.1f} ms")
    print(f"{'function':60}{'self':>8}{'total':>8}")
    for fn, t in sorted(self_t.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"{fn[:60]:60}{100 * t / total:7.1f}%{100 * incl_t[fn] / total:7.1f}%")


if __name__ == "__main__":
    main()
