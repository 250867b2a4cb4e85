"""A Hugging Face model folder: the module from transformers' own modeling code, weights from safetensors
(or weights_only pickles).

    config.json                      -> transformers config (no remote code: `trust_remote_code` stays off)
    model.safetensors                -> weights, read tensor by tensor, bf16/f16 -> f32
    model.safetensors.index.json     -> or the shards it lists
    pytorch_model.bin(.index.json)   -> or, without safetensors, PyTorch's pickles read with weights_only=True
    tokenizer.json                   -> the tokenizer (Hugging Face's format, read by the Rust runtime), or
                                        --tokenizer; a folder without one compiles to a model run from ids
    tokenizer_config.json            -> the Jinja chat_template (or chat_template.jinja) and the special-token
                                        strings it reads (bos_token, ...), for chat_template.py
    generation_config.json           -> eos_token_id (one id or a list): the tokens that end a reply

The module is built with its parameters on the meta device (buffers such as RoPE's `inv_freq` are
computed for real) and the checkpoint's tensors are assigned to it, so a model is in memory once.
The traced forward is `model(input_ids=idx, use_cache=False).logits`.
"""

from __future__ import annotations

import contextlib
import json
import types
from pathlib import Path

import torch
import torch.nn as nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..errors import MonologueError
from ..files import sha256_file

# A model longer than this compiles with this many positions (tables, KV cache); the config's own
# max_position_embeddings (131072 for Llama 3.2) would make every table and cache that long.
MAX_SEQUENCE_LEN = 4096


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


class CausalLMLogits(nn.Module):
    """`model(ids) -> logits` for a module whose forward takes `input_ids` and returns `.logits`, or
    takes the ids and returns the logits (a hand-written GPT), and greedy decoding for parity."""

    def __init__(self, model: nn.Module, sequence_len: int):
        super().__init__()
        self.model = model
        self.sequence_len = sequence_len
        self.config = types.SimpleNamespace(sequence_len=sequence_len)  # what parity's per-layer trace reads
        self.every = None  # the model's graph made to return every position (last_position.py), if it needs one

    def forward(self, idx):
        if self.every is not None:
            return self.every(idx)
        params = _forward_parameters(self.model)
        if "input_ids" in params:  # transformers' models (and code written like them): no cache
            out = self.model(input_ids=idx, **({"use_cache": False} if "use_cache" in params else {}))
        else:
            out = self.model(idx)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if isinstance(out, dict) and "logits" in out:
            out = out["logits"]
        out = getattr(out, "logits", out)
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dim() == 2 and idx.shape[0] == 1 and \
                statically_known_true(out.shape[0] == idx.shape[1]):
            out = out.unsqueeze(0)  # (T, V): the batch axis squeezed or merged (`logits.view(-1, V)`)
        return out

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The model's logits for `ids`, or a one-line error where its forward does not take token ids
        and return them (a forward that also needs a start position, say)."""
        name = type(self.model).__name__
        try:
            with torch.no_grad():
                out = self(ids)
        except Exception as e:  # noqa: BLE001 -- the user's code: say what it raised, in one line
            raise MonologueError(f"{name}: its forward, called with token ids of shape {tuple(ids.shape)}, raised "
                                 f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() < 2:
            raise MonologueError(f"{name}: its forward returned {type(out).__name__}"
                                 f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}, not logits (or "
                                 ".logits, ['logits'], or a tuple starting with them)")
        return out

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new_tokens: int, temperature: float = 0.0, **_) -> list[int]:
        """Greedy decoding by full recompute (no cache code of the model is involved)."""
        tokens, out = list(prompt), []
        for _ in range(min(max_new_tokens, self.sequence_len - len(prompt))):
            t = int(self(torch.tensor([tokens]))[0, -1].argmax())
            out.append(t)
            tokens.append(t)
        return out


def _forward_parameters(model: nn.Module) -> set[str]:
    """The names model.forward takes (a **kwargs forward takes any: use_cache among them)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return set()
    return set(params) | ({"use_cache"} if any(p.kind is p.VAR_KEYWORD for p in params.values()) else set())


