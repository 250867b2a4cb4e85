"""Fuzz the native runtime's loader: mutated and truncated weight shards, manifests and tokenizer
files go through the C ABI (load_manifest / add_shard / load_tokenizer / finish).

    python benchmarks/fuzz_runtime.py DIST [--count 10000] [--seed 0] [--lib path/to/libruntime_rs.so]

Every case must end in a status code, never a crash (this process dying) or a caught panic
(status 2). Mutations are of two kinds:
  must-reject: truncations, corrupt headers, shards that do not match their sha256, manifest
               fields made wrong (shapes, dtypes, chunk offsets/sizes/rows/shards, sha256s, magic,
               version, missing keys), JSON cut short: all must fail with status 1;
  may-accept:  random byte flips in the manifest or tokenizer (with the manifest updated to the
               new tokenizer's sha256): a flip inside an unused string is harmless, so such a case
               may load, but then it must compute the same logits as the original model.
Prints one JSON line: counts per outcome and kind.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from monologue_compile.backends.native import NativeModel, RuntimeCallError, model_files  # noqa: E402


class Case:
    def __init__(self, kind: str, manifest: bytes, shards: list[bytes], tokenizer: bytes, must_reject: bool):
        self.kind, self.manifest, self.shards, self.tokenizer, self.must_reject = kind, manifest, shards, tokenizer, must_reject


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _with_file(doc: dict, path: str, data: bytes) -> dict:
    doc = copy.deepcopy(doc)
    for f in doc["files"]:
        if f["path"] == path:
            f["bytes"], f["sha256"] = len(data), _sha(data)
    return doc


def _dump(doc) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True).encode()


BAD_NUMBERS = [-1, 2**32, 2**63, 1.5, "7", None, [], 10**30, -(10**30)]


def _numeric_paths(doc: dict) -> list[tuple]:
    """Paths (key tuples) to every structural number/list the loader must check."""
    out = []
    for name, t in doc["weights"]["tensors"].items():
        base = ("weights", "tensors", name)
        out.append(base + ("shape",))
        out.append(base + ("dtype",))
        if t.get("quant"):
            out += [base + ("quant", "k_pad"), base + ("quant", "group")]
        for part, a in t["arrays"].items():
            ab = base + ("arrays", part)
            out += [ab + ("shape",), ab + ("dtype",)]
            for i in range(len(a["chunks"])):
                out += [ab + ("chunks", i, k) for k in ("offset", "nbytes", "rows", "shard")]
    for i, f in enumerate(doc["files"]):
        if f["path"].startswith("weights-") or f["path"] == doc["tokenizer"]:
            out += [("files", i, "bytes"), ("files", i, "sha256")]
    out += [("format",), ("version",), ("weights", "magic"), ("weights", "header_bytes"), ("tokenizer",),
            ("weights", "shards"), ("model", "config", "vocab_size"), ("model", "config", "sequence_len")]
    return out


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def _set(doc, path, value):
    for k in path[:-1]:
        doc = doc[k]
    doc[path[-1]] = value


def _del(doc, path):
    for k in path[:-1]:
        doc = doc[k]
    del doc[path[-1]]


def _wrong(value, rng: random.Random):
    """A value of the field that must not be accepted."""
    if isinstance(value, bool) or value is None:
        return "x"
    if isinstance(value, int):
        return rng.choice([value + 1, value - 1, value + 4096, value * 2 + 3] + BAD_NUMBERS)
    if isinstance(value, str):
        return rng.choice(["", value[:-1], value + "x", value.upper() if value.upper() != value else value + "0", 3])
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            i = rng.randrange(len(value))
            bad = list(value)
            bad[i] = rng.choice([bad[i] + 1, bad[i] - 1, 0, 2**31, -5])
            return rng.choice([bad, value[:-1], value + [1], "list"])
        return rng.choice([value[:-1] + ["nope"], {}, 0]) if value else [0]
    return None


def make_case(rng: random.Random, manifest: bytes, shards: list[bytes], tok: bytes) -> Case:
    doc = json.loads(manifest)
    kind = rng.choice(["shard_truncate", "shard_flip", "shard_header", "shard_cut_rehashed", "manifest_truncate",
                       "manifest_field", "manifest_delete", "manifest_flip", "tokenizer_truncate", "tokenizer_flip",
                       "tokenizer_flip_rehashed", "missing_shard"])
    shards = list(shards)
    i = rng.randrange(len(shards))
    name = doc["weights"]["shards"][i]
    if kind == "shard_truncate":
        shards[i] = shards[i][: rng.randrange(len(shards[i]))]
        return Case(kind, manifest, shards, tok, True)
    if kind == "shard_flip":
        b = bytearray(shards[i])
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        shards[i] = bytes(b)
        return Case(kind, manifest, shards, tok, True)
    if kind == "shard_header":  # corrupt magic/version/index, manifest updated: the header check must catch it
        b = bytearray(shards[i])
        j = rng.randrange(16)
        b[j] ^= 1 << rng.randrange(8)
        shards[i] = bytes(b)
        return Case(kind, _dump(_with_file(doc, name, shards[i])), shards, tok, True)
    if kind == "shard_cut_rehashed":  # shorter shard with a matching manifest entry: chunks now lie outside
        end = max(c["offset"] + c["nbytes"] for t in doc["weights"]["tensors"].values() for a in t["arrays"].values()
                  for c in a["chunks"] if c["shard"] == i)
        shards[i] = shards[i][: rng.randrange(end)]
        return Case(kind, _dump(_with_file(doc, name, shards[i])), shards, tok, True)
    if kind == "missing_shard":
        return Case(kind, manifest, shards[:i] + shards[i + 1:], tok, True)
    if kind == "manifest_truncate":
        body = manifest.rstrip()
        return Case(kind, body[: rng.randrange(len(body))], shards, tok, True)
    if kind == "manifest_field":
        path = rng.choice(_numeric_paths(doc))
        value = _get(doc, path)
        bad = _wrong(value, rng)
        if bad == value:
            bad = "changed"
        _set(doc, path, bad)
        return Case(kind + ":" + "/".join(str(p) for p in path[-2:]), _dump(doc), shards, tok, True)
    if kind == "manifest_delete":
        path = rng.choice(_numeric_paths(doc))
        _del(doc, path)
        return Case(kind + ":" + str(path[-1]), _dump(doc), shards, tok, True)
    if kind == "manifest_flip":
        b = bytearray(manifest)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return Case(kind, bytes(b), shards, tok, False)
    if kind == "tokenizer_truncate":
        t = tok[: rng.randrange(len(tok.rstrip()))]
        return Case(kind, _dump(_with_file(doc, doc["tokenizer"], t)), shards, t, True)
    if kind == "tokenizer_flip":  # manifest not updated: the sha256 check must catch it
        b = bytearray(tok)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return Case(kind, manifest, shards, bytes(b), True)
    b = bytearray(tok)  # tokenizer_flip_rehashed: reaches the tokenizer parser
    for _ in range(rng.randint(1, 3)):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return Case(kind, _dump(_with_file(doc, doc["tokenizer"], bytes(b))), shards, bytes(b), False)


def run(dist, lib, count: int, seed: int) -> dict:
    manifest, shards, tok = model_files(dist)
    probe = list(range(1, 9))
    ref = NativeModel(lib, manifest, shards, tok).forward(probe)
    rng = random.Random(seed)
    stats = {"cases": 0, "rejected": 0, "accepted_same_logits": 0, "accepted_different": 0, "panics": 0,
             "must_reject_accepted": 0, "by_kind": {}, "failures": []}
    t0 = time.perf_counter()
    for n in range(count):
        c = make_case(rng, manifest, shards, tok)
        k = c.kind.split(":")[0]
        kind_stats = stats["by_kind"].setdefault(k, {"cases": 0, "rejected": 0})
        stats["cases"] += 1
        kind_stats["cases"] += 1
        try:
            m = NativeModel(lib, c.manifest, c.shards, c.tokenizer)
        except RuntimeCallError as e:
            if e.code == 2:
                stats["panics"] += 1
                stats["failures"].append({"case": n, "kind": c.kind, "error": e.message})
            else:
                stats["rejected"] += 1
                kind_stats["rejected"] += 1
            continue
        if c.must_reject:
            stats["must_reject_accepted"] += 1
            stats["failures"].append({"case": n, "kind": c.kind, "error": "accepted"})
            continue
        try:
            same = np.array_equal(m.forward(probe), ref)
        except RuntimeCallError as e:
            same = False
            if e.code == 2:
                stats["panics"] += 1
        stats["accepted_same_logits" if same else "accepted_different"] += 1
        if not same and c.kind.startswith("manifest"):
            stats["failures"].append({"case": n, "kind": c.kind, "error": "loaded a changed manifest with different results"})
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    stats["failures"] = stats["failures"][:20]
    return stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dist")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lib", help="native runtime library (default: build DIST/runtime_rs)")
    a = ap.parse_args()
    lib = a.lib
    if lib is None:
        from monologue_compile.backends.rust_crate import build_native

        lib = build_native(Path(a.dist) / "runtime_rs")
    print(json.dumps(run(a.dist, lib, a.count, a.seed), sort_keys=True))


if __name__ == "__main__":
    main()
