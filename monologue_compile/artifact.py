"""The compiled model on disk: `model/manifest.json`, `model/weights-NN.bin`, `model/ir.json`, ...

docs/formats.md is the specification; this module writes it (`write_model`) and reads it back
(`load_model`), checking every file's size and sha256 first. Everything written is a pure function
of the graph: sorted keys, no timestamps, no absolute paths, so the same input gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np

from .errors import MonologueError
from .files import sha256_file
from .ir import Graph, verify
from .schema import json_loads

MAGIC = b"MONOLOGW"  # 8 bytes, then u32 version, u32 shard index (little-endian): 16-byte header
VERSION = 1
TOOL_FILES = ("ir.json", "ir.txt")  # listed with "page": false: verified by the tools, never fetched by the page
HEADER = 16
ALIGN = 256  # WebGPU's minStorageBufferOffsetAlignment: every array starts bindable in place
SHARD_MAX = 64 * 2**20  # small enough for phone memory and HTTP caches


def pack_int4(q: np.ndarray) -> np.ndarray:
    """(N, K) int8 in [-8, 7] -> (N, K/2) bytes: byte j holds q[2j] (low nibble) and q[2j+1]
    (high nibble), two's complement."""
    u = (q.astype(np.uint8) & 0xF)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8).view(np.int8)


def unpack_int4(b: np.ndarray) -> np.ndarray:
    """The inverse of pack_int4."""
    b = b.view(np.uint8)
    q = np.empty((b.shape[0], 2 * b.shape[1]), np.int8)
    q[:, 0::2] = ((b << 4).view(np.int8) >> 4)
    q[:, 1::2] = (b.view(np.int8) >> 4)
    return q


def stored_array(w, part: str) -> np.ndarray:
    """A weight's array as the artifact stores it: `q` as row bytes (int4 packed two to a byte),
    `scale` and `data` as little-endian f32."""
    if part == "q":
        q = np.ascontiguousarray(w.data["q"], dtype=np.int8)
        return pack_int4(q) if w.bits == 4 else q
    return np.ascontiguousarray(w.data["scale"] if part == "scale" else w.data, dtype="<f4")


def _arrays(g: Graph) -> list[tuple[str, str, np.ndarray]]:
    """(tensor, part, array) for every stored array, in a fixed order."""
    used = {i for n in g.nodes for i in n.inputs}
    out = []
    for name in sorted(g.weights):
        if name not in used:
            continue
        w = g.weights[name]
        if w.dtype == "q8":
            # 4 int8 (or 8 int4) per u32 along K: exactly the row bytes, little-endian.
            out.append((name, "q", stored_array(w, "q").view("<u4")))
            out.append((name, "scale", stored_array(w, "scale")))
        else:
            out.append((name, "data", stored_array(w, "data")))
    return out


def write_model(g: Graph, model_dir: Path, tokenizer_json: str, extra: dict, shard_max: int = SHARD_MAX) -> dict:
    """Write weights, IR, tokenizer and manifest into model_dir; return the manifest."""
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, dict] = {}
    shards: list[bytearray] = []

    def new_shard():
        buf = bytearray(MAGIC + np.array([VERSION, len(shards)], "<u4").tobytes())
        shards.append(buf)
        return buf

    cur = new_shard()
    largest = 0
    for name, part, arr in _arrays(g):
        rows = arr.shape[0] if arr.ndim else 1
        row_bytes = arr.nbytes // max(rows, 1)
        if row_bytes > shard_max - ALIGN - HEADER:
            raise MonologueError(f"weight {name}: one row of {row_bytes} bytes exceeds the shard size")
        chunks = []
        r = 0
        while r < rows:
            pad = (-len(cur)) % ALIGN
            room = (shard_max - len(cur) - pad) // row_bytes if row_bytes else rows
            if room <= 0:
                cur = new_shard()
                continue
            take = min(room, rows - r)
            cur.extend(b"\0" * pad)
            off = len(cur)
            data = arr.reshape(rows, -1)[r:r + take].tobytes() if arr.ndim else arr.tobytes()
            cur.extend(data)
            chunks.append({"shard": len(shards) - 1, "offset": off, "nbytes": len(data), "rows": [r, r + take]})
            largest = max(largest, len(data))
            r += take
        w = g.weights[name]
        entry = tensors.setdefault(name, {"dtype": w.dtype, "shape": list(w.shape), "quant": w.quant,
                                          "role": w.role, "arrays": {}})
        entry["arrays"][part] = {"dtype": "u32" if arr.dtype == np.dtype("<u4") else "f32",
                                 "shape": list(arr.shape), "chunks": chunks}
    files = []
    for i, buf in enumerate(shards):
        fname = f"weights-{i:02d}.bin"
        (model_dir / fname).write_bytes(bytes(buf))
        files.append(fname)
    (model_dir / "tokenizer.json").write_text(tokenizer_json)
    (model_dir / "ir.json").write_text(json.dumps(g.to_json(), indent=1, sort_keys=True) + "\n")
    (model_dir / "ir.txt").write_text(g.dump())
    files += ["tokenizer.json", *TOOL_FILES]
    manifest = {
        "format": "monologue-model",
        "version": VERSION,
        **extra,
        "ir": "ir.json",
        "tokenizer": "tokenizer.json",
        "weights": {"magic": MAGIC.decode(), "header_bytes": HEADER, "alignment": ALIGN, "shard_max_bytes": shard_max,
                    "shards": [f for f in files if f.startswith("weights-")], "tensors": tensors},
        # The IR is for the tools (verify, chat, bench); the page does not download what it never reads.
        "files": [{"path": f, "bytes": (model_dir / f).stat().st_size, "sha256": sha256_file(model_dir / f),
                   **({"page": False} if f in TOOL_FILES else {})} for f in files],
        "webgpu": {"features": [], "required_limits": {
            # The largest weight array is bound whole; state what it needs beyond the WebGPU defaults.
            "maxStorageBufferBindingSize": max(largest, 128 * 2**20),
            "maxBufferSize": max(largest, 256 * 2**20)}},
    }
    write_manifest(model_dir, manifest)
    return manifest


