"""One rendering per kernel family and per template switch, for the compile tests.

`target` picks the subgroup spelling: naga (wgpu-py) takes the builtins without a directive,
Tint (Chromium) requires `enable subgroups;` and refuses them without it.
"""

from __future__ import annotations

from monologue_compile.wgsl import kernels as K


def catalog(target: str) -> dict[str, K.Kernel]:
    sg = target  # "naga" | "tint"
    cv = ["catalog"]
    ks: dict[str, K.Kernel] = {
        "matvec": K.matvec_int8(96, 64, covers=cv),
        "matvec_fused": K.matvec_int8(100, 200, group=64, norm=True, bias=True, act="gelu", softcap=15.0,
                                      residual=True, covers=cv),
        "matvec_relu2_at_pos": K.matvec_int8(64, 128, group=128, act="relu2", out_at_pos=True, out_len=640, covers=cv),
        "matvec_silu": K.matvec_int8(32, 64, act="silu", covers=cv),
        "matvec_gelu_tanh": K.matvec_int8(32, 64, act="gelu_tanh", rows=8, wg=256, covers=cv),
        "matvec_unpack_builtin": K.matvec_int8(32, 64, unpack="builtin", covers=cv),
        "matvec_rows_fused": K.matvec_int8(100, 200, group=64, norm=True, bias=True, act="gelu", softcap=15.0,
                                           residual=True, out_at_pos=True, out_len=400, cooperative=False, covers=cv),
        "matvec_subgroups": K.matvec_int8(100, 200, norm=True, subgroups=sg, covers=cv),
        "matmul": K.matmul_int8(32, 64, 64, covers=cv),
        "matmul_fused": K.matmul_int8(40, 70, 200, group=64, norm=True, bias=True, act="relu2", softcap=3.0,
                                      residual=True, out_at_pos=True, out_row_stride=70, covers=cv),
        "matmul_gelu_unpack_builtin": K.matmul_int8(16, 32, 64, act="gelu", unpack="builtin", tile_t=16, mt=1,
                                                    covers=cv),
        "matvec_int4": K.matvec_int8(100, 200, group=32, bits=4, norm=True, residual=True, covers=cv),
        "matvec_rows_int4": K.matvec_int8(100, 200, group=64, bits=4, norm=True, cooperative=False, covers=cv),
        "matmul_int4": K.matmul_int8(40, 70, 200, group=32, bits=4, norm=True, act="relu2", covers=cv),
        "embed": K.embed_int8(8, 100, 64, covers=cv),
        "embed_norm": K.embed_int8(8, 100, 52, norm=True, covers=cv),
        "embed_norm_split_part": K.embed_int8(8, 100, 52, norm=True, row_start=60, n_rows=40, covers=cv),
        "rmsnorm": K.norm(8, 64, covers=cv),
        "layernorm_affine": K.norm(8, 64, kind="layer", weight=True, bias=True, covers=cv),
        "rope_qknorm_inplace": K.rope_qknorm(8, 4, 64, post_scale=1.2, covers=cv),
        "rope_into_cache": K.rope_qknorm(8, 2, 64, qk_norm=False, inplace=False, out_at_pos=True, covers=cv),
        "rope_scale_merged_rows": K.rope_qknorm(8, 2, 64, qk_norm=False, post_scale=1.15, in_offset=256,
                                                in_row_stride=512, covers=cv),
        "rope_parts_q_k_v": K.rope_parts(8, 64, [dict(heads=4, qk_norm=True, post_scale=1.2, out="y0"),
                                                 dict(heads=2, qk_norm=True, post_scale=1.2, in_offset=256, out="y1",
                                                      out_at_pos=True),
                                                 dict(heads=2, rope=False, in_offset=384, out="y2", out_at_pos=True)],
                                         in_row_stride=512, covers=cv),
        "rope_parts_pre_norm": K.rope_parts(8, 64, [dict(heads=4, pre_norm=True, pre_weight="pw0", out="y0"),
                                                    dict(heads=2, pre_norm=True, pre_weight="pw1", in_offset=256, out="y1",
                                                         out_at_pos=True),
                                                    dict(heads=2, rope=False, in_offset=384, out="y2", out_at_pos=True)],
                                            in_row_stride=512, covers=cv),
        "matvec_weighted_norm_glu_prologue": K.matvec_int8(64, 128, norm=True, norm_weight=True, x_offset=8,
                                                           prologue=[{"fn": "silu"}, {"fn": "mul", "operand": 0}],
                                                           prologue_operands=[136], residual=True, covers=cv),
        "matvec_rows_glu_prologue": K.matvec_int8(64, 128, prologue=[{"fn": "gelu"}, {"fn": "mul", "operand": 0}],
                                                  prologue_operands=[128], cooperative=False, covers=cv),
        "matmul_weighted_norm": K.matmul_int8(40, 70, 200, norm=True, norm_weight=True, covers=cv),
        "elementwise_inner_chain": K.elementwise(8, 64, [{"fn": "mul", "operand": 0}, {"fn": "add", "operand": 1}],
                                                 [{"len": 64}, {"inner": {"src": {"len": 64, "row_stride": 64},
                                                                          "steps": [{"fn": "silu"}, {"fn": "mul", "operand": 0}],
                                                                          "operands": [{"len": 64}]}}], covers=cv),
        "matmul_silu": K.matmul_int8(16, 32, 64, act="silu", covers=cv),
        "kv_write_merged_rows": K.kv_write(8, 128, src_offset=512, src_row_stride=768, covers=cv),
        "kv_write": K.kv_write(8, 128, covers=cv),
        "softcap": K.softcap(1000, 15.0, covers=cv),
    }
    # the score terms: Gemma 2's softcap, ALiBi's slopes (Bloom's for 8 heads); GPT-OSS's sinks
    terms = dict(softcap=50.0, alibi=[2.0 ** -(h + 1) for h in range(8)], sinks=[0.25 * h - 1 for h in range(8)])
    for tag, window, kw in (("", None, {}), ("_window", 64, {}), ("_softcap_alibi", 64, terms)):
        part, comb = K.attn_decode(8, 2, 64, 512, window_left=window, covers=cv, **kw)
        ks["attn_decode" + tag] = part
        ks["attn_decode_combine" + tag] = comb
        ks["attn_prefill" + tag] = K.attn_prefill(32, 8, 2, 64, 512, window_left=window, covers=cv, **kw)
        ks["attn_decode_per_head" + tag] = K.attn_decode(8, 2, 64, 512, window_left=window, cooperative=False,
                                                         covers=cv, **kw)[0]
    for i, st in enumerate(K.argmax(70000, covers=cv), 1):
        ks[f"argmax_{i}"] = st
    for i, st in enumerate(K.argmax(70000, cooperative=False, covers=cv), 1):
        ks[f"argmax_scan_{i}"] = st
    for i, st in enumerate(K.topk(70000, 64, covers=cv), 1):
        ks[f"topk_{i}"] = st
    # nanochat d20 shapes (C 1280, 10 heads of 128, MLP 5120, vocab 65536, context 2048): the
    # constructors' limit checks pass and both compilers take them.
    ks["d20_lm_head"] = K.matvec_int8(65536, 1280, norm=True, softcap=15.0, subgroups=sg, covers=cv)
    ks["d20_mlp_fc"] = K.matvec_int8(5120, 1280, norm=True, act="relu2", covers=cv)
    ks["d20_mlp_proj"] = K.matvec_int8(1280, 5120, residual=True, covers=cv)
    ks["d20_lm_head_per_invocation"] = K.matvec_int8(65536, 1280, norm=True, softcap=15.0, cooperative=False, rows=8,
                                                     wg=16, covers=cv)
    ks["d20_attn_decode_per_head"] = K.attn_decode(10, 10, 128, 2048, cooperative=False, covers=cv)[0]
    ks["d20_prefill_fc"] = K.matmul_int8(512, 5120, 1280, norm=True, act="relu2", covers=cv)
    ks["d20_attn_prefill"] = K.attn_prefill(512, 10, 10, 128, 2048, covers=cv)  # block 8: 16 no longer fits
    ks["d20_attn_decode"] = K.attn_decode(10, 10, 128, 2048, covers=cv)[0]
    ks["d20_embed"] = K.embed_int8(512, 65536, 1280, norm=True, covers=cv)
    return ks


def needs(kernel: K.Kernel) -> list[str]:
    """What a kernel needs beyond core WebGPU: device features and WGSL language extensions."""
    out = list(kernel.features)
    if "requires packed_4x8_integer_dot_product;" in kernel.wgsl:
        out.append("wgsl:packed_4x8_integer_dot_product")
    return out
