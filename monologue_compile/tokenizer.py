"""The byte-level BPE tokenizer: a thin Python face on the Rust implementation in `runtime_rs`
(reached through the cffi extension `monologue_compile._runtime`), so Python, native Rust and the
browser's wasm all tokenize with the same code.

    tok = Tokenizer.train(texts, vocab_size=4096)
    ids = tok.encode("hello <|bos|>")                      # special tokens recognised
    ids, mask = tok.render_conversation([{"role": "user", "content": "2+2?"},
                                         {"role": "assistant", "thought": "2+2=4", "content": "4"}])
    tok.save("tokenizer.json"); Tokenizer.load("tokenizer.json")  # or a nanochat tokenizer.pkl,
                                                           # or a Hugging Face tokenizer.json

`python -m monologue_compile.tokenizer demo` trains on a small built-in corpus and shows a
tokenized conversation.
"""

from __future__ import annotations

import base64
import codecs
import functools
import io
import json
import os
import pickle
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate
from pathlib import Path

from .errors import MonologueError

# The split pattern nanochat uses (GPT-4's with digit groups of at most two).
NANOCHAT_PATTERN = (
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"
    r"|\s*[\r\n]|\s+(?!\S)|\s+"
)

# Monologue's special tokens, in id order (they take the ids right after the last rank).
SPECIAL_TOKENS = (
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<think>",
    "</think>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
)

# Texts are handed to the Rust trainer in batches of about this many bytes.
_TRAIN_BATCH_BYTES = 16 << 20

_STATUS_ERROR = 1


@functools.cache
def _runtime():
    """(ffi, lib) of the Rust extension, imported on first use."""
    try:
        from ._runtime import ffi, lib
    except ImportError as e:  # the extension is built by `pip install -e .` (maturin)
        raise MonologueError(
            "the Rust extension monologue_compile._runtime is not built; run: pip install -e '.[dev]'"
        ) from e
    return ffi, lib


def _check(status: int, context: str = "") -> None:
    """Raise the Rust side's error message: bad input as MonologueError, a panic as RuntimeError."""
    if status == 0:
        return
    ffi, lib = _runtime()
    message = ffi.string(lib.mono_last_error()).decode("utf-8", "replace")
    if context:
        message = f"{context}: {message}"
    if status == _STATUS_ERROR:
        raise MonologueError(message)
    raise RuntimeError(message)


