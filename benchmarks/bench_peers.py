"""Our backends beside llama.cpp, ONNX Runtime and PyTorch on the same weights (issue 18, item 1).

    python benchmarks/bench_peers.py --build-llama-cpp          # once: fetch and build llama.cpp (~30 min on 1 core)
    python benchmarks/bench_peers.py [--models llama-30m,qwen2.5-0.5b] [--quants int8,int4-g32] [--rounds 5]
        [--json out.json]

For each model, a Hugging Face folder with random weights (transformers + save_pretrained, f32
safetensors, and a synthetic byte-level BPE tokenizer.json: llama.cpp's converter writes a
vocabulary) is cached under ~/.cache/monologue-peers/models (MONOLOGUE_PEERS_CACHE moves it), then
one interleaved run (monologue_compile/peers.py) times, prompt 128 / generate 64 / greedy / batch 1:
  ours on the folder (`monologue-compile FOLDER -o DIST`): native 1 and 2 threads, wasm, WGSL;
      each further --quants scheme (`--quant int4-g32`) natively at 1 and 2 threads (set beside
      llama.cpp Q4_0: the dec/Q4 column);
  ours on a nanochat-style GPT twin with the same matmul shapes and bytes (same width, heads, KV
      heads, layers, vocabulary and tying; MLP width 1.5x the SwiGLU intermediate size, so its two
      matrices hold as many weights as SwiGLU's three): the project's own architecture builds on
      every backend, so its row stands for ours where the folder does not build yet;
  llama.cpp F32 / Q8_0 / Q4_0, ONNX Runtime int8 and PyTorch eager fp32 on the folder.

llama.cpp comes from the PyPI sdist of llama-cpp-python (LLAMA_CPP_PYTHON below), which vendors
llama.cpp (0.3.36: llama.cpp commit 0c1e570, ggml 0.25.3): `pip download --no-binary :all:` it,
unpack it to ~/.cache/monologue-peers/src, and build llama-bench and llama-quantize with CMake
(Release, GGML_NATIVE, no OpenMP, CMAKE_BUILD_PARALLEL_LEVEL=1 unless set). GGUFs are written by its
own convert_hf_to_gguf.py (needs `sentencepiece`) and llama-quantize. ONNX Runtime needs
`onnxruntime onnx onnxscript` (pip install 'monologue[peers]').
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_hf_sizes import MODELS as HF_MODELS  # noqa: E402

from monologue_compile import peers  # noqa: E402

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"

MODELS = {
    # ~34M parameters (16M of them the tied 32000 x 512 embedding), Llama-2-like vocabulary
    "llama-30m": ("LlamaConfig", dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                                      tie_word_embeddings=True)),
    "qwen2.5-0.5b": HF_MODELS["qwen2.5-0.5b"],
}


def build_llama_cpp() -> None:
    """Fetch the sdist with pip, unpack it, build llama-bench and llama-quantize (cached)."""
    src_root = peers.CACHE / "src"
    src_root.mkdir(parents=True, exist_ok=True)
    name = LLAMA_CPP_PYTHON.replace("==", "-").replace("-", "_", 2)
    tree = src_root / name / "vendor" / "llama.cpp"
    if not tree.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", LLAMA_CPP_PYTHON,
                        "-d", str(src_root)], check=True)
        with tarfile.open(src_root / f"{name}.tar.gz") as t:
            t.extractall(src_root, filter="data")
    link = peers.CACHE / "llama.cpp"
    if not link.exists():
        link.symlink_to(tree)
    build = peers.CACHE / "build"
    subprocess.run(["cmake", "-S", str(tree), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
                    "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON",
                    "-DGGML_OPENMP=OFF"], check=True)
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "1"))
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-bench", "llama-quantize"], check=True, env=env)


def synthetic_tokenizer(folder: Path, vocab: int) -> None:
    """A byte-level BPE tokenizer.json of exactly `vocab` ids: the 256 bytes, merges of byte pairs,
    then of pair + byte, and an end-of-text token last."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = bytes_to_unicode()
    tokens, merges = [chars[i] for i in range(256)], []
    for i in range(vocab - 257):
        left = chars[i // 256] if i < 256 * 256 else tokens[256 + (i - 256 * 256) // 256]
        right = chars[i % 256]
        tokens.append(left + right)
        merges.append((left, right))
    tokens.append("<|endoftext|>")
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(["<|endoftext|>"])
    tk.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                              "eos_token": "<|endoftext|>"}))


def hf_folder(name: str) -> tuple[Path, int]:
    import transformers

    folder = peers.CACHE / "models" / name / "hf"
    cls, kw = MODELS[name]
    config = getattr(transformers, cls)(**kw)
    if not (folder / "tokenizer.json").exists():
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(folder)
        synthetic_tokenizer(folder, config.vocab_size)
        del model
    n = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).parameters())
    return folder, n


