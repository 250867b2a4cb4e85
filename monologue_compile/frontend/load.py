"""Load a checkpoint into (architecture, config, fp32 state dict, tokenizer) and build its nn.Module.

Three inputs are understood:

1. this project's `checkpoint.pt`: `{"model_config", "model", "tokenizer", "meta"}`;
2. a nanochat checkpoint directory: `model_NNNNNN.pt` (a bare state dict) + `meta_NNNNNN.json`, and
   `tokenizer.pkl` beside it (or in `../tokenizer/`, or given with `--tokenizer`);
3. a bare state dict `.pt` plus `--config` JSON (a GPTConfig dict, or a nanochat meta.json).

Every `torch.load` is `weights_only=True`: a checkpoint is a pickle, and a pickle from a stranger can
run code. One that needs more than tensors and plain containers is refused with the reason.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import MonologueError
from ..files import sha256_file

# Keys torch.compile and DDP put in front of parameter names.
_PREFIXES = ("_orig_mod.", "module.")


@dataclass
class LoadedModel:
    arch: str  # "gpt" (training/gpt.py; nanochat Oct 2025 is this with its defaults)
    config: dict  # GPTConfig.to_dict()
    state_dict: dict[str, torch.Tensor]  # fp32, prefixes stripped
    tokenizer_json: str  # monologue-tokenizer JSON text
    source: dict = field(default_factory=dict)  # {"name": file name, "sha256": ..., "kind": ...}
    factory: Callable | None = None  # state dict -> module, for a module given to the Python API

    def build_module(self, state_dict: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
        """The PyTorch model of this architecture with `state_dict` (default: the checkpoint's) loaded."""
        if self.factory is not None:
            return self.factory(self.state_dict if state_dict is None else state_dict)
        return build_module(self.arch, self.config, self.state_dict if state_dict is None else state_dict)


def build_module(arch: str, config: dict, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    from training.gpt import rotary_tables

    if arch == "hf":
        from .hf import build

        return build(config, state_dict)
    sd = dict(state_dict)
    # A big model is built on the meta device: random-initializing 560M parameters only to overwrite
    # them took minutes. A small one is not: the meta device's first use costs ~3 s of set-up.
    big = sum(v.numel() for v in sd.values()) > 50_000_000
    with torch.device("meta") if big else contextlib.nullcontext():
        if arch == "gpt":
            from training.gpt import GPT, GPTConfig

            model = GPT(GPTConfig.from_dict(config))
            if model.config.tie_embeddings:
                sd.setdefault("lm_head.weight", sd.get("transformer.wte.weight"))
        elif arch == "nanochat":
            from .nanochat import NanochatConfig, NanochatGPT

            model = NanochatGPT(NanochatConfig(**config))
        else:
            raise MonologueError(f"unknown architecture {arch!r}")
    c = model.config
    model.cos, model.sin = rotary_tables(c.sequence_len, c.head_dim, c.rope_theta)  # buffers, never saved
    try:
        # assign: the module's parameters are the checkpoint's tensors, not a second copy (d20 is 2.2 GB)
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as e:  # a shape mismatch: name the first tensor
        line = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise MonologueError(f"state dict does not fit the {arch} model: {line[:200]}") from None
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise MonologueError(f"state dict does not fit the {arch} model with this config: {what}")
    return model.eval()


def load(path: str | Path, tokenizer: str | Path | None = None, config: str | Path | None = None) -> LoadedModel:
    path = Path(path)
    if not path.exists():
        raise MonologueError(f"{path}: no such file or directory")
    if path.is_dir():
        from .hf import is_hf_folder, load_folder

        if is_hf_folder(path):
            return _checked(LoadedModel("hf", *load_folder(path, _hf_tokenizer(path, tokenizer))))
        return _load_nanochat_dir(path, tokenizer)
    obj = _torch_load(path)
    source = {"name": path.name, "sha256": sha256_file(path)}
    if isinstance(obj, dict) and "model_config" in obj and "model" in obj:
        if not isinstance(obj["model"], dict):
            raise MonologueError(f"{path}: 'model' is not a state dict")
        tok = _read_tokenizer(Path(tokenizer)) if tokenizer else obj.get("tokenizer")
        if not tok:
            raise MonologueError(f"{path}: no tokenizer in the checkpoint; give one with --tokenizer")
        cfg = _gpt_config(obj["model_config"], path)
        sd = _clean_state_dict(obj["model"], path)
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        source.update(kind="monologue", trained=bool(meta.get("trained") or meta.get("step")))
        return _checked(LoadedModel("gpt", cfg, sd, _check_tokenizer_json(tok, path), source))
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if config is None:
            raise MonologueError(f"{path}: a bare state dict needs --config (a model config JSON)")
        cfg_obj = _read_json(Path(config))
        cfg_obj = cfg_obj.get("model_config", cfg_obj)
        sd = _clean_state_dict(obj, path)
        if tokenizer is None:
            raise MonologueError(f"{path}: a bare state dict needs --tokenizer (tokenizer.json or tokenizer.pkl)")
        arch, cfg = _arch_and_config(cfg_obj, sd, Path(config))
        return _checked(LoadedModel(arch, cfg, sd, _read_tokenizer(Path(tokenizer)), {**source, "kind": "state_dict"}))
    raise MonologueError(f"{path}: not a Monologue checkpoint (no 'model_config' and 'model') nor a state dict")


def _load_nanochat_dir(d: Path, tokenizer) -> LoadedModel:
    models = sorted(d.glob("model_*.pt"))
    if not models:
        raise MonologueError(f"{d}: no model_NNNNNN.pt in this directory")
    model_path = models[-1]  # the latest step: zero-padded numbers sort as strings
    step = re.sub(r"^model_|\.pt$", "", model_path.name)
    meta_path = d / f"meta_{step}.json"
    if not meta_path.exists():
        raise MonologueError(f"{d}: {model_path.name} has no {meta_path.name} beside it")
    meta = _read_json(meta_path)
    if "model_config" not in meta:
        raise MonologueError(f"{meta_path}: no 'model_config'")
    if tokenizer is None:
        for cand in (d / "tokenizer.pkl", d / "tokenizer.json", d.parent / "tokenizer" / "tokenizer.pkl"):
            if cand.exists():
                tokenizer = cand
                break
        else:
            raise MonologueError(f"{d}: no tokenizer.pkl beside the checkpoint; give one with --tokenizer")
    obj = _torch_load(model_path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MonologueError(f"{model_path}: expected a state dict of tensors")
    sd = _clean_state_dict(obj, model_path)
    arch, cfg = _arch_and_config(meta["model_config"], sd, meta_path)
    source = {"name": f"{d.name}/{model_path.name}", "sha256": sha256_file(model_path), "kind": "nanochat",
              "step": meta.get("step"), "trained": bool(meta.get("step"))}
    return _checked(LoadedModel(arch, cfg, sd, _read_tokenizer(Path(tokenizer)), source))


def _hf_tokenizer(folder: Path, tokenizer) -> str:
    """--tokenizer, or the folder's tokenizer.json when it is in this project's format. transformers'
    tokenizer.json is not read yet (issue 16): without one the model compiles with no tokenizer
    (an empty one in the manifest), which runs from token ids (verify, the runtimes' ABI)."""
    if tokenizer is not None:
        return _read_tokenizer(Path(tokenizer))
    own = folder / "tokenizer.json"
    if own.exists():
        try:
            return _check_tokenizer_json(own.read_text(), own)
        except MonologueError:
            pass
    import click

    click.echo(f"warning: {folder}: no monologue tokenizer (transformers' tokenizer.json is not read yet); "
               "compiling with no tokenizer: the model runs from token ids only", err=True)
    return "{}"


def _arch_and_config(cfg: dict, sd: dict, where: Path) -> tuple[str, dict]:
    """A training/ config as is; a nanochat model_config (sizes only) by the version its keys show."""
    if not isinstance(cfg, dict):
        raise MonologueError(f"{where}: model_config is not a dict")
    if "activation" in cfg or "tie_embeddings" in cfg:  # written by training/: a full GPTConfig
        return "gpt", _gpt_config(cfg, where)
    from .nanochat import detect, is_later

    if "transformer.wte.weight" not in sd:
        raise MonologueError(f"{where}: state dict has no transformer.wte.weight (not a nanochat GPT)")
    if is_later(sd, cfg):
        return "nanochat", detect(sd, cfg).to_dict()
    # Oct 2025: training/gpt.py with nanochat's defaults
    out = {"activation": "relu2", "softcap": 15.0, "rope_theta": 10000.0, "qk_norm": True,
           "tie_embeddings": "lm_head.weight" not in sd}
    out.update({k: v for k, v in cfg.items() if k != "window_pattern"})
    return "gpt", _gpt_config(out, where)


def _gpt_config(d: dict, where: Path) -> dict:
    from training.gpt import GPTConfig

    if not isinstance(d, dict):
        raise MonologueError(f"{where}: model_config is not a dict")
    try:
        return GPTConfig.from_dict(d).to_dict()
    except (TypeError, ValueError) as e:
        raise MonologueError(f"{where}: bad model_config: {e}") from None


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        reason = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise MonologueError(
            f"{path}: refused: loading it needs more than weights_only=True allows (it could run code): "
            f"{reason.strip()[:200]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MonologueError(f"{path}: not a readable checkpoint (truncated or corrupt?): {msg[:200]}") from None


def _clean_state_dict(sd: dict, where: Path) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise MonologueError(f"{where}: state dict entry {k!r} is not a tensor")
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v.detach().to(torch.float32) if v.is_floating_point() else v.detach()
    return out


def _checked(m: LoadedModel) -> LoadedModel:
    for k, v in m.state_dict.items():
        # NaN and Inf survive a sum, and a sum is far cheaper than isfinite on 560M values; only a sum
        # that overflowed needs the full check
        if v.is_floating_point() and not torch.isfinite(v.sum()) and not torch.isfinite(v).all():
            bad = "NaN" if torch.isnan(v).any() else "Inf"
            raise MonologueError(f"weight {k} contains {bad} values; refusing to compile a broken checkpoint")
    if m.arch != "gpt":
        return m  # build_module checks every shape against the module
    expect = _expected_shapes(m.config)
    for k, shape in expect.items():
        if k not in m.state_dict:
            if k == "lm_head.weight" and m.config["tie_embeddings"]:
                continue
            raise MonologueError(f"state dict has no {k} (the config says n_layer={m.config['n_layer']})")
        if tuple(m.state_dict[k].shape) != shape:
            raise MonologueError(f"{k} has shape {tuple(m.state_dict[k].shape)}, the config implies {shape}")
    return m


def _expected_shapes(c: dict) -> dict[str, tuple]:
    C, D = c["n_embd"], c["n_embd"] // c["n_head"]
    H = int(c["mlp_ratio"] * C)
    out = {"transformer.wte.weight": (c["vocab_size"], C), "lm_head.weight": (c["vocab_size"], C)}
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}."
        out.update({p + "attn.c_q.weight": (C, C), p + "attn.c_k.weight": (c["n_kv_head"] * D, C),
                    p + "attn.c_v.weight": (c["n_kv_head"] * D, C), p + "attn.c_proj.weight": (C, C),
                    p + "mlp.c_fc.weight": (H, C), p + "mlp.c_proj.weight": (C, H)})
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MonologueError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MonologueError(f"{path}: not valid JSON: {e}") from None


def _read_tokenizer(path: Path) -> str:
    if not path.exists():
        raise MonologueError(f"{path}: tokenizer file not found")
    if path.suffix == ".json":
        return _check_tokenizer_json(path.read_text(), path)
    try:
        from ..tokenizer import Tokenizer
    except ImportError:
        raise MonologueError(f"{path}: reading a tokenizer.pkl needs monologue_compile.tokenizer") from None
    try:
        return Tokenizer.load(str(path)).to_json()
    except MonologueError:
        raise
    except Exception as e:  # the tokenizer's own loader names what is wrong with the file
        raise MonologueError(f"{path}: cannot read tokenizer: {e}") from None


def _check_tokenizer_json(text: str, where: Path) -> str:
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise MonologueError(f"{where}: tokenizer is not valid JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != "monologue-tokenizer" or "ranks" not in d:
        raise MonologueError(f"{where}: tokenizer is not a monologue-tokenizer JSON")
    return text