def read_config(folder: Path):
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MonologueError(f"{folder / 'config.json'}: not a usable transformers config: {first[:200]}") from None
    if getattr(cfg, "is_encoder_decoder", False):
        raise MonologueError(f"{folder / 'config.json'}: {cfg.model_type} is an encoder-decoder model; only causal "
                             "(decoder-only) language models compile")
    return cfg


def weight_files(folder: Path) -> list[Path]:
    """The folder's weight files: safetensors where it has them, else PyTorch's pytorch_model.bin
    (older folders: GPT-Neo, OPT, TinyStories), one file or the shards of an index."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        index = folder / f"{name}.index.json"
        if index.exists():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError, UnicodeDecodeError) as e:
                raise MonologueError(f"{index}: not a weight index ({e})") from None
            files = [folder / s for s in shards]
            break
        if (folder / name).exists():
            files = [folder / name]
            break
    else:
        raise MonologueError(f"{folder}: no model.safetensors, pytorch_model.bin or an index of either")
    for f in files:
        if not f.exists():
            raise MonologueError(f"{f}: weight shard listed in the index is missing")
    return files


def read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor as f32 (floating) or as stored (integer), one at a time. A pytorch_model.bin is
    a pickle: it is read with weights_only=True, which builds tensors and runs nothing else."""
    from safetensors import SafetensorError, safe_open

    from .load import _torch_load

    sd: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix != ".safetensors":
            state = _torch_load(f)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise MonologueError(f"{f}: not a state dict of tensors")
            sd.update({k: t.to(torch.float32) if t.is_floating_point() else t for k, t in state.items()})
            continue
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    t = st.get_tensor(k)
                    sd[k] = t.to(torch.float32) if t.is_floating_point() else t
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MonologueError(f"{f}: not a readable safetensors file (truncated or corrupt?): {first[:200]}") from None
    return sd


def sequence_len(cfg) -> int:
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or MAX_SEQUENCE_LEN
    return int(min(n, MAX_SEQUENCE_LEN))


