"""Runs a plan.json on wgpu-py (lavapipe on CPU machines, Vulkan on GPUs): the Python twin of the
browser's WebGPU executor, and the `wgpu` backend of chat, verify and bench.

It runs the plan's default dispatch lists, or on a CPU adapter (lavapipe) the `cpu` profile's
(docs/plan.md); pipelines and bind groups are built once, for those lists only. A step writes the token ids and the 16-byte `step`
uniform, encodes the step's whole dispatch list in one compute pass, submits one command buffer and
reads back the logits (or, for greedy decoding, one id from the GPU argmax; for sampling, the top-k).
Same interface as the numpy interpreter's Session: `forward(ids) -> logits (T, V)`, `reset()`,
`pos`, `max_len`.
"""

from __future__ import annotations

import functools
import json

import numpy as np

from ..artifact import stored_array
from ..errors import MonologueError
from ..ir import Graph
from ..wgsl import device as wdev

# WebGPU limit names (plan.json, manifest) -> wgpu-py's
_LIMIT_NAMES = {"maxStorageBufferBindingSize": "max-storage-buffer-binding-size", "maxBufferSize": "max-buffer-size"}


def _graph_source(g: Graph):
    """Initial contents of a plan buffer from the graph's weights (a plan built in memory)."""

    # the last array kept: a table split over several buffers is converted (int4 packed) once
    @functools.lru_cache(maxsize=1)
    def stored(tensor: str, part: str) -> np.ndarray:
        return stored_array(g.weights[tensor], part)

    def read(init: dict) -> bytes:
        r0, r1 = init["rows"]
        return np.ascontiguousarray(stored(init["tensor"], init["part"])[r0:r1]).tobytes()

    return read


def _dist_source(files: dict[str, bytes]):
    """Initial contents from the weight shards, by the byte ranges the plan names (as the browser does)."""

    def read(init: dict) -> bytes:
        out = bytearray()
        for c in init["chunks"]:
            out += _listed(files, c["shard"])[c["offset"]:c["offset"] + c["nbytes"]]
        return bytes(out)

    return read


def _listed(files: dict[str, bytes], path) -> bytes:
    if path not in files:
        raise MonologueError(f"plan.json names {path!r:.80}, which the manifest does not list")
    return files[path]


def adapter_profile() -> str | None:
    """The plan profile for wgpu-py's adapter: `cpu` on a CPU implementation (lavapipe), else none."""
    return "cpu" if wdev.adapter().info.get("adapter_type") == "CPU" else None


def profile_lists(plan: dict, profile: str | None) -> dict[str, list]:
    """The dispatch lists an executor runs: `dispatch`, with the profile's lists in place of those."""
    return plan["dispatch"] | (plan["profiles"].get(profile, {}).get("dispatch", {}) if profile else {})