def _utf8(text: str) -> bytes:
    """UTF-8 of `text`; lone surrogates become U+FFFD, as tiktoken does."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def _pack(texts: list[bytes]):
    """One buffer and the n + 1 offsets of its texts, as the C ABI takes a batch."""
    ffi, _ = _runtime()
    return b"".join(texts), ffi.new("uintptr_t[]", [0, *accumulate(len(t) for t in texts)])


def _take_u32s(ptr, n) -> list[int]:
    ffi, lib = _runtime()
    try:
        return ffi.unpack(ptr[0], n[0])
    finally:
        lib.mono_free_u32s(ptr[0], n[0])


def _take_bytes(ptr, n) -> bytes:
    ffi, lib = _runtime()
    try:
        return ffi.unpack(ffi.cast("char *", ptr[0]), n[0])
    finally:
        lib.mono_free_bytes(ptr[0], n[0])


class Tokenizer:
    """A byte-level BPE tokenizer with special tokens and the chat template (see module doc)."""

    def __init__(self, handle):
        """Wrap a Rust tokenizer handle; use `train`, `load` or `from_json` instead."""
        ffi, lib = _runtime()
        self._handle = ffi.gc(handle, lib.mono_tokenizer_free)
        self._doc: dict | None = None

    # --- construction ---

    @classmethod
    def train(
        cls,
        texts: Iterable[str | os.PathLike],
        vocab_size: int,
        special_tokens: Sequence[str] | None = None,
        pattern: str = NANOCHAT_PATTERN,
    ) -> Tokenizer:
        """Train on `texts` (strings, or paths of UTF-8 text files) to `vocab_size` ids in all:
        256 byte tokens + learned merges + `special_tokens` (default: SPECIAL_TOKENS). Texts too
        small to yield that many merges give a smaller vocabulary: size models by `.vocab_size`."""
        specials = list(SPECIAL_TOKENS if special_tokens is None else special_tokens)
        if len(set(specials)) != len(specials):
            raise MonologueError(f"special tokens repeat a name: {specials}")
        if vocab_size < 256 + len(specials):
            raise MonologueError(
                f"vocab size {vocab_size} is smaller than 256 byte tokens + "
                f"{len(specials)} special tokens = {256 + len(specials)}"
            )
        if isinstance(texts, (str, os.PathLike)):
            texts = [texts]
        ffi, lib = _runtime()
        pattern_bytes = pattern.encode("utf-8")
        trainer_out = ffi.new("struct MonoTrainer **")
        _check(lib.mono_trainer_new(pattern_bytes, len(pattern_bytes), trainer_out))
        trainer = ffi.gc(trainer_out[0], lib.mono_trainer_free)

        def feed(batch: list[bytes]) -> None:
            buf, offsets = _pack(batch)
            _check(lib.mono_trainer_feed(trainer, buf, offsets, len(batch)))

        batch: list[bytes] = []
        batch_bytes = 0
        for item in texts:
            if isinstance(item, os.PathLike):
                item = _read_text(Path(item), "training text file")
            elif not isinstance(item, str):
                raise MonologueError(f"training texts must be strings or paths, got {type(item).__name__}")
            data = _utf8(item)
            batch.append(data)
            batch_bytes += len(data)
            if batch_bytes >= _TRAIN_BATCH_BYTES:
                feed(batch)
                batch, batch_bytes = [], 0
        if batch:
            feed(batch)

        specials_json = json.dumps(specials).encode("utf-8")
        out = ffi.new("struct MonoTokenizer **")
        _check(lib.mono_trainer_train(trainer, vocab_size, specials_json, len(specials_json), out))
        return cls(out[0])

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        """A tokenizer from the text of a tokenizer.json."""
        ffi, lib = _runtime()
        data = _utf8(_added_ids_as_tokenizers_gives(text))
        out = ffi.new("struct MonoTokenizer **")
        _check(lib.mono_tokenizer_from_json(data, len(data), out))
        return cls(out[0])

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a tokenizer.json (this project's, or a Hugging Face BPE one: byte-level or
        SentencePiece-style, docs/formats.md lists what is read), or import
        a nanochat tokenizer.pkl (a pickled tiktoken Encoding) without executing it."""
        path = Path(path)
        if not path.is_file():
            raise MonologueError(f"tokenizer file not found: {path}")
        data = path.read_bytes()
        if data[:1] == b"\x80":  # pickle protocol 2 and later
            text = _pickle_to_json(data, path)
        elif path.suffix == ".model":  # SentencePiece's protobuf (llama2.c, Llama-2's tokenizer.model)
            text = _sentencepiece_to_json(path)
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise MonologueError(f"{path}: not a tokenizer.json (not UTF-8) nor a tokenizer.pkl") from None
        try:
            return cls.from_json(text)
        except MonologueError as e:
            raise MonologueError(f"{path}: {e}") from None

    def __reduce__(self):
        # pickled as its tokenizer.json, so data-loader worker processes can receive it
        return (Tokenizer.from_json, (self.to_json(),))

    # --- persistence ---

    def to_json(self) -> str:
        ffi, lib = _runtime()
        ptr, n = ffi.new("uint8_t **"), ffi.new("uintptr_t *")
        _check(lib.mono_tokenizer_to_json(self._handle, ptr, n))
        return _take_bytes(ptr, n).decode("utf-8")

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    # --- encoding ---

    def encode(self, text: str, allowed_special: str | Iterable[str] = "all") -> list[int]:
        """Token ids of `text`; the special tokens in `allowed_special` ("all", "none" or a set
        of names) are recognised, any other special-token text is encoded as ordinary text."""
        if isinstance(allowed_special, str):
            if allowed_special not in ("all", "none"):
                raise MonologueError(
                    f'allowed_special must be "all", "none" or a set of names, not {allowed_special!r}'
                )
            allowed_json = b'"all"' if allowed_special == "all" else b'"none"'
        else:
            allowed = sorted(allowed_special)
            unknown = [name for name in allowed if name not in self.special_tokens]
            if unknown:
                raise MonologueError(f"allowed_special names unknown special tokens: {unknown}")
            allowed_json = json.dumps(allowed).encode("utf-8")
        ffi, lib = _runtime()
        data = _utf8(text)
        ptr, n = ffi.new("uint32_t **"), ffi.new("uintptr_t *")
        _check(lib.mono_tokenizer_encode(self._handle, data, len(data), allowed_json, len(allowed_json), ptr, n))
        return _take_u32s(ptr, n)

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, never recognising special tokens."""
        ffi, lib = _runtime()
        data = _utf8(text)
        ptr, n = ffi.new("uint32_t **"), ffi.new("uintptr_t *")
        _check(lib.mono_tokenizer_encode_ordinary(self._handle, data, len(data), ptr, n))
        return _take_u32s(ptr, n)

    def encode_ordinary_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode_ordinary` of each text, computed on all cores."""
        ffi, lib = _runtime()
        buf, offsets = _pack([_utf8(t) for t in texts])
        ids, n, counts = ffi.new("uint32_t **"), ffi.new("uintptr_t *"), ffi.new("uint32_t **")
        _check(lib.mono_tokenizer_encode_ordinary_batch(self._handle, buf, offsets, len(texts), ids, n, counts))
        n_texts = ffi.new("uintptr_t *", len(texts))
        flat, lengths = _take_u32s(ids, n), _take_u32s(counts, n_texts)
        ends = list(accumulate(lengths))
        return [flat[end - length : end] for end, length in zip(ends, lengths)]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        ffi, lib = _runtime()
        try:
            ids_array = ffi.new("uint32_t[]", list(ids))
        except (OverflowError, TypeError):
            raise MonologueError(f"token ids must be integers in 0..{self.vocab_size - 1}") from None
        ptr, n = ffi.new("uint8_t **"), ffi.new("uintptr_t *")
        _check(lib.mono_tokenizer_decode(self._handle, ids_array, len(ids_array), ptr, n))
        return _take_bytes(ptr, n)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; bytes that are not valid UTF-8 become U+FFFD (as in tiktoken)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # --- vocabulary ---

    def _document(self) -> dict:
        if self._doc is None:
            self._doc = json.loads(self.to_json())
        return self._doc

    def _own_format(self, what: str) -> dict:
        doc = self._document()
        if "format" not in doc:
            raise MonologueError(f"{what} exists only for a monologue-tokenizer, not a Hugging Face tokenizer.json")
        return doc

    @property
    def pattern(self) -> str:
        return self._own_format("pattern")["pattern"]

    def ranks(self) -> dict[bytes, int]:
        """Token bytes -> rank (tiktoken's `mergeable_ranks` form)."""
        return {base64.b64decode(b): rank for rank, b in enumerate(self._own_format("ranks")["ranks"])}

    @property
    def vocab_size(self) -> int:
        """One more than the largest token id (ranks and special tokens)."""
        _, lib = _runtime()
        return int(lib.mono_tokenizer_vocab_size(self._handle))

    @property
    def special_tokens(self) -> dict[str, int]:
        """Name -> id of the tokens `encode` recognises in text (a Hugging Face tokenizer's
        added tokens)."""
        doc = self._document()
        if "format" in doc:
            return dict(doc["special_tokens"])
        return {t["content"]: t["id"] for t in doc.get("added_tokens") or []}

    def token_id(self, name: str) -> int:
        """The id of special token `name`."""
        try:
            return self.special_tokens[name]
        except KeyError:
            raise MonologueError(f"the tokenizer has no special token {name}") from None

    # --- chat template ---

    def render_conversation(self, messages: Sequence[Mapping], template: Mapping | None = None) -> tuple[list[int], list[int]]:
        """(ids, mask) of a conversation in `template` (a manifest's reduced chat template; None:
        this project's layout, `<|bos|>`, then `<|user_start|> text <|user_end|>` and
        `<|assistant_start|> <think> thought </think> answer <|assistant_end|>` per turn). mask is 1
        on what the assistant produces (its thought, answer and end), 0 elsewhere.
        Messages are `{"role": "system"|"user"|"assistant", "content": str, "thought": str}`;
        a missing thought renders no think block, a system message is prefixed to the first
        user message with a blank line (runtime_rs/src/chat.rs)."""
        ffi, lib = _runtime()
        data = _messages_json(messages, template)
        ids, mask, n = ffi.new("uint32_t **"), ffi.new("uint8_t **"), ffi.new("uintptr_t *")
        _check(lib.mono_render_conversation(self._handle, data, len(data), ids, mask, n), "conversation")
        mask_values = list(_take_bytes(mask, n))
        return _take_u32s(ids, n), mask_values

    def render_for_completion(self, messages: Sequence[Mapping], template: Mapping | None = None,
                              enable_thinking: bool | None = None) -> list[int]:
        """The prompt for the assistant's next turn: the conversation, which must end with a user
        message, followed by the template's generation prompt (`<|assistant_start|>` in this
        project's layout); `enable_thinking=False` switches thinking off where the template can."""
        ffi, lib = _runtime()
        data = _messages_json(messages, template, enable_thinking)
        ids, n = ffi.new("uint32_t **"), ffi.new("uintptr_t *")
        _check(lib.mono_render_for_completion(self._handle, data, len(data), ids, n), "conversation")
        return _take_u32s(ids, n)


