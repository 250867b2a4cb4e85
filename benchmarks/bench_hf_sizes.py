"""Real-size Hugging Face models with random weights: compile time, peak memory, dist size, decode speed.

    python benchmarks/bench_hf_sizes.py [gpt2-124m smollm2-360m qwen2.5-0.5b qwen3-0.6b gemma3-270m llama3.2-1b]

Each model's published config (sizes only; weights random, saved with `save_pretrained` as f32
safetensors) is compiled with `monologue-compile FOLDER -o DIST --no-wasm` in a child process, so its peak RSS
is the compile's own. Then native and wasm decode tokens/s on DIST (`backends.native.decode_speeds`),
when the Rust runtime could be built for the model. Prints one row per model.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LLAMA3_1B_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192, "rope_theta": 500000.0}

# the published configs' sizes (config.json of each hub model)
MODELS = {
    "gpt2-124m": ("GPT2Config", dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024)),
    "smollm2-360m": ("LlamaConfig", dict(vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                                         num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=8192,
                                         rope_theta=100000.0, tie_word_embeddings=True)),
    "qwen2.5-0.5b": ("Qwen2Config", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                                         tie_word_embeddings=True)),
    "qwen3-0.6b": ("Qwen3Config", dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                       max_position_embeddings=40960, tie_word_embeddings=True)),
    "gemma3-270m": ("Gemma3TextConfig", dict(vocab_size=262144, hidden_size=640, intermediate_size=2048,
                                             num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                                             head_dim=256, sliding_window=512, max_position_embeddings=32768,
                                             layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3)),
    "llama3.2-1b": ("LlamaConfig", dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                                        rope_parameters=LLAMA3_1B_ROPE, tie_word_embeddings=True)),
}


def write_folder(name: str, folder: Path) -> int:
    import transformers

    cls, kw = MODELS[name]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls)(**kw), dtype=torch.float32)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def compile_child(folder: Path, dist: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS GiB, last stderr line) of `monologue-compile folder -o dist`."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(folder), "-o", str(dist),
                        "--no-wasm"],  # runtime.wasm is built by decode_speeds, timed apart
                       capture_output=True, text=True)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB, the largest child so far
    last = (r.stderr.strip().splitlines() or [""])[-1]
    return dt, peak, ("ok" if r.returncode == 0 else f"exit {r.returncode}: {last[:160]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=list(MODELS))
    ap.add_argument("--steps", type=int, default=16)
    args = ap.parse_args()
    print(f"{'model':<14} {'params':>8} {'compile s':>9} {'peak GiB':>8} {'dist MiB':>8} {'native tok/s':>12} "
          f"{'wasm tok/s':>10}  status")
    for name in args.models:
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        try:
            n = write_folder(name, tmp / "hf")
            dt, peak, status = compile_child(tmp / "hf", tmp / "dist")
            size = sum(f.stat().st_size for f in (tmp / "dist").rglob("*") if f.is_file()) / 2**20 \
                if (tmp / "dist").exists() else 0.0
            native = wasm = "-"
            if status == "ok":
                from monologue_compile.backends.native import decode_speeds

                try:
                    sp = decode_speeds(tmp / "dist", steps=args.steps)
                    native, wasm = (f"{sp.get(k, float('nan')):.1f}" for k in ("native_tok_s", "wasm_tok_s"))
                except Exception as e:  # report and go on with the next model
                    native = wasm = f"n/a ({type(e).__name__})"
            print(f"{name:<14} {n / 1e6:>7.0f}M {dt:>9.1f} {peak:>8.2f} {size:>8.1f} {native:>12} {wasm:>10}  {status}",
                  flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
