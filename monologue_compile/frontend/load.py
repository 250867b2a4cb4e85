"""Load a checkpoint into (architecture, config, fp32 state dict, tokenizer) and build its nn.Module.

Three inputs are understood:

1. this project's `checkpoint.pt`: `{"model_config", "model", "tokenizer", "meta"}`;
2. a nanochat checkpoint: its folder (`*_checkpoints/<tag>/`, the latest step) or one `model_NNNNNN.pt`
   (a bare state dict) with `meta_NNNNNN.json` beside it, and `tokenizer.pkl` beside it, in
   `../tokenizer/`, or where nanochat keeps it, `../../tokenizer/` (or given with `--tokenizer`);
3. a bare state dict `.pt` plus `--config` JSON (a GPTConfig dict, or a nanochat meta.json).

Every `torch.load` is `weights_only=True`: a checkpoint is a pickle, and a pickle from a stranger can
run code. One that needs more than tensors and plain containers is refused with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import MonologueError
from ..files import sha256_file
from ..models.gpt import GPT, GPTConfig, rotary_tables
from ..models.nanochat import NanochatConfig, NanochatGPT
from ..schema import check_model_config, json_loads

# Keys torch.compile and DDP put in front of parameter names.
_PREFIXES = ("_orig_mod.", "module.")


# The tokenizer JSON of a model compiled without one: it runs from token ids only (verify, the ABI).
NO_TOKENIZER = "{}"


@dataclass
class LoadedModel:
    arch: str  # "gpt" (models/gpt.py; nanochat Oct 2025 is this with its defaults)
    config: dict  # GPTConfig.to_dict()
    state_dict: dict[str, torch.Tensor]  # fp32, prefixes stripped
    tokenizer_json: str  # monologue-tokenizer JSON text
    source: dict = field(default_factory=dict)  # {"name": file name, "sha256": ..., "kind": ...}
    # config keys the checkpoint cannot show -> what was assumed (and how to say otherwise)
    assumed: dict[str, str] = field(default_factory=dict)
    factory: Callable | None = None  # state dict -> module, for a module given to the Python API

    @property
    def has_tokenizer(self) -> bool:
        return self.tokenizer_json != NO_TOKENIZER
    # a Hugging Face folder's chat side: its chat template, special-token strings and eos ids
    chat: dict = field(default_factory=dict)

    def build_module(self, state_dict: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
        """The PyTorch model of this architecture with `state_dict` (default: the checkpoint's) loaded."""
        if self.factory is not None:
            return self.factory(self.state_dict if state_dict is None else state_dict)
        if self.arch == "hf" and state_dict is not None:
            from .hf import build

            return build(self.config, state_dict, fallback=self.state_dict)  # R_q: what lowering folded, as loaded
        return build_module(self.arch, self.config, self.state_dict if state_dict is None else state_dict)


def build_module(arch: str, config: dict, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    if arch == "hf":
        from .hf import build

        return build(config, state_dict)
    sd = dict(state_dict)
    # A big model is built on the meta device: random-initializing 560M parameters only to overwrite
    # them took minutes. A small one is not: the meta device's first use costs ~3 s of set-up.
    big = sum(v.numel() for v in sd.values()) > 50_000_000
    with torch.device("meta") if big else contextlib.nullcontext():
        if arch == "gpt":
            model = GPT(GPTConfig.from_dict(config))
            if model.config.tie_embeddings:
                sd.setdefault("lm_head.weight", sd.get("transformer.wte.weight"))
        elif arch == "nanochat":
            model = NanochatGPT(NanochatConfig(**config))
        else:
            raise MonologueError(f"unknown architecture {arch!r}")
    c = model.config
    model.cos, model.sin = rotary_tables(c.sequence_len, c.head_dim, c.rope_theta, c.rope_bf16)  # buffers, never saved
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


def load(path: str | Path, tokenizer: str | Path | None = None, config: str | Path | None = None,
         overrides: dict | None = None) -> LoadedModel:
    """`overrides`: config values that replace the loaded or detected ones (`--softcap`, `--set`)."""
    m = _load(Path(path), tokenizer, config)
    return overridden(m, overrides) if overrides else m


def _load(path: Path, tokenizer, config) -> LoadedModel:
    try:
        if not path.exists():
            raise MonologueError(f"{path}: no such file or directory")
    except OSError as e:  # a name too long, a loop of links
        raise MonologueError(f"{path}: {e.strerror or e}") from None
    if path.is_dir():
        from .hf import chat_inputs, is_hf_folder, load_folder

        if is_hf_folder(path):
            return _checked(LoadedModel("hf", *load_folder(path, _hf_tokenizer(path, tokenizer)), chat=chat_inputs(path)))
        return _load_nanochat(_latest_model(path), tokenizer)
    if re.fullmatch(r"model_\d+\.pt", path.name) and (path.parent / _meta_name(path)).exists():
        return _load_nanochat(path, tokenizer)
    obj = _torch_load(path)
    source = {"name": path.name, "sha256": sha256_file(path)}
    if isinstance(obj, dict) and "model_config" in obj and "model" in obj:
        if not isinstance(obj["model"], dict):
            raise MonologueError(f"{path}: 'model' is not a state dict")
        tok = _read_tokenizer(Path(tokenizer)) if tokenizer else obj.get("tokenizer")
        if not tok:
            raise MonologueError(f"{path}: no tokenizer in the checkpoint; give one with --tokenizer")
        if not isinstance(tok, str):
            raise MonologueError(f"{path}: the checkpoint's tokenizer is a {type(tok).__name__}, not JSON text")
        cfg = _gpt_config(obj["model_config"], path)
        sd = _clean_state_dict(obj["model"], path)
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        source.update(kind="monologue", trained=bool(meta.get("trained") or meta.get("step")), **_about(meta, path))
        return _checked(LoadedModel("gpt", cfg, sd, _check_tokenizer_json(tok, path), source))
    obj = state_dict_in(obj, path)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if config is None:
            raise MonologueError(f"{path}: a bare state dict needs --config (a model config JSON)")
        cfg_obj = _read_json(Path(config))
        cfg_obj = cfg_obj.get("model_config", cfg_obj)
        sd = _clean_state_dict(obj, path)
        if tokenizer is None:
            raise MonologueError(f"{path}: a bare state dict needs --tokenizer (tokenizer.json or tokenizer.pkl)")
        arch, cfg, assumed = _arch_and_config(cfg_obj, sd, Path(config))
        return _checked(LoadedModel(arch, cfg, sd, _read_tokenizer(Path(tokenizer)), {**source, "kind": "state_dict"},
                                    assumed))
    raise MonologueError(f"{path}: not a Monologue checkpoint (no 'model_config' and 'model') nor a state dict")


def _about(meta: dict, where: Path) -> dict:
    """{"about": ...} from a checkpoint's meta, or {}: the trainer's words on what the model can do
    (a summary and example questions), which the chat page shows as plain text."""
    about = meta.get("about")
    if about is None:
        return {}
    ok = (isinstance(about, dict) and set(about) == {"summary", "examples"} and isinstance(about["summary"], str)
          and isinstance(about["examples"], list) and all(isinstance(e, str) for e in about["examples"]))
    if not ok:
        raise MonologueError(f"{where}: meta 'about' must be {{\"summary\": text, \"examples\": [text, ...]}}")
    return {"about": {"summary": about["summary"], "examples": list(about["examples"])}}


def _meta_name(model_path: Path) -> str:
    return re.sub(r"^model_(\d+)\.pt$", r"meta_\1.json", model_path.name)


def _latest_model(d: Path) -> Path:
    models = [p for p in d.glob("model_*.pt") if re.fullmatch(r"model_\d+\.pt", p.name)]
    if not models:
        tags = sorted(p.parent.name for p in d.glob("*/model_*.pt"))
        hint = f"; its checkpoint folders: {', '.join(tags)}" if tags else ""
        raise MonologueError(f"{d}: no model_NNNNNN.pt in this directory{hint}")
    return max(models, key=lambda p: int(p.name[6:-3]))  # the latest step


def _load_nanochat(model_path: Path, tokenizer) -> LoadedModel:
    d = model_path.parent
    meta_path = d / _meta_name(model_path)
    if not meta_path.exists():
        raise MonologueError(f"{d}: {model_path.name} has no {meta_path.name} beside it")
    meta = _read_json(meta_path)
    if not isinstance(meta, dict) or "model_config" not in meta:
        raise MonologueError(f"{meta_path}: no 'model_config'")
    if tokenizer is None:
        # beside it, then nanochat's $NANOCHAT_BASE_DIR/tokenizer/ seen from {base,mid,...}_checkpoints/<tag>/
        places = (d / "tokenizer.pkl", d / "tokenizer.json", d.parent / "tokenizer" / "tokenizer.pkl",
                  d.parent.parent / "tokenizer" / "tokenizer.pkl")
        tokenizer = next((p for p in places if p.exists()), None)
        if tokenizer is None:
            raise MonologueError(f"{d}: no tokenizer.pkl beside the checkpoint, in ../tokenizer/ or ../../tokenizer/; "
                                 f"give one with --tokenizer")
    obj = _torch_load(model_path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MonologueError(f"{model_path}: expected a state dict of tensors")
    sd = _clean_state_dict(obj, model_path)
    arch, cfg, assumed = _arch_and_config(meta["model_config"], sd, meta_path)
    source = {"name": f"{d.name}/{model_path.name}", "sha256": sha256_file(model_path), "kind": "nanochat",
              "step": meta.get("step"), "trained": bool(meta.get("step"))}
    return _checked(LoadedModel(arch, cfg, sd, _read_tokenizer(Path(tokenizer)), source, assumed))


def _hf_tokenizer(folder: Path, tokenizer) -> str:
    """--tokenizer, else the folder's own tokenizer.json (Hugging Face's format or this project's).
    A folder without one compiles with no tokenizer (an empty one in the manifest): the model then
    runs from token ids only (verify, the runtimes' ABI), which the warning says."""
    if tokenizer is not None:
        return _read_tokenizer(Path(tokenizer))
    own = folder / "tokenizer.json"
    if own.exists():
        return _read_tokenizer(own)
    why = ""
    # older folders (GPT-Neo, OPT, TinyStories) have only GPT-2's vocab.json + merges.txt, or a tokenizer.model
    if any((folder / name).exists() for name in ("vocab.json", "merges.txt", "tokenizer.model", "vocab.txt")):
        from ..tokenizer import built_by_transformers

        try:
            built = built_by_transformers(folder, folder)
        except MonologueError as e:
            why = f" ({e})"
        else:
            return _check_tokenizer_json(built, folder / "tokenizer files")
    import click

    click.echo(f"warning: {folder}: no tokenizer.json and no --tokenizer{why}; compiling with no tokenizer: "
               "the model runs from token ids only", err=True)
    return NO_TOKENIZER


def _arch_and_config(cfg: dict, sd: dict, where: Path) -> tuple[str, dict, dict]:
    """A training/ config as is; a nanochat model_config (sizes only) by the version its keys show.
    Also returns what detection had to assume (see nanochat.detect)."""
    if not isinstance(cfg, dict):
        raise MonologueError(f"{where}: model_config is not a dict")
    check_model_config(cfg, where)
    if "activation" in cfg or "tie_embeddings" in cfg:  # written by training/: a full GPTConfig
        return "gpt", _gpt_config(cfg, where), {}
    from .nanochat import check_keys, detect, is_later

    if "transformer.wte.weight" not in sd:
        raise MonologueError(f"{where}: state dict has no transformer.wte.weight (not a nanochat GPT)")
    if is_later(sd, cfg):
        c, assumed = detect(sd, cfg)
        return "nanochat", c.to_dict(), assumed
    check_keys(sd)
    # Oct 2025: models/gpt.py with nanochat's defaults (and its bf16 rotary tables)
    out = {"activation": "relu2", "softcap": 15.0, "rope_theta": 10000.0, "rope_bf16": True, "qk_norm": True,
           "tie_embeddings": "lm_head.weight" not in sd}
    out.update({k: v for k, v in cfg.items() if k != "window_pattern"})
    return "gpt", _gpt_config(out, where), {}


def overridden(m: LoadedModel, overrides: dict) -> LoadedModel:
    """m with config values replaced; an unknown key or a value the config refuses is a one-line error."""
    from dataclasses import fields

    cls = NanochatConfig if m.arch == "nanochat" else GPTConfig
    known = {f.name: f.type for f in fields(cls)}
    cfg = dict(m.config)
    for k, v in overrides.items():
        if k not in known:
            raise MonologueError(f"--set {k}: not a {m.arch} config key; known: {', '.join(sorted(known))}")
        old = cfg.get(k)
        if isinstance(old, bool) and not isinstance(v, bool) or isinstance(old, (int, float)) and not isinstance(
                v, (int, float)) or isinstance(old, str) and not isinstance(v, str):
            raise MonologueError(f"--set {k}={json.dumps(v)}: expected a value like {json.dumps(old)}")
        cfg[k] = float(v) if isinstance(old, float) else v
    try:
        cfg = cls(**cfg).to_dict()
    except (TypeError, ValueError) as e:
        raise MonologueError(f"--set: {e}") from None
    assumed = {k: v for k, v in m.assumed.items() if k not in overrides}
    source = {**m.source, "overrides": dict(overrides)}
    return dataclasses.replace(m, config=cfg, source=source, assumed=assumed)


def _gpt_config(d: dict, where: Path) -> dict:
    if not isinstance(d, dict):
        raise MonologueError(f"{where}: model_config is not a dict")
    check_model_config(d, where)
    try:
        return check_model_config(GPTConfig.from_dict(d).to_dict(), where)
    except (TypeError, ValueError) as e:
        raise MonologueError(f"{where}: bad model_config: {e}") from None


def _torch_load(path: Path):
    if not path.is_file():  # a FIFO would block the read forever, a device never end
        raise MonologueError(f"{path}: not a regular file")
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickles are not the user's business:
            warnings.simplefilter("ignore")  # the file loads or is refused below, in one line
            return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        reason = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        if found := re.search(r"GLOBAL ([\w.]+)", reason):  # torch.save(model): the object, not its weights
            raise MonologueError(f"{path}: refused: it pickles the object {found.group(1)}, which only running code "
                                 "could rebuild (checkpoints are read with weights_only=True); save the model's "
                                 "state_dict() instead") from None
        raise MonologueError(
            f"{path}: refused: loading it needs more than weights_only=True allows (it could run code): "
            f"{reason.strip()[:200]}"
        ) from None
    except Exception as e:  # noqa: BLE001 -- whatever a malformed pickle or zip raises
        # (IndexError, KeyError, struct.error, ...): the file is at fault, not the loader
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MonologueError(f"{path}: not a readable checkpoint (truncated or corrupt?): {msg[:200]}") from None


# Where training scripts put the weights in a checkpoint dict, in order of preference: nanoGPT's and
# litgpt's "model", Lightning's "state_dict", PyTorch's tutorial's "model_state_dict"
_WEIGHT_KEYS = ("model", "state_dict", "model_state_dict")


def state_dict_in(obj, where: Path):
    """The state dict a checkpoint holds: the object itself, or the one entry of a checkpoint dict that
    is a dict of tensors (beside an optimizer's state, an epoch, a config), else the first of
    _WEIGHT_KEYS that is. An object holding none is returned as it is, for the caller to refuse."""
    if not isinstance(obj, dict) or all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    found = [k for k, v in obj.items()
             if isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values())]
    if len(found) > 1:
        found = [k for k in _WEIGHT_KEYS if k in found][:1] or found
    if len(found) > 1:
        raise MonologueError(f"{where}: holds several state dicts ({', '.join(map(repr, found))}); save the one to "
                             "compile on its own")
    return obj[found[0]] if found else obj


def _clean_state_dict(sd: dict, where: Path, buffers: bool = False) -> dict[str, torch.Tensor]:
    """`buffers`: integer and bool tensors (a model's own masks, saved with its weights) are kept as
    they are, for a model class to load; otherwise only floating-point weights are."""
    out: dict[str, torch.Tensor] = {}
    original: dict[str, str] = {}
    for key, v in sd.items():
        if not isinstance(key, str):
            raise MonologueError(f"{where}: state dict key {key!r:.60} is not a string")
        if not isinstance(v, torch.Tensor):
            raise MonologueError(f"{where}: state dict entry {key!r:.80} is not a tensor")
        if not v.is_floating_point() and not buffers:
            raise MonologueError(f"{where}: weight {key:.80} has dtype {str(v.dtype).replace('torch.', '')}; "
                                 "only floating-point weights can be compiled")
        k = key
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        if k in out:  # e.g. both "lm_head.weight" and "_orig_mod.lm_head.weight": which one is meant?
            raise MonologueError(f"{where}: state dict keys {original[k]!r:.80} and {key!r:.80} are the same "
                                 "weight once the torch.compile / DDP prefix is stripped")
        out[k], original[k] = v.detach().to(torch.float32) if v.is_floating_point() else v.detach(), key
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
    if path.exists() and not path.is_file():
        raise MonologueError(f"{path}: not a regular file")
    try:
        d = json_loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MonologueError(f"{path}: no such file") from None
    except OSError as e:
        raise MonologueError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:  # not JSON, not UTF-8, NaN or Infinity
        raise MonologueError(f"{path}: not valid JSON: {e}") from None
    except RecursionError:
        raise MonologueError(f"{path}: not valid JSON: nested too deeply") from None
    if not isinstance(d, dict):
        raise MonologueError(f"{path}: expected a JSON object, not {type(d).__name__}")
    return d


def _read_tokenizer(path: Path) -> str:
    """The tokenizer at `path` (any name, any supported format), fully validated by the one Rust
    reader, as the tokenizer.json the dist carries."""
    from ..tokenizer import Tokenizer

    if not path.exists():
        raise MonologueError(f"{path}: tokenizer file not found")
    if not path.is_file():
        raise MonologueError(f"{path}: the tokenizer is not a regular file")
    return Tokenizer.load(path).to_json()


def _check_tokenizer_json(text, where: Path) -> str:
    """A checkpoint's embedded tokenizer gets the same checks as a tokenizer file."""
    from ..tokenizer import Tokenizer

    if not isinstance(text, str):
        raise MonologueError(f"{where}: the checkpoint's tokenizer is not a JSON string")
    try:
        return Tokenizer.from_json(text).to_json()
    except MonologueError as e:
        raise MonologueError(f"{where}: tokenizer: {e}") from None