@contextlib.contextmanager
def parameters_on_meta():
    """Parameters are made on the meta device (the checkpoint's tensors replace them), buffers for real:
    RoPE's inv_freq is computed in __init__ and never saved."""
    register = nn.Module.register_parameter

    def on_meta(self, name, param):
        register(self, name, param)
        if param is not None and param.device.type != "meta":
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build(config: dict, state_dict: dict[str, torch.Tensor],
          fallback: dict[str, torch.Tensor] | None = None) -> CausalLMLogits:
    """The transformers model of `config` ({"hf": config.json's dict, "sequence_len"}) with these weights.
    `fallback` (the checkpoint's, for R_q): parameters `state_dict` lacks, because lowering evaluated
    them into f32 position tables (GPT-2's learned positions), as they were."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = dict(config["hf"])
    quantized = hf.get("quantization_config")
    if quantized:
        method = quantized.get("quant_method", "?") if isinstance(quantized, dict) else "?"
        raise MonologueError(f"config.json: the weights are quantized ({method}, its quantization_config), which "
                             "is not read: compile the unquantized weights (f32, bf16 or f16); monologue quantizes "
                             "them itself (--quant)")
    integer = next((k for k, v in state_dict.items() if k.endswith(".weight") and not v.is_floating_point()), None)
    if integer is not None:
        raise MonologueError(f"the weights have {integer} as {str(state_dict[integer].dtype).replace('torch.', '')}, "
                             "not floating point (a quantized checkpoint?): compile the unquantized weights")
    cfg = AutoConfig.for_model(hf.pop("model_type"), **hf)
    try:
        with parameters_on_meta():
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    except ValueError as e:  # transformers names the model type it has no causal LM class for
        raise MonologueError(f"config.json: {str(e).splitlines()[0][:200]}") from None
    state_dict = _checkpoint_names(state_dict, {k for k, _ in model.named_parameters(remove_duplicate=False)})
    unexpected = _load_checkpoint(model, state_dict, cfg.model_type)
    if getattr(cfg, "tie_word_embeddings", False):
        out, inp = model.get_output_embeddings(), model.get_input_embeddings()
        if out is not None and inp is not None and out.weight.device.type == "meta":
            out.weight = inp.weight
    if fallback is not None:
        left = {k: fallback[k] for k, p in model.named_parameters() if p.device.type == "meta" and k in fallback}
        model.load_state_dict(left, strict=False, assign=True)
    missing = [k for k, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise MonologueError(f"the weights have no {missing[0]} (the {cfg.model_type} model of config.json needs it)")
    if unexpected:
        raise MonologueError(f"the weights have {unexpected[0]}, which the {cfg.model_type} model of config.json lacks")
    return CausalLMLogits(model.eval(), config["sequence_len"])


def _load_checkpoint(model: nn.Module, sd: dict[str, torch.Tensor], model_type: str) -> list[str]:
    """The weights into the model through transformers' own checkpoint conversion, as from_pretrained
    does: a MoE checkpoint's per-expert `experts.3.gate_proj.weight` stacked into the `experts.gate_up_proj`
    the model class holds, legacy names renamed. The keys it had no place for."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import convert_and_load_state_dict_in_model
    from transformers.modeling_utils import LoadStateDictConfig
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the compile's own progress is what the user sees
    try:
        info, _ = convert_and_load_state_dict_in_model(
            model, dict(sd), LoadStateDictConfig(weight_mapping=get_model_conversion_mapping(model), dtype=torch.float32))
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    for key, trace in sorted(info.conversion_errors.items()):  # a traceback: its exception's line says why
        lines = [ln.strip() for ln in str(trace).splitlines() if ln.strip()]
        cause = next((ln for ln in lines if ln.startswith(("RuntimeError:", "ValueError:", "IndexError:"))), lines[-1])
        raise MonologueError(f"weights do not fit the {model_type} model of config.json: {key}: {cause[:200]}")
    for key, got, want in sorted(info.mismatched_keys):
        raise MonologueError(f"weights do not fit the {model_type} model of config.json: {key} is "
                             f"{tuple(got)} in the checkpoint, {tuple(want)} in the model")
    if info.error_msgs:
        raise MonologueError(f"weights do not fit the {model_type} model of config.json: {str(info.error_msgs[0])[:200]}")
    return sorted(info.unexpected_keys)


def _checkpoint_names(sd: dict[str, torch.Tensor], params: set[str]) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict as is; the IR's weights (R_q for verify) renamed back: the wrapper's
    `model.` prefix dropped, a `W.T` made for x @ W transposed back, constants made by lowering
    (position tables, `1 + w`) left out, since the model computes them itself."""
    if any(k in params for k in sd):
        return sd
    out = {}
    for k, v in sd.items():
        name, t = (k[:-2], True) if k.endswith(".T") else (k, False)
        name = name[len("model."):] if name.startswith("model.") else name
        if name in params:
            out[name] = v.T.contiguous() if t else v
    return out


def load_folder(folder: Path, tokenizer_json: str | None):
    """(config dict, fp32 state dict, tokenizer JSON, source) of a save_pretrained folder."""
    cfg = read_config(folder)
    files = weight_files(folder)
    sd = read_weights(files)
    config = {"hf": cfg.to_dict(), "sequence_len": sequence_len(cfg), "vocab_size": int(cfg.vocab_size)}
    source = {"name": folder.name, "sha256": sha256_file(files[0]), "kind": "huggingface",
              "model_type": cfg.model_type, "files": [f.name for f in files]}
    return config, sd, tokenizer_json, source


def chat_inputs(folder: Path) -> dict:
    """What the chat needs from the folder besides tokenizer.json (see chat_template.chat_section)."""
    from ..chat_template import eos_ids, find_template, special_token_strings

    return {"template": find_template(folder, None), "specials": special_token_strings(folder), "eos": eos_ids(folder)}
