"""Cached vs uncached reference decoding: tokens/s of GPT.generate with and without the KV cache.

    python benchmarks/bench_generate.py [--preset demo] [--prompt 32] [--new 128]

Both paths decode greedily from the same randomly initialized model and must produce the same
tokens; the ratio is the KV cache's speedup measured in this run.
"""

from __future__ import annotations

import argparse
import time

import torch

from monologue_compile.models.gpt import GPT
from training.presets import get_preset


def timed_generate(model: GPT, prompt: list[int], new_tokens: int, use_cache: bool) -> tuple[list[int], float]:
    start = time.perf_counter()
    out = model.generate(prompt, new_tokens, use_cache=use_cache)
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--prompt", type=int, default=32, help="prompt length in tokens")
    parser.add_argument("--new", type=int, default=128, help="tokens to generate")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = get_preset(args.preset).model
    torch.manual_seed(0)
    # Non-zero output layers, so greedy decoding does not collapse to a single repeated token.
    model = GPT(cfg).init_weights(zero_init_outputs=False).eval()
    prompt = torch.randint(0, cfg.vocab_size, (args.prompt,), generator=torch.Generator().manual_seed(1)).tolist()
    new_tokens = min(args.new, cfg.sequence_len - args.prompt)
    timed_generate(model, prompt, 4, use_cache=True)  # warm-up

    cached, cached_s = timed_generate(model, prompt, new_tokens, use_cache=True)
    uncached, uncached_s = timed_generate(model, prompt, new_tokens, use_cache=False)
    if cached != uncached:
        raise SystemExit("cached and uncached decoding disagree")
    print(f"preset {args.preset}: {model.num_params() / 1e6:.2f}M params, prompt {args.prompt}, {new_tokens} new tokens, "
          f"{args.threads} thread(s)")
    print(f"uncached: {new_tokens / uncached_s:8.1f} tok/s")
    print(f"cached:   {new_tokens / cached_s:8.1f} tok/s")
    print(f"speedup:  {uncached_s / cached_s:8.2f}x")


if __name__ == "__main__":
    main()