def gpt_twin(name: str) -> tuple[Path, dict]:
    """Checkpoint of this project's GPT with the folder's matmul shapes (random weights)."""
    from conftest import write_checkpoint

    from monologue_compile.models.gpt import GPT, GPTConfig

    _, kw = MODELS[name]
    cfg = GPTConfig(sequence_len=peers.PROMPT + peers.STEPS + 64, vocab_size=kw["vocab_size"],
                    n_layer=kw["num_hidden_layers"], n_head=kw["num_attention_heads"],
                    n_kv_head=kw["num_key_value_heads"], n_embd=kw["hidden_size"],
                    mlp_ratio=3 * kw["intermediate_size"] / (2 * kw["hidden_size"]),
                    tie_embeddings=kw.get("tie_word_embeddings", False))
    path = peers.CACHE / "models" / name / "gpt-twin.pt"
    if not path.exists():
        torch.manual_seed(0)
        model = GPT(cfg).init_weights(zero_init_outputs=False).eval()
        write_checkpoint(path, model)  # conftest's byte tokenizer: any vocabulary size
    return path, cfg.to_dict()


def compile_dist(source: Path, dist: Path, wasm: bool = False, quant: str = "int8") -> str | None:
    """`monologue-compile SOURCE -o DIST --quant QUANT` in a child (cached while the compiler's sources are the
    same: a dist from an older compiler would time, or refuse, what that compiler made), with
    runtime.wasm if WASM (the page needs it; Node's row builds its own beside the dist); None, or
    the reason it failed."""
    stamp = dist.parent / f"{dist.name}.compiler"
    want = f"{quant}\n{compiler_sources()}"
    if (dist / "model" / "manifest.json").exists() and stamp.exists() and stamp.read_text() == want:
        return None
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(source), "-o", str(dist),
                        "--quant", quant, *([] if wasm else ["--no-wasm"])], capture_output=True, text=True)
    if r.returncode:
        return ([line for line in r.stderr.splitlines() if line.startswith("error")] or r.stderr.splitlines() or ["?"])[-1]
    stamp.write_text(want)
    return None


def compiler_sources() -> str:
    """A hash of the compiler's Python sources and templates, and of the runtime crate and page it
    copies into a dist (a change to the Rust runtime alone must rebuild runtime.wasm)."""
    import monologue_compile
    from monologue_compile.resources import runtime_rs_dir, templates_dir, web_shell_dir

    h = hashlib.sha256()
    root = Path(monologue_compile.__file__).parent
    files = [*root.rglob("*.py"), *templates_dir().rglob("*.j2"), *(runtime_rs_dir() / "src").rglob("*.rs"),
             *web_shell_dir().rglob("*")]
    for p in sorted(f for f in files if f.is_file()):
        h.update(p.read_bytes())
    return h.hexdigest()


def bench_model(name: str, rounds: int, quants: list[str]) -> tuple[str, dict]:
    log = lambda m: print(f"  [{name} {time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)  # noqa: E731
    folder, n_params = hf_folder(name)
    twin, twin_cfg = gpt_twin(name)
    engines, failed = [], []
    # (label, source, dist, quant, every backend or native only)
    builds = [("ours", folder, folder.parent / "dist", quants[0], True),
              ("ours GPT twin", twin, folder.parent / "dist-gpt-twin", quants[0], True)]
    builds += [("ours", folder, folder.parent / f"dist-{q}", q, False) for q in quants[1:]]
    for label, source, dist, quant, every in builds:
        log(f"compiling {label} {quant}")
        why = compile_dist(source, dist, quant=quant)
        if why:
            failed.append(f"{label} {quant}: could not build: {why[:300]}")
            continue
        log(f"building the runtimes: {label} {quant}")
        e, f = peers.our_engines(dist, label, wasm=every, wgsl=every)
        engines += e
        failed += f
    log("preparing the peers (GGUF, ONNX export)")
    pe, pf = peers.peer_engines(folder, None)
    title = (f"{name}: {n_params / 1e6:.1f}M parameters (random weights), {folder}; GPT twin: "
             f"n_layer {twin_cfg['n_layer']}, n_embd {twin_cfg['n_embd']}, heads {twin_cfg['n_head']}/"
             f"{twin_cfg['n_kv_head']}, MLP ratio {twin_cfg['mlp_ratio']:.3f}, vocab {twin_cfg['vocab_size']}, "
             f"tied {twin_cfg['tie_embeddings']}")
    return peers.compare(engines + pe, failed + pf, rounds, title, log)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per model (best and median)")
    ap.add_argument("--quants", default="int8,int4-g32",
                    help="our schemes: the first on every backend (and the GPT twin), the rest natively")
    ap.add_argument("--build-llama-cpp", action="store_true", help="fetch and build llama.cpp, then exit")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    a = ap.parse_args()
    if a.build_llama_cpp:
        build_llama_cpp()
        return
    results = {}
    for name in a.models.split(","):
        text, results[name] = bench_model(name, a.rounds, a.quants.split(","))
        print(text + "\n", flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