def add_files_to_manifest(model_dir: Path, paths: list[str]) -> dict:
    """List files written after the manifest (paths relative to model/, e.g. "plan.json" or
    "../runtime.wasm") with their size and sha256, replacing earlier entries of the same path."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    files = [f for f in manifest["files"] if f["path"] not in paths]
    files += [{"path": f, "bytes": (model_dir / f).stat().st_size, "sha256": sha256_file(model_dir / f)} for f in paths]
    manifest["files"] = files
    write_manifest(model_dir, manifest)
    return manifest


# Files of a site its "site" list cannot cover: the manifest itself, and the parity report `verify`
# writes later.
SITE_EXTRAS = ("model/manifest.json", "parity.json", "parity.md")


def list_site(dist: Path) -> dict:
    """Record every file of the site (web page, crate, runtime.wasm, model; paths relative to dist)
    with its size and sha256 in the manifest's "site" list, so a folder can be recognised as wholly
    the compiler's and a changed file found. `files` stays what the page downloads."""
    dist = Path(dist)
    manifest = read_manifest(dist / "model")
    paths = sorted(p.relative_to(dist).as_posix() for p in dist.rglob("*") if p.is_file())
    manifest["site"] = [{"path": f, "bytes": (dist / f).stat().st_size, "sha256": sha256_file(dist / f)}
                        for f in paths if f not in SITE_EXTRAS]
    write_manifest(dist / "model", manifest)
    return manifest


def read_manifest(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "manifest.json").read_text())


def write_manifest(model_dir: Path, manifest: dict) -> None:
    # allow_nan=False: bare NaN is not JSON, and no reader of a site should have to accept it
    text = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False)
    (Path(model_dir) / "manifest.json").write_text(text + "\n")


MANIFEST_MAX = 64 * 2**20  # a d20 manifest is ~100 kB; anything near this is not one


def model_dir_of(dist) -> Path:
    """DIST/model when DIST is a site, else DIST itself (a model/ folder given directly)."""
    dist = Path(dist)
    return dist / "model" if (dist / "model" / "manifest.json").exists() else dist


def site_file(model_dir: Path, rel, size: int | None = None) -> Path:
    """The path of a file a manifest names (relative to model/), refused unless it is a regular file
    inside the site (model/'s parent) reached without symlinks, of `size` bytes when given: a tampered
    manifest must not make the host read /dev/zero, wait on a FIFO or leave the folder."""
    model_dir = Path(model_dir)
    if not isinstance(rel, str) or not rel or "\0" in rel or Path(rel).is_absolute():
        raise MonologueError(f"{model_dir / 'manifest.json'}: file path {rel!r:.80} is not a relative path")
    root = model_dir.resolve().parent
    target = Path(os.path.normpath(model_dir.resolve() / rel))
    if root not in target.parents:
        raise MonologueError(f"{model_dir / 'manifest.json'}: file path {rel!r:.80} leaves the site's folder")
    try:
        st = os.lstat(target)
        linked = target.resolve() != target
    except OSError:
        raise MonologueError(f"{model_dir / rel}: missing (listed in the manifest)") from None
    if linked or not stat.S_ISREG(st.st_mode):
        raise MonologueError(f"{model_dir / rel}: not a regular file inside the site (a link, device or pipe)")
    if size is not None and st.st_size != size:
        raise MonologueError(f"{model_dir / rel}: {st.st_size} bytes, the manifest says {size} (corrupt or modified)")
    return target


