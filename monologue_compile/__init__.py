"""Monologue: compile a trained PyTorch GPT into a private, in-browser reasoning chat."""

__version__ = "0.1.0"


def compile(model, tokenizer=None, out_dir="dist", *, quant: str = "int8", sequence_len: int | None = None,
            verify: bool = False, wasm: bool = False) -> dict:
    """Compile any `nn.Module` whose forward takes token ids (B, T) and returns logits (or an object with
    `.logits`, as transformers' models do) into the static site `out_dir`; returns its manifest.

    `tokenizer`: a monologue Tokenizer, its JSON text, a tokenizer.json / tokenizer.pkl path, or None
    (the model then runs from token ids only). `sequence_len`: positions to compile for (default: the
    model's max_position_embeddings / n_positions / block_size / sequence_len, at most 4096)."""
    from .driver import compile_to
    from .frontend.module import from_module

    return compile_to(from_module(model, tokenizer, sequence_len), out_dir, quant, verify=verify, wasm=wasm)
