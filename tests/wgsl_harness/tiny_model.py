"""A tiny nanochat GPT run end to end with the WGSL kernels: the kernels compose (layouts, KV cache,
fusions) into the model that monologue_compile/models/gpt.py defines.

This is a test fixture, not the plan executor: it hand-wires the dispatch list the compiler will
emit, in the same style (pipelines and bind groups built once, one command buffer and one submit per
step, only the `step` uniform rewritten).
"""

from __future__ import annotations

import numpy as np

from monologue_compile.wgsl import device as wdev
from monologue_compile.wgsl import kernels as kern
from wgsl_harness import reference as ref

LINEARS = ("attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def quantize_model(model, group: int = 0):
    """Quantize every matrix of a monologue_compile.models.gpt.GPT in place to its dequantized int8 value (R_q).

    Returns {state-dict key: (packed u32, scale, group)} for the GPU.
    """
    import torch

    packed = {}
    sd = model.state_dict()
    for key, w in sd.items():
        if w.ndim != 2:
            continue
        g = 0 if key == "transformer.wte.weight" else group
        q, scale = ref.quantize(w.double().numpy(), g)
        with torch.no_grad():
            w.copy_(torch.from_numpy(ref.dequantize(q, scale, g)))
        packed[key] = (ref.pack_int8(q, g), scale, g)
    return packed


class TinyWgslModel:
    def __init__(self, config, packed, chunk: int, max_seq: int, dev=None):
        c = config
        self.c, self.chunk, self.S = c, chunk, max_seq
        C, H, Hkv, D, V, F = c.n_embd, c.n_head, c.n_kv_head, c.head_dim, c.vocab_size, c.mlp_hidden
        self.dev = dev or wdev.get_device()
        mk = lambda a: wdev.make_buffer(self.dev, a)  # noqa: E731
        empty = lambda n: wdev.make_buffer(self.dev, nbytes=4 * n)  # noqa: E731
        cos, sin = ref.rope_tables(max_seq, D, c.rope_theta)
        b = {"cos": mk(cos), "sin": mk(sin), "ids": empty(chunk), "x": empty(chunk * C), "q": empty(chunk * C),
             "k": empty(chunk * Hkv * D), "att": empty(chunk * C), "h": empty(chunk * F), "logits": empty(chunk * V),
             "am": empty(4)}
        self.step = wdev.make_buffer(self.dev, np.zeros(4, np.uint32), uniform=True)
        b["step"] = self.step
        for key, (w, s, _) in packed.items():
            b[key + ".w"], b[key + ".s"] = mk(w), mk(s)
        for i in range(c.n_layer):
            b[f"kc{i}"], b[f"vc{i}"] = empty(max_seq * Hkv * D), empty(max_seq * Hkv * D)
        self.b = b
        self.programs = {}
        self.plans = {"prefill": self._plan(packed, chunk), "decode": self._plan(packed, 1)}

    def _add(self, plan, kernel, **buffers):
        prog = self.programs.get(kernel.wgsl)
        if prog is None:
            prog = self.programs[kernel.wgsl] = wdev.Program(kernel, self.dev)
        bufs = {name: self.b[buffers.get(name, name)] for name in (bb.name for bb in kernel.bindings)}
        plan.append((prog, prog.bind(bufs)))

    def _linear(self, plan, T, key, packed, x, y, **opts):
        w, s, g = packed[key]
        N, K = w.shape[0], self._in_features[key]
        if T == 1:
            k = kern.matvec_int8(N, K, group=g, covers=[key], out_at_pos=opts.pop("out_at_pos", False), **opts)
        else:
            k = kern.matmul_int8(T, N, K, group=g, covers=[key], **opts)
        self._add(plan, k, w=key + ".w", scale=key + ".s", x=x, y=y)

    def _plan(self, packed, T):
        c = self.c
        C, H, Hkv, D, V = c.n_embd, c.n_head, c.n_kv_head, c.head_dim, c.vocab_size
        self._in_features = {key: (C if not key.endswith("mlp.c_proj.weight") else c.mlp_hidden) for key in packed}
        plan = []
        self._add(plan, kern.embed_int8(T, V, C, norm=True, covers=["wte", "norm"]), table="transformer.wte.weight.w",
                  scale="transformer.wte.weight.s", y="x")
        for i in range(c.n_layer):
            p = f"transformer.h.{i}."
            self._linear(plan, T, p + "attn.c_q.weight", packed, "x", "q", norm=True)
            self._linear(plan, T, p + "attn.c_k.weight", packed, "x", "k", norm=True)
            self._linear(plan, T, p + "attn.c_v.weight", packed, "x", f"vc{i}", norm=True, out_at_pos=True)
            self._add(plan, kern.rope_qknorm(T, H, D, qk_norm=c.qk_norm, covers=["rope(q)", "norm(q)"]), x="q")
            self._add(plan, kern.rope_qknorm(T, Hkv, D, qk_norm=c.qk_norm, inplace=False, out_at_pos=True,
                                          covers=["rope(k)", "norm(k)", "kv_cache.k"]), x="k", y=f"kc{i}")
            if T == 1:
                part, comb = kern.attn_decode(H, Hkv, D, self.S, chunk=16, covers=[p + "attn.sdpa"])
                self.b.setdefault(f"ml{i}", wdev.make_buffer(self.dev, nbytes=4 * part.info["ml"]))
                self.b.setdefault(f"o{i}", wdev.make_buffer(self.dev, nbytes=4 * part.info["o"]))
                self._add(plan, part, q="q", k=f"kc{i}", v=f"vc{i}", ml=f"ml{i}", o=f"o{i}")
                self._add(plan, comb, ml=f"ml{i}", o=f"o{i}", out="att")
            else:
                self._add(plan, kern.attn_prefill(T, H, Hkv, D, self.S, covers=[p + "attn.sdpa"]),
                          q="q", k=f"kc{i}", v=f"vc{i}", out="att")
            self._linear(plan, T, p + "attn.c_proj.weight", packed, "att", "x", residual=True)
            self._linear(plan, T, p + "mlp.c_fc.weight", packed, "x", "h", norm=True, act=c.activation)
            self._linear(plan, T, p + "mlp.c_proj.weight", packed, "h", "x", residual=True)
        self._linear(plan, T, "lm_head.weight", packed, "x", "logits", norm=True, softcap=c.softcap)
        if T == 1:
            s1, s2 = kern.argmax(V, wg=64, per_thread=4, covers=["argmax"])
            self.b.setdefault("pairs", wdev.make_buffer(self.dev, nbytes=4 * s1.info["pairs"]))
            self._add(plan, s1, x="logits")
            self._add(plan, s2, out="am")
        return plan

    def _run(self, kind, ids, pos):
        self.dev.queue.write_buffer(self.b["ids"], 0, np.asarray(ids, np.uint32).tobytes())
        self.dev.queue.write_buffer(self.step, 0, wdev.step_bytes(pos, len(ids)))
        enc = self.dev.create_command_encoder()
        p = enc.begin_compute_pass()
        for prog, bg in self.plans[kind]:
            p.set_pipeline(prog.pipeline)
            p.set_bind_group(0, bg)
            p.dispatch_workgroups(*prog.kernel.workgroups)
        p.end()
        self.dev.queue.submit([enc.finish()])

    def prefill(self, ids, pos):
        """Logits [n, V] for a chunk of n <= chunk tokens at positions pos.."""
        self._run("prefill", ids, pos)
        V = self.c.vocab_size
        raw = self.dev.queue.read_buffer(self.b["logits"], 0, 4 * len(ids) * V)
        return np.frombuffer(raw, np.float32).reshape(len(ids), V)

    def decode(self, token, pos):
        """(logits [V], greedy id) for one token at pos; the id comes from the GPU argmax."""
        self._run("decode", [token], pos)
        V = self.c.vocab_size
        logits = np.frombuffer(self.dev.queue.read_buffer(self.b["logits"], 0, 4 * V), np.float32)
        am = int(np.frombuffer(self.dev.queue.read_buffer(self.b["am"], 0, 4), np.uint32)[0])
        return logits, am