def _manifest_problem(m) -> str | None:
    """Why m is not a version-VERSION manifest this reader can follow, or None."""
    if not isinstance(m, dict) or m.get("format") != "monologue-model" or m.get("version") != VERSION:
        return f"not a version-{VERSION} monologue-model manifest"
    files = m.get("files")
    if not isinstance(files, list) or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)
            and isinstance(f.get("bytes"), int) and not isinstance(f["bytes"], bool) and 0 <= f["bytes"] < 2**40
            for f in files):
        return '"files" is not a list of {path, bytes, sha256}'
    listed = {f["path"] for f in files}
    w = m.get("weights")
    if not isinstance(w, dict) or not isinstance(w.get("shards"), list) or not isinstance(w.get("tensors"), dict):
        return '"weights" has no shards list and tensors table'
    for key, path in [("tokenizer", m.get("tokenizer")), ("ir", m.get("ir"))] + [("shard", s) for s in w["shards"]]:
        if path not in listed:
            return f"{key} {path!r:.80} is not among the listed files"
    return None


def checked_manifest(dist) -> tuple[Path, bytes, dict]:
    """(model dir, manifest bytes, manifest) of a compiled model, after checking the manifest's
    shape and that every file it lists passes site_file (nothing is read but the manifest)."""
    model_dir = model_dir_of(dist)
    if not (model_dir / "manifest.json").exists():
        raise MonologueError(f"{dist}: no model/manifest.json (not a compiled Monologue model)")
    mpath = site_file(model_dir, "manifest.json")
    if mpath.stat().st_size > MANIFEST_MAX:
        raise MonologueError(f"{mpath}: {mpath.stat().st_size} bytes is too large for a manifest")
    raw = mpath.read_bytes()
    try:
        manifest = json_loads(raw)
    except ValueError as e:  # not JSON, not UTF-8, NaN or Infinity
        raise MonologueError(f"{mpath}: not valid JSON: {e}") from None
    except RecursionError:
        raise MonologueError(f"{mpath}: not valid JSON: nested too deeply") from None
    why = _manifest_problem(manifest)
    if why:
        raise MonologueError(f"{mpath}: {why}")
    for f in manifest["files"]:
        site_file(model_dir, f["path"], f["bytes"])
    return model_dir, raw, manifest


def read_site(dist, verify_sha: bool = True) -> tuple[Path, bytes, dict, dict[str, bytes]]:
    """checked_manifest and {path: bytes} of every file it lists, checked against its sha256 unless
    the reader (the Rust loader) checks that itself."""
    model_dir, raw, manifest = checked_manifest(dist)
    files = {}
    for f in manifest["files"]:
        data = site_file(model_dir, f["path"], f["bytes"]).read_bytes()
        if verify_sha and hashlib.sha256(data).hexdigest() != f["sha256"]:
            raise MonologueError(f"{model_dir / f['path']}: sha256 differs from the manifest (corrupt or modified)")
        files[f["path"]] = data
    return model_dir, raw, manifest, files


def load_model(dist: Path) -> tuple[Graph, dict, str]:
    """(graph with weights, manifest, tokenizer JSON) from a dist dir (or its model/ dir)."""
    model_dir, _, manifest, files = read_site(dist)
    try:
        return _graph_of(manifest, files), manifest, files[manifest["tokenizer"]].decode("utf-8")
    except MonologueError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError) as e:
        # the hashes matched, so the manifest itself describes something impossible
        raise MonologueError(f"{model_dir / 'manifest.json'}: malformed ({type(e).__name__}: {str(e)[:120]})") from None


def _graph_of(manifest: dict, files: dict[str, bytes]) -> Graph:
    wm = manifest["weights"]
    shards = []
    for s in wm["shards"]:
        if files[s][:8] != MAGIC:
            raise MonologueError(f"{s}: bad magic")
        shards.append(files[s])
    data = {}
    for name, t in wm["tensors"].items():
        arrays = {}
        for part, a in t["arrays"].items():
            dt = "<u4" if a["dtype"] == "u32" else "<f4"
            buf = b"".join(shards[c["shard"]][c["offset"]:c["offset"] + c["nbytes"]] for c in a["chunks"])
            arrays[part] = np.frombuffer(buf, dtype=dt).reshape(a["shape"])
        if t["dtype"] == "q8":
            q = arrays["q"].view(np.int8).reshape(t["shape"][0], -1)
            if (t.get("quant") or {}).get("bits", 8) == 4:
                q = unpack_int4(q)
            data[name] = {"q": q, "scale": arrays["scale"].astype(np.float32)}
        else:
            data[name] = arrays["data"].astype(np.float32)
    g = Graph.from_json(json.loads(files[manifest["ir"]]), data)
    return verify(g, "loading")