def _messages_json(messages: Sequence[Mapping], template: Mapping | None = None,
                   enable_thinking: bool | None = None) -> bytes:
    try:
        doc = [dict(m) for m in messages]
        if template is not None or enable_thinking is not None:
            doc = {"messages": doc, "template": template, "enable_thinking": enable_thinking}
        return _utf8(json.dumps(doc, ensure_ascii=False))
    except (TypeError, ValueError) as e:
        raise MonologueError(f"conversation: messages must be dicts of strings ({e})") from None


def _added_ids_as_tokenizers_gives(text: str) -> str:
    """A Hugging Face tokenizer.json with each added token at the id the `tokenizers` library gives
    it, whatever id the file states (transformers only warns where they differ): a token the model's
    vocabulary holds takes the vocabulary's id, any other the next id after the vocabulary and the
    added tokens before it. Files the library wrote already agree, and are returned as they are."""
    if '"added_tokens"' not in text:
        return text
    try:
        doc = json.loads(text)
        model, added = doc["model"], doc["added_tokens"]
        vocab, size = model["vocab"], len(model["vocab"])
        if isinstance(vocab, list):  # Unigram: [piece, score] pairs, ids in order
            vocab = {pair[0]: i for i, pair in enumerate(vocab)}
        given: dict[str, int] = {}
        moved, top = False, -1  # the largest id given so far (a running max: files hold thousands)
        for token in added:
            content = token["content"]
            if content not in given:
                given[content] = vocab.get(content, size if top < size else top + 1)
                top = max(top, given[content])
            moved = moved or token["id"] != given[content]
            token["id"] = given[content]
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return text  # not this shape: the Rust reader names what is wrong with it
    if not moved:
        return text
    return json.dumps(doc, ensure_ascii=False)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MonologueError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MonologueError(f"cannot read {what} {path}: {e}") from None