class WgpuSession:
    def __init__(self, plan: dict, kernels: dict[str, str], weights, device=None, profile: str | None = "auto"):
        """`profile`: which of plan["profiles"] to run ("auto": by the adapter, None: the default lists)."""
        import wgpu

        self.plan = plan
        limits = frozenset((_LIMIT_NAMES[k], v) for k, v in plan.get("required_limits", {}).items())
        self.dev = device or wdev.get_device(frozenset(plan.get("required_features", [])), limits)
        self.profile = adapter_profile() if profile == "auto" else profile
        self.lists = profile_lists(plan, self.profile)
        self.max_len = plan["max_seq"]
        self.chunk = plan["chunk"]
        self.V = plan["vocab_size"]
        self.bufs = {}
        for b in plan["buffers"]:
            usage = 0
            for u in b["usage"]:
                usage |= getattr(wgpu.BufferUsage, u)
            if b["init"] is not None:
                data = weights(b["init"])
                data += b"\0" * (b["bytes"] - len(data))
                self.bufs[b["name"]] = self.dev.create_buffer_with_data(data=data, usage=usage)
            else:
                self.bufs[b["name"]] = self.dev.create_buffer(size=b["bytes"], usage=usage)
        # only what this profile's lists use: the other profile's kernels are never compiled
        used_bg = {d["bind_group"] for lst in self.lists.values() for d in lst}
        used = {plan["bind_groups"][i]["pipeline"] for i in used_bg}
        self.pipelines = {}
        for i, p in enumerate(plan["pipelines"]):
            if i not in used:
                continue
            src = kernels[p["kernel"]]
            module = self.dev.create_shader_module(code=src, label=p["name"])
            entries = [{"binding": bb["binding"], "visibility": wgpu.ShaderStage.COMPUTE,
                        "buffer": {"type": bb["type"]}} for bb in p["bindings"]]
            bgl = self.dev.create_bind_group_layout(entries=entries)
            pipe = self.dev.create_compute_pipeline(
                layout=self.dev.create_pipeline_layout(bind_group_layouts=[bgl]),
                compute={"module": module, "entry_point": p["entry_point"]})
            self.pipelines[i] = (pipe, bgl)
        self.bind_groups = {}
        for i in sorted(used_bg):
            bg = plan["bind_groups"][i]
            bgl = self.pipelines[bg["pipeline"]][1]
            self.bind_groups[i] = self.dev.create_bind_group(layout=bgl, entries=[
                {"binding": j, "resource": {"buffer": self.bufs[name], "offset": 0, "size": self.bufs[name].size}}
                for j, name in enumerate(bg["entries"])])
        self.dispatches = {name: [(self.pipelines[d["pipeline"]][0], self.bind_groups[d["bind_group"]],
                                   tuple(d["workgroups"])) for d in lst] for name, lst in self.lists.items()}
        self.step_buf = self.bufs[plan["uniforms"]["step"]["buffer"]]
        self.submits = 0
        self.reset()

    @classmethod
    def from_dist(cls, dist, device=None, profile: str | None = "auto") -> "WgpuSession":
        from ..artifact import read_site

        # only files the manifest lists, each checked (confined, sized, sha256) before use
        model_dir, _, _, files = read_site(dist)
        if "plan.json" not in files:
            raise MonologueError(f"{model_dir}: no plan.json (compiled without the WGSL backend, or --quant none)")
        plan = json.loads(files["plan.json"])
        kernels = {p["kernel"]: _listed(files, p["kernel"]).decode("utf-8") for p in plan["pipelines"]}
        return cls(plan, kernels, _dist_source(files), device, profile)

    @classmethod
    def from_graph(cls, g: Graph, device=None, profile: str | None = "auto", **plan_kw) -> "WgpuSession":
        from .wgsl_plan import build_plan

        p = build_plan(g, **plan_kw)
        return cls(p.plan, {f"kernels/{k}": v for k, v in p.kernels.items()}, _graph_source(g), device, profile)

    # --- steps -----------------------------------------------------------------------------
    def reset(self):
        self.pos = 0  # caches need no clearing: attention reads only positions < pos + n_tokens

    def _encode(self, pass_, lists):
        for name in lists:
            for pipe, bg, wg in self.dispatches[name]:
                pass_.set_pipeline(pipe)
                pass_.set_bind_group(0, bg)
                pass_.dispatch_workgroups(*wg)

    def _step(self, ids, lists):
        n = len(ids)
        if self.pos + n > self.max_len:
            raise ValueError(f"sequence of {self.pos + n} tokens exceeds sequence_len={self.max_len}")
        q = self.dev.queue
        q.write_buffer(self.bufs[self.plan["io"]["ids"]], 0, np.asarray(ids, np.uint32).tobytes())
        q.write_buffer(self.step_buf, 0, wdev.step_bytes(self.pos, n))
        enc = self.dev.create_command_encoder()
        p = enc.begin_compute_pass()
        self._encode(p, lists)
        p.end()
        q.submit([enc.finish()])
        self.submits += 1
        self.pos += n

    def _read(self, buffer: str, nbytes: int, dtype) -> np.ndarray:
        return np.frombuffer(self.dev.queue.read_buffer(self.bufs[buffer], 0, nbytes), dtype).copy()

    def logits(self, n: int = 1) -> np.ndarray:
        """The logits rows of the last step (after decode_greedy too: the decode list writes them)."""
        return self._read(self.plan["io"]["logits"]["buffer"], 4 * n * self.V, np.float32).reshape(n, self.V)

    def forward(self, ids) -> np.ndarray:
        """Logits (T, V) for the next tokens: one decode step, or prefill in chunks of plan.chunk."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if len(ids) == 1:
            self._step(ids, ["decode"])
            return self.logits(1)
        rows = []
        for i in range(0, len(ids), self.chunk):
            part = ids[i:i + self.chunk]
            self._step(part, ["prefill"])
            rows.append(self.logits(len(part)))
        return np.concatenate(rows)

    def decode_greedy(self, token: int) -> int:
        """One decode step whose next token is picked on the GPU: reads back 4 bytes, not the logits."""
        self._step([int(token)], ["decode", "argmax"])
        return int(self._read(self.plan["io"]["argmax"]["buffer"], 4, np.uint32)[0])

    def decode_topk(self, token: int) -> tuple[np.ndarray, np.ndarray]:
        """One decode step returning the top-k logits (descending) and their ids, for sampling on the host."""
        self._step([int(token)], ["decode", "topk"])
        io = self.plan["io"]["topk"]
        k = io["k"]
        return self._read(io["values"], 4 * k, np.float32), self._read(io["ids"], 4 * k, np.uint32).astype(np.int64)

    def probe(self, ids) -> dict[str, np.ndarray]:
        """Every IR value a prefill (or, for one id, decode) step computes, read back after the last
        dispatch that writes it: one submit per dispatch, for per-kernel checks against the interpreter."""
        ids = [int(i) for i in ids]
        lst = "decode" if len(ids) == 1 else "prefill"
        n, pos0 = len(ids), self.pos
        if n > self.chunk or pos0 + n > self.max_len:
            raise ValueError("probe takes one chunk that fits the cache")
        q = self.dev.queue
        q.write_buffer(self.bufs[self.plan["io"]["ids"]], 0, np.asarray(ids, np.uint32).tobytes())
        q.write_buffer(self.step_buf, 0, wdev.step_bytes(pos0, n))
        plan_list = self.lists[lst]
        last = {node: i for i, d in enumerate(plan_list) for node in d.get("nodes", [d["node"]])}
        out = {}
        for i, (d, (pipe, bg, wg)) in enumerate(zip(plan_list, self.dispatches[lst])):
            enc = self.dev.create_command_encoder()
            p = enc.begin_compute_pass()
            p.set_pipeline(pipe)
            p.set_bind_group(0, bg)
            p.dispatch_workgroups(*wg)
            p.end()
            q.submit([enc.finish()])
            for node in d.get("nodes", [d["node"]]):
                loc = self.plan["values"].get(node)
                if last[node] == i and loc is not None:
                    row0 = pos0 if loc["at_pos"] else 0
                    nfl = loc["offset"] + (row0 + n) * loc["row_stride"]
                    raw = self._read(loc["buffer"], 4 * nfl, np.float32)
                    out[node] = np.stack([raw[loc["offset"] + (row0 + t) * loc["row_stride"]:][:loc["row_floats"]]
                                          for t in range(n)])
        self.pos += n
        return out


def graph_session(graph: Graph) -> WgpuSession:
    """chat's factory: a session for a loaded graph (the plan rebuilt in memory, as the compiler wrote it)."""
    try:
        return WgpuSession.from_graph(graph)
    except wdev.NoAdapter as e:
        raise MonologueError(f"--backend wgpu: {e}") from None


