"""Any `nn.Module` whose forward takes token ids (B, T) and returns logits, or an object with `.logits`
(a transformers model, a user's own nanoGPT), as a `LoadedModel`: the Python API's input."""

from __future__ import annotations

import copy
import dataclasses
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import MonologueError
from .hf import CausalLMLogits, _checkpoint_names
from .last_position import every_position


# Where a model keeps its config, and what its longest sequence is called there: transformers'
# config, nanoGPT's GPTConfig (block_size), llama2.c's ModelArgs (max_seq_len), litgpt's Config, ...
_CONFIG_HOLDERS = ("config", "params", "args", "cfg", "hparams")
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "block_size", "sequence_len", "max_seq_len",
                "max_seq_length", "context_length", "n_ctx", "seq_len")


def _sequence_len(model: nn.Module) -> int | None:
    from .hf import MAX_SEQUENCE_LEN

    holders = [getattr(model, h, None) for h in _CONFIG_HOLDERS] + [model]
    for holder in holders:
        for key in _LENGTH_KEYS:
            v = holder.get(key) if isinstance(holder, dict) else getattr(holder, key, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return min(v, MAX_SEQUENCE_LEN)
    return None


def _in_f32(model: nn.Module) -> nn.Module:
    """The model, or where its weights are bf16 or f16, a copy in f32 (the user's model untouched):
    the compiled model computes in f32, so the reference it is checked against must too."""
    import click

    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    low = sorted({str(t.dtype).replace("torch.", "") for t in tensors if t.dtype != torch.float32})
    if not low:
        return model
    click.echo(f"note: {type(model).__name__} holds {', '.join(low)} weights; compiling a copy in float32 (the "
               "compiled model computes in f32)", err=True)
    return copy.deepcopy(model).float()


# How long a sequence to try a model at, where nothing states its length: past this an attention
# matrix of a larger model's heads costs gigabytes
_LONGEST_TRIED = 1024


def _longest_accepted(model: nn.Module) -> int | None:
    """The longest sequence, up to _LONGEST_TRIED, that the model's forward runs on, found by running
    it (lengths doubled, then the gap halved): what its position table's rows, a mask buffer's size or
    an assert allow. None where it fails at length 1. Said on the terminal: it was not stated."""
    import click

    def runs(t: int) -> bool:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model(torch.zeros(1, t, dtype=torch.long))
            return True
        except Exception:  # noqa: BLE001 -- the user's forward at a length it does not take: any error
            return False

    if not runs(1):
        return None
    ok, bad = 1, None
    while bad is None and ok < _LONGEST_TRIED:
        t = min(2 * ok, _LONGEST_TRIED)
        ok, bad = (t, None) if runs(t) else (ok, t)
    while bad is not None and bad - ok > 1:
        mid = (ok + bad) // 2
        ok, bad = (mid, bad) if runs(mid) else (ok, mid)
    how = "the longest its forward runs on" if bad else f"its forward runs at every length up to {_LONGEST_TRIED}"
    click.echo(f"note: {type(model).__name__} states no longest sequence; compiling for {ok} ({how}); "
               "--set sequence_len=N to choose", err=True)
    return ok


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
    model = _in_f32(model)
    seq = sequence_len or _sequence_len(model) or _longest_accepted(model.eval())
    if not seq:  # its forward fails at length 1: say with what (a start position it needs, say)
        CausalLMLogits(model, 1).logits(torch.zeros(1, 1, dtype=torch.long))
        raise MonologueError(f"{type(model).__name__}: its longest sequence is not on the model or its config "
                             f"({', '.join(_LENGTH_KEYS[:5])}, ...): give sequence_len= (--set sequence_len=N)")
    wrapper = CausalLMLogits(model.eval(), int(seq))
    vocab = int(wrapper.logits(torch.zeros(1, 1, dtype=torch.long)).shape[-1])
    dropped = every_position(wrapper, vocab)
    sd = {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in model.state_dict().items()}
    params = {k for k, _ in model.named_parameters(remove_duplicate=False)}

    def factory(state_dict):
        """The model itself, or a copy with other weights (R_q from the IR's names)."""
        if state_dict is sd:
            return wrapper
        with warnings.catch_warnings():  # deepcopy of an exported graph's tree spec warns of torch's own API
            warnings.simplefilter("ignore", FutureWarning)
            other = copy.deepcopy(wrapper)
        other.model.load_state_dict(_checkpoint_names(state_dict, params), strict=False)
        return other

    source = {"name": type(model).__name__, "kind": "module", **({"last_position_only": dropped} if dropped else {})}
    return LoadedModel("module", {"sequence_len": int(seq), "vocab_size": vocab}, sd, _tokenizer_json(tokenizer), source,
                       factory=factory)


def from_model_code(spec: str, checkpoint, config=None, tokenizer=None, sequence_len: int | None = None):
    """`--model-code path.py:Name`: the user's own model code (their file, run because they named it)
    called as Name(**config) — config from --config JSON, else a checkpoint's `model_args` (nanoGPT's
    ckpt.pt) — with the checkpoint's weights (a .pt state dict read weights_only, or .safetensors)."""
    import json

    from .load import _clean_state_dict, state_dict_in

    path, _, name = spec.rpartition(":")
    if not path or not name or not Path(path).is_file():
        raise MonologueError(f"--model-code {spec}: expected path/to/file.py:Name of an existing file")
    try:
        mod = _import_user_file(Path(path))
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
        obj = _load_with_own_configs(ckpt, mod)
        args = obj.get("model_args", {}) if isinstance(obj, dict) else {}
        if not args and config is None and isinstance(obj, dict) and dataclasses.is_dataclass(saved := obj.get("config")):
            args = dataclasses.asdict(saved)  # build-nanogpt's {"model", "config": GPTConfig(...)}
        obj = state_dict_in(obj, ckpt)
    if not isinstance(obj, dict):
        raise MonologueError(f"{ckpt}: expected a state dict (or a checkpoint dict holding one)")
    sd = _clean_state_dict(obj, ckpt, buffers=True)
    if config is not None:
        try:
            args = json.loads(Path(config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise MonologueError(f"{config}: not a readable JSON config: {e}") from None
    config_class = _config_class(make, args, mod, spec)
    call = f"{name}({config_class.__name__}(**{sorted(args)}))" if config_class else f"{name}(**{sorted(args)})"
    try:
        model = make(config_class(**args)) if config_class else make(**args)
    except Exception as e:
        raise MonologueError(f"--model-code {spec}: {call} failed: {type(e).__name__}: {e}") from None
    sd = _prefix_fitted(sd, model.state_dict().keys())
    try:
        fit = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # a size mismatch: torch's lines after the first name the tensors
        detail = "; ".join(ln.strip() for ln in str(e).splitlines()[1:3])
        raise MonologueError(f"{ckpt}: does not fit {name}: {detail[:300]}") from None
    # a buffer the checkpoint lacks is the one the model's constructor made (a mask, a rotary table)
    buffers = {k for k, _ in model.named_buffers()}
    missing = [k for k in fit.missing_keys if k not in buffers]
    if missing or fit.unexpected_keys:
        parts = [f"{what} {len(keys)} (first: {keys[0]})" for what, keys in
                 (("missing", missing), ("unexpected", fit.unexpected_keys)) if keys]
        raise MonologueError(f"{ckpt}: does not fit {name}: " + "; ".join(parts))
    # a length the file sets at module level (the "Let's build GPT" lecture's `block_size = 256`)
    loaded = from_module(model, tokenizer, sequence_len or _sequence_len(model) or _sequence_len(mod))
    loaded.source = {**loaded.source, "name": ckpt.name, "kind": "model-code", "code": Path(path).name + ":" + name}
    return loaded


def _prefix_fitted(sd: dict, expected) -> dict:
    """`sd` with a first name its keys all share and `expected` lacks taken off, as many times as that
    makes it fit (Lightning's "model." of the module that held the model); else as it is."""
    expected = set(expected)
    while not set(sd) <= expected:
        head = {k.partition(".")[0] for k in sd}
        if len(head) != 1 or not all("." in k for k in sd) or head <= {k.partition(".")[0] for k in expected}:
            return sd
        sd = {k.partition(".")[2]: v for k, v in sd.items()}
    return sd


def _import_user_file(file: Path):
    """The user's model file imported as Python imports it in its project: its folder importable
    (modules beside it), and a file inside a package (folders holding __init__.py) under its dotted
    name from the package's root, so `from .utils import` and `from mingpt.utils import` work. A
    folder without __init__.py that the file imports by name (a namespace package) is found too."""
    import importlib.util

    file = file.resolve()
    parts, root = [file.stem], file.parent
    while (root / "__init__.py").is_file():
        parts.insert(0, root.name)
        root = root.parent
    homes = {folder.name: folder.parent for folder in file.parents}
    added = list(dict.fromkeys([str(file.parent), str(root)]))
    sys.path[:0] = added
    try:
        while True:
            mod_spec = importlib.util.spec_from_file_location(".".join(parts), file)
            mod = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod.__name__] = mod  # dataclasses look their module up there
            try:
                mod_spec.loader.exec_module(mod)
                return mod
            except ModuleNotFoundError as e:
                home = homes.pop((e.name or "").partition(".")[0], None)
                if home is None:
                    raise
                sys.path.insert(0, str(home))
                added.append(str(home))
    finally:
        for folder in added:
            sys.path.remove(folder)


def _load_with_own_configs(ckpt: Path, mod):
    """torch.load with weights_only=True, where the pickle may also hold instances of the dataclasses
    the user's model file defines (build-nanogpt saves its GPTConfig beside the weights, as
    `__main__.GPTConfig`): those classes, under the names the pickle gives them, and nothing else."""
    import re

    from .load import _torch_load

    own = {c.__name__: c for c in vars(mod).values() if dataclasses.is_dataclass(c) and isinstance(c, type)}
    allowed: list = []
    while True:
        try:
            with torch.serialization.safe_globals(allowed):
                return _torch_load(ckpt)
        except MonologueError as e:
            found = re.search(r"pickles the object ([\w.]+)", str(e))
            cls = own.get(found.group(1).rpartition(".")[2]) if found else None
            if cls is None or any(name == found.group(1) for _, name in allowed):
                raise
            allowed.append((cls, found.group(1)))


def _config_class(make, args: dict, mod, spec: str) -> type | None:
    """The class to build the config object from where `make` takes one (nanoGPT's `GPT(config)`, built
    as `GPT(GPTConfig(**model_args))`): the parameter's annotation, else the one class in the user's
    file whose constructor takes every key of `args`. None where `make(**args)` fits as it is."""
    import inspect

    try:
        params = list(inspect.signature(make).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if (not positional or any(p.kind is p.VAR_KEYWORD for p in params)
            or (set(args) <= {p.name for p in params} if args else positional[0].default is not positional[0].empty)
            or any(p.default is p.empty for p in params[params.index(positional[0]) + 1:])):
        return None
    if isinstance(positional[0].annotation, type) and _takes(positional[0].annotation, args):
        return positional[0].annotation
    if callable(defaults := getattr(make, "get_default_config", None)):
        return _updated_defaults(make, defaults)
    classes = [c for c in vars(mod).values() if isinstance(c, type) and not issubclass(c, nn.Module)]
    # classes naming every key, else (minGPT's GPTConfig(vocab_size, block_size, **kwargs)) those
    # that take the rest as **kwargs; of a class and its subclasses, the class
    fits = {c for c in classes if _takes(c, args)} or {c for c in classes if _takes(c, args, rest=True)}
    if len(fits) > 1:
        fits = {c for c in fits if c.__name__.endswith("Config")} or fits
        fits = {c for c in fits if not any(b in fits for b in c.__mro__[1:])}
    if len(fits) == 1:
        return fits.pop()
    found = f"{len(fits)} ({', '.join(sorted(c.__name__ for c in fits))})" if fits else "none"
    raise MonologueError(f"--model-code {spec}: {make.__name__}({positional[0].name}) takes a config object, and of the "
                         f"classes in {Path(mod.__file__).name} taking {sorted(args)}, {found} was found; give a function "
                         f"that builds the model from them")


def _takes(cls: type, args: dict, rest: bool = False) -> bool:
    """Whether `cls(**args)` names only parameters `cls` has (a dataclass's fields, say); with `rest`,
    whether it takes every parameter it requires from args, and the others as **kwargs."""
    import inspect

    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return False
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not rest:
        return set(args) <= named and not any(p.kind is p.VAR_KEYWORD for p in params)
    required = {p.name for p in params if p.name in named and p.default is p.empty}
    return any(p.kind is p.VAR_KEYWORD for p in params) and bool(required) and required <= set(args)


def _updated_defaults(make, defaults):
    """minGPT's convention: `Name.get_default_config()` is the config object, args set on it."""
    def build(**args):
        config = defaults()
        for key, value in args.items():
            setattr(config, key, value)
        return config

    build.__name__ = f"{make.__name__}.get_default_config().update"
    return build