# --- nanochat tokenizer.pkl import ---


class _PickledEncoding:
    """Stands in for tiktoken.core.Encoding while unpickling: keeps the state, runs nothing."""

    state: object = None

    def __setstate__(self, state):
        self.state = state


class _EncodingUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled tiktoken Encoding refers to; refuses the rest."""

    _ALLOWED = {
        ("tiktoken.core", "Encoding"): _PickledEncoding,
        ("_codecs", "encode"): codecs.encode,  # how protocol 2 spells bytes
    }

    def __init__(self, data: bytes, path: Path):
        super().__init__(io.BytesIO(data))
        self._path = path

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise MonologueError(
                f"{self._path}: refused to unpickle global {module}.{name} "
                "(a tokenizer.pkl may only hold a tiktoken Encoding)"
            ) from None

    def persistent_load(self, pid):
        raise MonologueError(f"{self._path}: refused a persistent reference in the pickle")


def _pickle_to_json(data: bytes, path: Path) -> str:
    """tokenizer.json text for a pickled tiktoken Encoding (nanochat's tokenizer.pkl) or a pickled
    char vocabulary (nanoGPT's meta.pkl)."""
    try:
        obj = _EncodingUnpickler(data, path).load()
    except MonologueError:
        raise
    except Exception as e:  # any malformed pickle
        raise MonologueError(f"{path}: not a readable tokenizer.pkl ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and "stoi" in obj:
        return _char_vocab_to_json(obj["stoi"], path)
    if not isinstance(obj, _PickledEncoding):
        raise MonologueError(f"{path}: the pickle holds neither a tiktoken Encoding nor a char vocabulary (stoi)")
    state = obj.state
    if isinstance(state, str):
        raise MonologueError(
            f"{path}: the pickle names tiktoken's built-in encoding {state!r} instead of holding its ranks"
        )
    if not isinstance(state, dict):
        raise MonologueError(f"{path}: the pickled Encoding has no state dict")
    pattern = state.get("pat_str")
    ranks = state.get("mergeable_ranks")
    specials = state.get("special_tokens", {})
    if not isinstance(pattern, str):
        raise MonologueError(f"{path}: the pickled Encoding has no pat_str string")
    if not isinstance(ranks, dict) or not all(
        isinstance(k, bytes) and type(v) is int for k, v in ranks.items()
    ):
        raise MonologueError(f"{path}: mergeable_ranks must map bytes to int")
    if not isinstance(specials, dict) or not all(
        isinstance(k, str) and type(v) is int for k, v in specials.items()
    ):
        raise MonologueError(f"{path}: special_tokens must map str to int")
    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    if [rank for _, rank in by_rank] != list(range(len(by_rank))):
        raise MonologueError(f"{path}: mergeable_ranks must be the ranks 0..{len(by_rank) - 1}, each once")
    return json.dumps(
        {
            "format": "monologue-tokenizer",
            "version": 1,
            "pattern": pattern,
            "ranks": [base64.b64encode(token).decode("ascii") for token, _ in by_rank],
            "special_tokens": dict(sorted(specials.items(), key=lambda kv: kv[1])),
        }
    )


def _sentencepiece_to_json(path: Path) -> str:
    """The tokenizer.json transformers converts a SentencePiece BPE model to (its LlamaConverter: the
    `▁` Metaspace, byte fallback, `<s>` before a text), for a model trained as Llama's and
    llama2.c's are: BPE, byte fallback, identity normalization. Anything else is refused by name."""
    import shutil
    import tempfile

    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:
        raise MonologueError(f"{path}: reading a SentencePiece model needs {e.name} (pip install sentencepiece "
                             "protobuf)") from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # noqa: BLE001 -- protobuf's DecodeError and friends
        raise MonologueError(f"{path}: not a SentencePiece model ({type(e).__name__})") from None
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    if trainer.model_type == trainer.UNIGRAM:
        return _sentencepiece_unigram_json(proto, path)
    for ok, what in ((trainer.model_type == trainer.BPE, f"model type {trainer.ModelType.Name(trainer.model_type)}"),
                     (trainer.byte_fallback, "no byte_fallback"),
                     (normalizer.name in ("identity", ""), f"normalization {normalizer.name!r}"),
                     (len(proto.pieces) > 0, "no pieces")):
        if not ok:
            raise MonologueError(f"{path}: a SentencePiece model with {what} is not read (BPE with byte fallback "
                                 "and identity normalization is, as Llama's and llama2.c's)")
    if normalizer.remove_extra_whitespaces:
        import click

        click.echo(f"note: {path}: its SentencePiece normalizer collapses runs of spaces; transformers' conversion, "
                   "used here, keeps them", err=True)
    folder = Path(tempfile.mkdtemp(prefix="monologue-sp-"))
    try:
        shutil.copyfile(path, folder / "tokenizer.model")
        names = {k: proto.pieces[i].piece for k, i in (("unk_token", trainer.unk_id), ("bos_token", trainer.bos_id),
                                                        ("eos_token", trainer.eos_id)) if 0 <= i < len(proto.pieces)}
        config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": "bos_token" in names, **names}
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        return built_by_transformers(folder, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _sentencepiece_unigram_json(proto, path: Path) -> str:
    """A tokenizer.json that tokenizes as the SentencePiece library does with a Unigram model (its
    default; any normalization rules): the pieces and scores as a Unigram model, summed in f32 as
    the library sums them, its control, unknown, unused and byte pieces never found in text, and
    its own normalizer (the charsmap's longest keys, the whitespace rules). transformers' converters
    disagree with the library (tokenizers applies a charsmap by the shortest key of each grapheme
    cluster; the f32 sums follow the library's code, f64 gave the same ids on every string measured),
    so the normalizer and the two model fields are this project's, documented in
    docs/formats.md. Decoding is Llama's: ▁ a space, byte pieces their bytes, the first space
    dropped; a text starts with the bos piece where there is one, as the BPE models' conversion has it."""
    import base64

    import numpy as np

    trainer, normalizer, pieces = proto.trainer_spec, proto.normalizer_spec, proto.pieces
    kinds = proto.SentencePiece.Type
    for ok, what in ((not trainer.treat_whitespace_as_suffix, "treat_whitespace_as_suffix"),
                     (not proto.denormalizer_spec.precompiled_charsmap, "a denormalizer"),
                     (0 <= trainer.unk_id < len(pieces), "no unknown piece")):
        if not ok:
            raise MonologueError(f"{path}: a SentencePiece Unigram model with {what} is not read")
    # A user-defined piece is found whole wherever it appears: the normalizer passes it through
    # unchanged, and the lattice scores it above any split of it, as the library (0.2.3) does:
    # 0.1 a byte less 0.1, measured by where it stops preferring the piece (its source's comment
    # says "length * max_score_ - 0.1", but the best normal score does not move that point).
    user_defined = [p.piece for p in pieces if p.type == kinds.USER_DEFINED]
    scores = [float(np.float32(len(p.piece.encode()) * np.float32(0.1))) - 0.1 if p.type == kinds.USER_DEFINED
              else p.score for p in pieces]
    special = {kinds.CONTROL, kinds.UNKNOWN}
    added = [{"id": i, "content": p.piece, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, p in enumerate(pieces) if p.type in special]
    bos = pieces[trainer.bos_id].piece if 0 <= trainer.bos_id < len(pieces) else None
    fuse = [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}]
    strip = [{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if normalizer.add_dummy_prefix else []
    doc = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "SentencePiece",
                       "precompiled_charsmap": base64.b64encode(normalizer.precompiled_charsmap).decode(),
                       "add_dummy_prefix": normalizer.add_dummy_prefix,
                       "remove_extra_whitespaces": normalizer.remove_extra_whitespaces,
                       "escape_whitespaces": normalizer.escape_whitespaces, "user_defined": user_defined},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                                                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [], "special_tokens": {}} if bos else None,
        "decoder": {"type": "Sequence", "decoders": fuse + strip},
        "model": {"type": "Unigram", "unk_id": trainer.unk_id, "byte_fallback": trainer.byte_fallback,
                  "vocab": [[p.piece, score] for p, score in zip(pieces, scores)], "sentencepiece": True,
                  "unmatched": [i for i, p in enumerate(pieces) if p.type in special | {kinds.UNUSED, kinds.BYTE}]},
    }
    return json.dumps(doc, ensure_ascii=False)


def built_by_transformers(folder: Path, what: Path) -> str:
    """The tokenizer.json transformers builds from the tokenizer files in `folder` (its own converters,
    no remote code); `what` names them in the error where it cannot."""
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            backend = getattr(AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False), "backend_tokenizer", None)
        finally:
            hf_logging.set_verbosity(verbosity)
    except Exception as e:  # noqa: BLE001 -- whatever transformers raises for files it cannot convert
        raise MonologueError(f"{what}: transformers could not build a tokenizer.json from it: "
                             f"{str(e).splitlines()[0][:160] if str(e) else type(e).__name__}") from None
    if backend is None:
        raise MonologueError(f"{what}: transformers builds no tokenizer.json from it")
    return backend.to_str()


def _char_vocab_to_json(stoi, path: Path) -> str:
    """A Hugging Face tokenizer.json for nanoGPT's char-level meta.pkl ({"stoi": {char: id}, ...}):
    a BPE of those chars without merges or byte tokens, read back by joining them. A char the
    vocabulary lacks is left out of the ids, as `tokenizers` leaves it out for such a file."""
    if not isinstance(stoi, dict) or not all(isinstance(k, str) and type(v) is int for k, v in stoi.items()):
        raise MonologueError(f"{path}: stoi must map str to int")
    if sorted(stoi.values()) != list(range(len(stoi))):
        raise MonologueError(f"{path}: stoi's ids must be 0..{len(stoi) - 1}, each once")
    if bad := next((k for k in stoi if len(k) != 1), None):
        raise MonologueError(f"{path}: stoi holds {bad!r}, not one character (a char-level vocabulary is read)")
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": None, "post_processor": None, "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": dict(sorted(stoi.items(), key=lambda kv: kv[1])), "merges": []},
    }, ensure_ascii=False)


