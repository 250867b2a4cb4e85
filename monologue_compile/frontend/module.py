"""Any `nn.Module` whose forward takes token ids (B, T) and returns logits, or an object with `.logits`
(a transformers model, a user's own nanoGPT), as a `LoadedModel`: the Python API's input."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import MonologueError
from .hf import CausalLMLogits, _checkpoint_names


def _sequence_len(model: nn.Module) -> int | None:
    from .hf import MAX_SEQUENCE_LEN

    cfg = getattr(model, "config", None)
    for holder in (cfg, model):
        for key in ("max_position_embeddings", "n_positions", "block_size", "sequence_len"):
            v = getattr(holder, key, None) if holder is not None else None
            if isinstance(v, int) and v > 0:
                return min(v, MAX_SEQUENCE_LEN)
    return None


def _tokenizer_json(tokenizer) -> str:
    from .load import NO_TOKENIZER, _check_tokenizer_json, _read_tokenizer

    if tokenizer is None:
        return NO_TOKENIZER
    if hasattr(tokenizer, "to_json"):  # monologue_compile.tokenizer.Tokenizer
        return tokenizer.to_json()
    if isinstance(tokenizer, str) and tokenizer.lstrip().startswith("{"):
        return _check_tokenizer_json(tokenizer, Path("<tokenizer>"))
    return _read_tokenizer(Path(tokenizer))


def from_module(model: nn.Module, tokenizer=None, sequence_len: int | None = None):
    from .load import LoadedModel

    if not isinstance(model, nn.Module):
        raise MonologueError(f"compile() takes an nn.Module, got {type(model).__name__}")
    seq = sequence_len or _sequence_len(model)
    if not seq:
        raise MonologueError(f"{type(model).__name__}: give sequence_len= (no max_position_embeddings, n_positions, "
                             "block_size or sequence_len on the model)")
    wrapper = CausalLMLogits(model.eval(), int(seq))
    with torch.no_grad():
        vocab = int(wrapper(torch.zeros(1, 1, dtype=torch.long)).shape[-1])
    sd = {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in model.state_dict().items()}
    params = {k for k, _ in model.named_parameters(remove_duplicate=False)}

    def factory(state_dict):
        """The model itself, or a copy with other weights (R_q from the IR's names)."""
        if state_dict is sd:
            return wrapper
        other = copy.deepcopy(wrapper)
        other.model.load_state_dict(_checkpoint_names(state_dict, params), strict=False)
        return other

    source = {"name": type(model).__name__, "kind": "module"}
    return LoadedModel("module", {"sequence_len": int(seq), "vocab_size": vocab}, sd, _tokenizer_json(tokenizer), source,
                       factory=factory)


def from_model_code(spec: str, checkpoint, config=None, tokenizer=None, sequence_len: int | None = None):
    """`--model-code path.py:Name`: the user's own model code (their file, run because they named it)
    called as Name(**config) — config from --config JSON, else a checkpoint's `model_args` (nanoGPT's
    ckpt.pt) — with the checkpoint's weights (a .pt state dict read weights_only, or .safetensors)."""
    import importlib.util
    import json

    from .load import _clean_state_dict, _torch_load

    path, _, name = spec.rpartition(":")
    if not path or not name or not Path(path).is_file():
        raise MonologueError(f"--model-code {spec}: expected path/to/file.py:Name of an existing file")
    mod_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    mod = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(mod)
    except Exception as e:  # the user's own code: say where it broke, in one line
        raise MonologueError(f"--model-code {path}: importing it failed: {type(e).__name__}: {e}") from None
    make = getattr(mod, name, None)
    if not callable(make):
        raise MonologueError(f"--model-code {spec}: {path} defines no {name}")
    ckpt = Path(checkpoint)
    if ckpt.suffix == ".safetensors":
        from .hf import read_weights

        obj, args = read_weights([ckpt]), {}
    else:
        obj = _torch_load(ckpt)
        args = obj.get("model_args", {}) if isinstance(obj, dict) else {}
        obj = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if not isinstance(obj, dict):
        raise MonologueError(f"{ckpt}: expected a state dict (or a dict with one under 'model')")
    sd = _clean_state_dict(obj, ckpt)
    if config is not None:
        try:
            args = json.loads(Path(config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise MonologueError(f"{config}: not a readable JSON config: {e}") from None
    try:
        model = make(**args)
    except Exception as e:
        raise MonologueError(f"--model-code {spec}: {name}(**{sorted(args)}) failed: {type(e).__name__}: {e}") from None
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise MonologueError(f"{ckpt}: does not fit {name}: {str(e).splitlines()[0][:200]}") from None
    loaded = from_module(model, tokenizer, sequence_len)
    loaded.source = {"name": ckpt.name, "kind": "model-code", "code": Path(path).name + ":" + name}
    return loaded