def parity_checks(g: Graph, fp32_model, seqs: list[list[int]], dist) -> dict:
    """The wgpu backend's own part of the parity report (logits, long context and greedy tokens are
    parity.session_checks, as for every backend): every kernel's output against the interpreter (one
    prefill chunk and one decode step, under the default lists and each profile's), and top-1
    agreement with fp32. Runs the files in DIST (what the browser loads)."""
    from ..interpreter import Session
    from ..parity import TOLERANCES, _torch_logits, metrics

    s = WgpuSession.from_dist(dist, profile="auto")
    checks = {}
    # per kernel, under the default lists and every profile's: the value each dispatch group
    # writes, read back from its buffer
    s0 = seqs[0][: s.chunk]
    rows, bad = [], []
    for profile in [None, *s.plan["profiles"]]:
        ps = s if profile == s.profile else WgpuSession.from_dist(dist, profile=profile)
        for ids in (s0[:-1], s0[-1:]):  # prefill, then one decode step on top of it
            probe: dict = {}
            ref = Session(g)
            ref.forward(s0[:-1], probe=probe if len(ids) > 1 else None)
            if len(ids) == 1:
                ref.forward(ids, probe=probe)
            got = ps.probe(ids)
            step = ("decode" if len(ids) == 1 else "prefill") + (f", {profile} profile" if profile else "")
            for name, v in got.items():
                m = metrics(v, probe[name].reshape(len(ids), -1))
                ok = m["rel"] <= TOLERANCES["layer_rel_vs_rq"] and m["cosine"] >= TOLERANCES["layer_cosine_vs_rq"]
                rows.append({"node": name, "step": step, **m, "ok": ok})
                if not ok:
                    bad.append(f"{name} ({step})")
        ps.reset()
    checks["wgpu_kernels_vs_interpreter"] = {"compared": len(rows), "worst_rel": max(r["rel"] for r in rows),
                                            "failing": bad[:5], "ok": not bad}
    if fp32_model is not None:
        agree = total = 0
        for seq in seqs:
            s.reset()
            agree += int((s.forward(seq).argmax(-1) == _torch_logits(fp32_model, seq).argmax(-1)).sum())
            total += len(seq)
        # enforced like the interpreter's vs_fp32 check: only for trained models, see parity.TOLERANCES
        checks["wgpu_vs_fp32"] = {"top1_agreement": agree / total, "positions": total, "ok": True}
    return checks