# --- demo: `python -m monologue_compile.tokenizer demo` ---


def _demo_corpus(n_lines: int = 20000) -> list[str]:
    """A small deterministic corpus of reasoning-flavoured text (no downloads)."""
    import random

    rng = random.Random(0)
    names = ["Ada", "Bo", "Chen", "Dana", "Émile", "Farah", "Gus", "Hana"]
    things = ["apples", "books", "coins", "marbles", "pencils", "stamps"]
    lines = []
    for _ in range(n_lines):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        who, what = rng.choice(names), rng.choice(things)
        lines.append(
            rng.choice(
                [
                    f"{who} has {a} {what} and buys {b} more. Now {who} has {a + b} {what}.",
                    f"If {who} gives away {min(a, b)} of {max(a, b)} {what}, {max(a, b) - min(a, b)} are left.",
                    f"Let's think step by step: {a} times {b} is {a * b}, so the answer is {a * b}.",
                    f"{who}'s {what} don't fit; they're {a}% too many, aren't they?",
                ]
            )
        )
    return lines


def _demo() -> None:
    import time

    corpus = _demo_corpus()
    started = time.perf_counter()
    tok = Tokenizer.train(corpus, vocab_size=400)
    trained = time.perf_counter() - started
    size = sum(len(line.encode("utf-8")) for line in corpus)
    print(f"trained a {tok.vocab_size}-token BPE on {len(corpus)} lines ({size / 1e6:.1f} MB) in {trained * 1e3:.0f} ms")

    started = time.perf_counter()
    n_tokens = sum(len(tok.encode_ordinary(line)) for line in corpus)
    encoded = time.perf_counter() - started
    print(f"encoded it back to {n_tokens} tokens ({size / n_tokens:.2f} bytes/token) at {size / encoded / 1e6:.1f} MB/s")

    conversation = [
        {"role": "user", "content": "Ada has 12 apples and buys 30 more. How many now?"},
        {"role": "assistant", "thought": "12 plus 30 is 42.", "content": "Ada has 42 apples."},
    ]
    ids, mask = tok.render_conversation(conversation)
    print("\nthe conversation as tokens (* = what the model is trained to produce):")
    print(" ".join(("*" if m else "") + repr(tok.decode([i]))[1:-1] for i, m in zip(ids, mask)))


def _cli():
    import click

    @click.group()
    def tokenizer_cli():
        """Train, inspect and demo Monologue's BPE tokenizer."""

    @tokenizer_cli.command()
    def demo():
        """Train on a small built-in corpus and show a tokenized conversation."""
        _demo()

    @tokenizer_cli.command()
    @click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
    @click.option("--vocab-size", type=int, required=True, help="ids in all: 256 bytes + merges + special tokens")
    @click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="tokenizer.json to write")
    def train(files, vocab_size, output):
        """Train a tokenizer on UTF-8 text FILES."""
        Tokenizer.train(files, vocab_size).save(output)

    @tokenizer_cli.command()
    @click.option("--tokenizer", "tokenizer_path", type=click.Path(path_type=Path), required=True)
    @click.argument("text")
    def encode(tokenizer_path, text):
        """Print the token ids of TEXT (special tokens recognised) as JSON."""
        click.echo(json.dumps(Tokenizer.load(tokenizer_path).encode(text)))

    return tokenizer_cli


if __name__ == "__main__":
    from .cli import run_command

    run_command(_cli())
