"""Hugging Face tokenizer.json files read by the one Rust tokenizer give the `tokenizers`
library's ids on generated hard strings, for each family's configuration. Byte-level: GPT-2
(also NeoX/SmolLM; with and without add_prefix_space), Llama-3 (Split regex + ByteLevel,
ignore_merges; also spelled so that the Rust regex engine runs it instead of the fast path),
GPT-4o's o200k pattern (the regex engine), Digits (StarCoder's individual digits; digit runs
after a Split), Bloom's Split (a class nested in a class), Falcon's Punctuation and its Digits and
Split after ByteLevel (on each byte's char, cutting inside UTF-8 sequences). SentencePiece-style BPE with byte fallback: Llama-2's Prepend + Replace
normalizer, Gemma's Replace alone, newer Llama/Mistral's Metaspace pre-tokenizer (prepend_scheme
first/always/never, split or not) with the Fuse or the Metaspace decoder; NFC (Qwen2) and NFKC
normalizers, also on every code point; added tokens' lstrip/rstrip/single_word/normalized flags.
The files are trained
here with `tokenizers`; nothing is downloaded. What the reader does not implement is refused by
name."""

import json
import random

import pytest

tokenizers = pytest.importorskip("tokenizers")

from test_tokenizer_exact import random_string  # noqa: E402

from monologue_compile.errors import MonologueError  # noqa: E402
from monologue_compile.tokenizer import Tokenizer  # noqa: E402

N_STRINGS = 2_000  # per style here; benchmarks/bench_tokenizer_hf.py runs 20,000
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
# GPT-4o's (o200k): no fast path recognises it, so it runs on the Rust regex engine.
O200K_PATTERN = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])
# Llama-3's pattern spelled so that no fast path recognises it: the engine against `tokenizers`.
LLAMA3_ENGINE_PATTERN = "(?:" + LLAMA3_PATTERN + ")"
# Bloom's: a class nested in the negated class (a union), on the regex engine.
BLOOM_PATTERN = " ?[^(\\s|[.,!?…。，、।۔،])]+"
SPLIT_PATTERNS = {"llama3": LLAMA3_PATTERN, "o200k": O200K_PATTERN, "llama3_engine": LLAMA3_ENGINE_PATTERN,
                  "qwen2": QWEN2_PATTERN, "nfkc": LLAMA3_PATTERN, "bloom": BLOOM_PATTERN}
# What o200k's letter classes and "/" rule split differently from the other patterns, and what
# NFC/NFKC change: decomposed letters and Hangul, marks out of order, singletons, composition
# exclusions, compatibility chars.
EXTRA = ["HTMLParser", "iPhone", "McDONALD'S", "DON'T", "ǅungla", "ÀÉÎ'll", "path/to/x\n", "a//\r\n", "Ǆ'S",
         "\u1100\u1161\u11a8", "\uac00\u11a8", "a\u0323\u0302", "a\u0302\u0323", "\u212b", "\u0958", "A\u030a",
         "\u0344", "\ufb03", "\u338f", "\uff76\uff9e", "\u2460", "x\u00b2", "\u1e9b\u0323", "\u0f73", "\u00a0"]


def hard_strings(n: int, seed: int) -> list[str]:
    """Generated hard strings (as test_tokenizer_exact's), with special-token text inside some;
    lone surrogates replaced, since neither side can be given one."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = random_string(rng)
        if rng.random() < 0.3:
            cut = rng.randint(0, len(s))
            s = s[:cut] + rng.choice(EXTRA) + s[cut:]
        if rng.random() < 0.2:
            cut = rng.randint(0, len(s))
            s = s[:cut] + rng.choice(SPECIALS) + s[cut:]
        out.append(s.encode("utf-8", "replace").decode("utf-8"))
    return out


def sentencepiece_parts(style: str):
    """(normalizer, pre-tokenizer, decoder) of a SentencePiece-style family: Llama-2's legacy
    normalizer, Llama/Mistral's newer Metaspace pre-tokenizer (prepend_scheme first/always/never,
    split or not, Metaspace decoder), Gemma's Replace-only normalizer without Strip."""
    from tokenizers import decoders, normalizers, pre_tokenizers

    fuse = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    strip = decoders.Sequence(fuse + [decoders.Strip(" ", 1, 0)])
    if style == "sentencepiece":
        return normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]), None, strip
    if style == "gemma":
        return normalizers.Replace(" ", "\u2581"), None, decoders.Sequence(fuse)
    scheme, split = {"metaspace_first": ("first", False), "metaspace_always_split": ("always", True),
                     "metaspace_never_split": ("never", True)}[style]
    metaspace = pre_tokenizers.Metaspace(prepend_scheme=scheme, split=split)
    if style == "metaspace_first":
        return None, metaspace, strip
    return None, metaspace, decoders.Metaspace(prepend_scheme=scheme, split=split)


def byte_level_pre_tokenizer(style: str):
    from tokenizers import Regex, pre_tokenizers

    if style in SPLIT_PATTERNS:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT_PATTERNS[style]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if style == "digits":  # StarCoder's
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if style == "falcon":  # Digits and a Split after ByteLevel: they see each byte as its char
        return pre_tokenizers.Sequence([
            pre_tokenizers.Punctuation(behavior="contiguous"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.Split(Regex("[0-9][0-9][0-9]"), behavior="isolated", invert=False),
        ])
    if style == "digit_runs":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False),
        ])
    return pre_tokenizers.ByteLevel(add_prefix_space=style == "gpt2_prefix_space")


def train_hf(style: str, corpus: list[str]):
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    if style in WORD_STYLES:
        return train_word_style(style, corpus)
    if style in UNIGRAM_STYLES:
        return train_unigram(style, corpus)
    if style.startswith("sentencepiece_unk"):
        # the `tokenizers` library's SentencePieceBPETokenizer: no byte fallback, a char the vocabulary
        # lacks is <unk> (a run of them one, fused); an alphabet cut short, so that happens often
        fused = style.endswith("fused")
        hf = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=fused))
        hf.normalizer = normalizers.NFKC()
        hf.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
        hf.decoder = decoders.Metaspace(prepend_scheme="always", split=True)
        trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIALS + ["<unk>"], show_progress=False,
                                      **({"limit_alphabet": 120} if fused else {}))
        hf.train_from_iterator(corpus, trainer=trainer)
        return hf
    if style in SENTENCEPIECE_STYLES:
        hf = tokenizers.Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
        normalizer, pre_tokenizer, hf.decoder = sentencepiece_parts(style)
        if normalizer is not None:
            hf.normalizer = normalizer
        if pre_tokenizer is not None:
            hf.pre_tokenizer = pre_tokenizer
        byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIALS + ["<unk>"] + byte_tokens,
                                      show_progress=False)
        hf.train_from_iterator(corpus, trainer=trainer)
        return hf
    hf = tokenizers.Tokenizer(models.BPE(ignore_merges=style in SPLIT_PATTERNS and style != "bloom"))
    hf.pre_tokenizer = byte_level_pre_tokenizer(style)
    if style in ("qwen2", "nfkc"):
        hf.normalizer = normalizers.NFC() if style == "qwen2" else normalizers.NFKC()
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(corpus, trainer=trainer)
    return hf


def train_word_style(style: str, corpus: list[str]):
    """The other models and steps `tokenizers` trains and BERT-style folders ship:
    - bert: BertWordPieceTokenizer's (BertNormalizer lowercasing and stripping accents,
      BertPreTokenizer, WordPiece and its decoder), as a BertTokenizerFast folder's;
    - bert_cased: the same, neither lowercasing nor stripping accents (bert-base-cased's);
    - wordpiece_course: the Hugging Face course's WordPiece (NFD, Lowercase, StripAccents,
      Whitespace);
    - quicktour: the `tokenizers` quicktour's BPE (an unk_token, Whitespace, no decoder);
    - wordlevel: a WordLevel over WhitespaceSplit's words, no decoder;
    - charbpe: the library's CharBPETokenizer (BPE over chars, a word's last char spelled with
      `</w>`, BertNormalizer, BertPreTokenizer, BPEDecoder);
    - gpt1: as transformers converts openai-gpt's files (the same, lowercased, unk not fused)."""
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    unk = "[UNK]"
    if style == "charbpe":
        char_bpe = tokenizers.CharBPETokenizer(unk_token=unk)
        char_bpe.train_from_iterator(corpus, vocab_size=1500, special_tokens=SPECIALS + [unk], limit_alphabet=300,
                                     show_progress=False)
        return char_bpe._tokenizer
    if style == "gpt1":
        hf = tokenizers.Tokenizer(models.BPE(unk_token=unk, end_of_word_suffix="</w>", fuse_unk=False))
        hf.normalizer = normalizers.BertNormalizer(lowercase=True)
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        hf.decoder = decoders.BPEDecoder(suffix="</w>")
        hf.train_from_iterator(corpus, trainer=trainers.BpeTrainer(
            vocab_size=1500, special_tokens=SPECIALS + [unk], end_of_word_suffix="</w>", limit_alphabet=300,
            show_progress=False))
        return hf
    if style.startswith("bert") or style == "wordpiece_course":
        hf = tokenizers.Tokenizer(models.WordPiece(unk_token=unk, max_input_chars_per_word=12))
        hf.decoder = decoders.WordPiece()
        if style == "wordpiece_course":
            hf.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
            hf.pre_tokenizer = pre_tokenizers.Whitespace()
        else:
            cased = style == "bert_cased"
            hf.normalizer = normalizers.BertNormalizer(lowercase=not cased, strip_accents=False if cased else None)
            hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=1500, special_tokens=SPECIALS + [unk], show_progress=False)
    elif style == "quicktour":
        hf = tokenizers.Tokenizer(models.BPE(unk_token=unk))
        hf.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIALS + [unk], show_progress=False)
    else:
        hf = tokenizers.Tokenizer(models.WordLevel(unk_token=unk))
        hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.WordLevelTrainer(vocab_size=1500, special_tokens=SPECIALS + [unk], show_progress=False)
    hf.train_from_iterator(corpus, trainer=trainer)
    return hf


def train_unigram(style: str, corpus: list[str]):
    """Unigram models (SentencePiece's default), as `tokenizers` trains them:
    - unigram: NFKC, the Metaspace pre-tokenizer and decoder;
    - unigram_byte_fallback: the same with byte fallback (a char without a token is its bytes'
      `<0xNN>` tokens, not `<unk>`);
    - unigram_sentencepiece: the library's SentencePieceUnigramTokenizer (Nmt, NFKC, runs of
      spaces made one by a Replace regex);
    - unigram_spm: as transformers converts a SentencePiece model without a charsmap (Strip on
      the right, runs of spaces made one `▁`);
    - unigram_xglm: as transformers converts a default-trained SentencePiece model for XGLM
      (its nmt_nfkc charsmap as a Precompiled normalizer, runs of spaces made one)."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

    hf = tokenizers.Tokenizer(models.Unigram())
    hf.normalizer = {
        "unigram_sentencepiece": normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC(),
                                                       normalizers.Replace(Regex(" {2,}"), " ")]),
        "unigram_spm": normalizers.Sequence([normalizers.Strip(left=False, right=True),
                                             normalizers.Replace(Regex(" {2,}"), "\u2581")]),
    }.get(style, normalizers.NFKC())
    if style == "unigram_xglm":
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as folder:
            nmt_nfkc = charsmap(Path(folder), corpus[:300], "nmt_nfkc")
        hf.normalizer = normalizers.Sequence([normalizers.Precompiled(nmt_nfkc), normalizers.Replace(Regex(" {2,}"), " ")])
    hf.pre_tokenizer, hf.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)] if style == "unigram_byte_fallback" else []
    # the trainer keeps every char: room for them all, and as many pieces again
    alphabet = len(set("".join(corpus)))
    hf.train_from_iterator(corpus, trainer=trainers.UnigramTrainer(
        vocab_size=max(4000, 2 * alphabet), unk_token="<unk>", special_tokens=SPECIALS + ["<unk>"] + byte_tokens, show_progress=False))
    if byte_tokens:  # the trainer has no byte_fallback switch: set it in the file
        doc = json.loads(hf.to_str())
        doc["model"]["byte_fallback"] = True
        hf = tokenizers.Tokenizer.from_str(json.dumps(doc))
    return hf


UNIGRAM_STYLES = ["unigram", "unigram_byte_fallback", "unigram_sentencepiece", "unigram_spm", "unigram_xglm"]
WORD_STYLES = ["bert", "bert_cased", "wordpiece_course", "quicktour", "wordlevel", "charbpe", "gpt1"]
SENTENCEPIECE_STYLES = ["sentencepiece", "gemma", "metaspace_first", "metaspace_always_split", "metaspace_never_split",
                        "sentencepiece_unk", "sentencepiece_unk_fused"]
BYTE_LEVEL_STYLES = ["gpt2", "gpt2_prefix_space", "llama3", "o200k", "llama3_engine", "digits", "digit_runs", "qwen2",
                     "nfkc", "bloom", "falcon"]


@pytest.fixture(scope="module")
def corpus():
    return hard_strings(N_STRINGS, seed=7)


@pytest.fixture(scope="module", params=BYTE_LEVEL_STYLES + SENTENCEPIECE_STYLES + WORD_STYLES + UNIGRAM_STYLES)
def pair(request, corpus, tmp_path_factory):
    hf = train_hf(request.param, corpus[: N_STRINGS // 2])
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    hf.save(str(path))
    return hf, Tokenizer.load(path)


def test_ids_equal_the_tokenizers_library_on_hard_strings(pair, corpus):
    hf, tok = pair
    mismatches = [s for s in corpus if tok.encode(s) != hf.encode(s, add_special_tokens=False).ids]
    assert not mismatches, f"{len(mismatches)} of {len(corpus)} differ, first: {mismatches[0]!r}"


def test_unknown_chars_were_met(pair, corpus):
    """The styles that have an unknown token met it in the hard strings, so that its rules (one
    per run, bytes instead, the whole word) were checked."""
    hf, tok = pair
    model = json.loads(hf.to_str())["model"]
    unk = model.get("unk_token") or (model["vocab"][model["unk_id"]][0] if model.get("unk_id") is not None else None)
    if unk is None or model.get("byte_fallback"):
        return
    assert sum(hf.token_to_id(unk) in tok.encode(s) for s in corpus) > 50


def test_decode_equals_the_tokenizers_library(pair, corpus):
    hf, tok = pair
    for s in corpus[:300]:
        ids = hf.encode(s, add_special_tokens=False).ids
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=False)


def test_added_tokens_sit_at_their_ids_and_encode_ordinary_ignores_them(pair):
    hf, tok = pair
    assert {name: tok.special_tokens[name] for name in SPECIALS} == {name: hf.token_to_id(name) for name in SPECIALS}
    # the BPE and WordPiece trainers put them first, as GPT-2 does (WordLevel's puts them last,
    # Unigram's may learn their text again as a token, whose later id the library then gives)
    if json.loads(hf.to_str())["model"]["type"] in ("BPE", "WordPiece"):
        assert tok.special_tokens["<|endoftext|>"] == 0
    assert tok.special_tokens["<think>"] in tok.encode("x <think> y")
    # the special tokens' text as text: the library's encode_special_tokens mode (with Bloom's split
    # pattern, BPE may merge "<think>" into that very token, as the library does)
    ordinary = tok.encode_ordinary("x <think> y")
    hf.encode_special_tokens = True
    try:
        assert ordinary == hf.encode("x <think> y", add_special_tokens=False).ids
    finally:
        hf.encode_special_tokens = False
    assert tok.decode(ordinary) == hf.decode(ordinary, skip_special_tokens=False)


@pytest.mark.parametrize("style", ["gpt2", "unigram"])
def test_added_tokens_take_the_ids_the_library_gives_whatever_the_file_states(style, corpus):
    """A hand-edited file's added-token ids that disagree with the library's (transformers loads it
    with a warning): a token of the vocabulary takes its vocabulary id, a new one the next free id
    after the vocabulary, in the file's order."""
    doc = json.loads(train_hf(style, corpus[:500]).to_str())
    size = len(doc["model"]["vocab"])
    doc["added_tokens"][2]["id"] = size + 40  # <|im_end|>, in the vocabulary at 2
    doc["added_tokens"] += [dict(doc["added_tokens"][0], id=size + 7, content="<X>"),
                            dict(doc["added_tokens"][0], id=size + 3, content="<Y>")]
    text = json.dumps(doc)
    hf, tok = tokenizers.Tokenizer.from_str(text), Tokenizer.from_json(text)
    line = "a<X> b<Y><|im_end|>"
    assert tok.encode(line) == hf.encode(line, add_special_tokens=False).ids
    assert [tok.special_tokens[t] for t in ("<X>", "<Y>", "<|im_end|>")] == [size, size + 1, hf.token_to_id("<|im_end|>")]
    assert json.loads(tok.to_json())["added_tokens"][-1]["id"] == size + 1


def test_saved_text_is_the_file(pair, tmp_path):
    hf, tok = pair
    tok.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(hf.to_str())


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda d: d.update(normalizer={"type": "NFKD"}), "normalizer NFKD"),
        (lambda d: d["model"].update(byte_fallback=True), "byte_fallback"),
        (lambda d: d.update(decoder={"type": "Metaspace"}), "a ByteLevel pre-tokenizer without the ByteLevel decoder"),
        (lambda d: d["pre_tokenizer"]["pretokenizers"].append({"type": "Metaspace"}), "pre-tokenizer Metaspace after ByteLevel"),
        (lambda d: d["pre_tokenizer"]["pretokenizers"].insert(0, {"type": "Punctuation", "behavior": "Removed"}),
         "Punctuation behavior Removed"),
        (lambda d: d["pre_tokenizer"]["pretokenizers"].insert(0, {"type": "UnicodeScripts"}),
         "pre-tokenizer UnicodeScripts"),
        (lambda d: d.update(model={**d["model"], "type": "Unknown"}), "model type Unknown"),
        (lambda d: d.update(model={"type": "Unigram", "vocab": [["a", -1.0]]}, decoder=None, pre_tokenizer=None),
         "a Unigram model without an unk_id"),
        (lambda d: d.update(model={"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"a": 0}}, decoder=None,
                            pre_tokenizer=None),
         'the unk_token "\\[UNK\\]" is not in the vocabulary'),
        (lambda d: d["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"[a[^b]]"), "negated nested class"),
        (lambda d: d["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\w+"), r"the escape \\w"),
        (lambda d: d["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"(?<=a)b"), "lookbehind"),
        (lambda d: d["model"]["vocab"].update(zzqq=4294967295), "4294967295"),
        (lambda d: d["model"]["merges"].append(["zz", "qq"]), "merge"),
    ],
)
def test_what_the_reader_does_not_implement_is_refused_by_name(corpus, tmp_path, change, says):
    hf = train_hf("llama3", corpus[:200])
    doc = json.loads(hf.to_str())
    change(doc)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(MonologueError, match=says):
        Tokenizer.load(path)


def test_qwen2_pattern_is_recognised(corpus, tmp_path):
    hf = train_hf("llama3", corpus[:200])
    doc = json.loads(hf.to_str())
    doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = QWEN2_PATTERN
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc))
    hf = tokenizers.Tokenizer.from_file(str(path))
    tok = Tokenizer.load(path)
    for s in corpus[:300]:
        assert tok.encode(s) == hf.encode(s, add_special_tokens=False).ids



def normalizer_pair(form, folder):
    """(`tokenizers`, ours) for a byte-level tokenizer without merges, normalizer `form` (a name,
    or the normalizer), pieces the lines: ids show the normalized text."""
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.normalizer = getattr(normalizers, form)() if isinstance(form, str) else form
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.save(str(folder / "tokenizer.json"))
    return hf, Tokenizer.load(folder / "tokenizer.json")


def normalizer_mismatches(hf, tok, code_points) -> list[str]:
    """Code points whose normalization differs, alone or after "a" with marks of two classes
    around it (what reordering and composition act on)."""
    chars = [chr(c) for c in code_points if not 0xD800 <= c <= 0xDFFF]
    wrong = []
    for probe in (lambda c: c, lambda c: f"a\u0323{c}\u0301"):
        for at in range(0, len(chars), 4096):
            chunk = [probe(c) for c in chars[at : at + 4096]]
            text = "\n".join(chunk)
            if tok.encode_ordinary(text) != hf.encode(text, add_special_tokens=False).ids:
                wrong += [hex(ord(c)) for c, p in zip(chars[at : at + 4096], chunk)
                          if tok.encode_ordinary(p) != hf.encode(p, add_special_tokens=False).ids]
    return wrong


@pytest.mark.parametrize("form", ["NFC", "NFKC"])
def test_normalizers_equal_the_tokenizers_library(form, tmp_path):
    """Every code point that decomposes or is a mark (by Python's Unicode data), the conjoining
    jamo, and every 64th other; benchmarks/bench_tokenizer_hf.py checks all of them."""
    import unicodedata

    hf, tok = normalizer_pair(form, tmp_path)
    active = [c for c in range(0x110000) if unicodedata.decomposition(chr(c)) or unicodedata.combining(chr(c))]
    code_points = sorted({*active, *range(0x1100, 0x1200), *range(0, 0x110000, 64)})
    assert not normalizer_mismatches(hf, tok, code_points)


# the planes where chars are assigned (0-3 and 14), whole, and every 64th code point of the others
ASSIGNED_PLANES = sorted({*range(0x40000), *range(0xE0000, 0xF0000), *range(0, 0x110000, 64)})
BERT_NORMALIZERS = {
    "bert_uncased": dict(),  # clean_text, handle_chinese_chars, strip_accents (as lowercase), lowercase
    "bert_cased": dict(lowercase=False),
    "bert_strip_only": dict(lowercase=False, strip_accents=True, clean_text=False, handle_chinese_chars=False),
}


@pytest.mark.parametrize("name", [*BERT_NORMALIZERS, "NFD", "Lowercase", "NFD+StripAccents", "Nmt"])
def test_bert_style_normalizers_equal_the_tokenizers_library_on_every_code_point(name, tmp_path):
    """BertNormalizer's parts, NFD, Lowercase and StripAccents on every code point of planes 0-3
    and 14 and every 64th of the rest (unassigned and private-use), alone and among marks: the
    runtime's tables (measured from `tokenizers`, whose own are of older Unicode versions) and its
    NFD agree with the library."""
    from tokenizers import normalizers

    if name in BERT_NORMALIZERS:
        normalizer = normalizers.BertNormalizer(**BERT_NORMALIZERS[name])
    elif name == "NFD+StripAccents":
        normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents()])
    else:
        normalizer = getattr(normalizers, name)()
    hf, tok = normalizer_pair(normalizer, tmp_path)
    assert not normalizer_mismatches(hf, tok, ASSIGNED_PLANES)


def charsmap(folder, corpus: list[str], rules: str) -> bytes:
    """The precompiled_charsmap of a SentencePiece model trained with normalization `rules`: a
    rule name (nmt_nfkc: a default-trained model's), or "every char", which maps every code point
    but NUL and "Y" to "Y" (built from a rule file by sentencepiece's own trainer)."""
    from sentencepiece import sentencepiece_model_pb2

    if rules == "every char":
        (folder / "rules.tsv").write_text("".join(f"{cp:X}\t59\n" for cp in range(1, 0x110000)
                                                  if not 0xD800 <= cp <= 0xDFFF and cp != 0x59))
        overrides = dict(normalization_rule_tsv=str(folder / "rules.tsv"), normalization_rule_name="")
    else:
        overrides = dict(normalization_rule_name=rules)
    model = train_sentencepiece(folder, corpus, model_type="unigram", byte_fallback=False, **overrides)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.read_bytes())
    return proto.normalizer_spec.precompiled_charsmap


@pytest.mark.parametrize("rules", ["nmt_nfkc", "nmt_nfkc_cf", "every char"])
def test_precompiled_normalizer_equals_the_tokenizers_library(rules, corpus, tmp_path):
    """SentencePiece's charsmap as `tokenizers` applies it, on each code point (of ASSIGNED_PLANES)
    alone and beside "a", before a mark, and on the hard strings: a grapheme cluster shorter than
    6 bytes is replaced whole by the shortest key it starts with ("\r\n" becomes one space, "Ａ"
    and a mark become "A"), anything else char by char. With every char a key, each pair that is
    one cluster shows, so the cluster rules are checked on every code point."""
    from tokenizers import normalizers

    hf, tok = normalizer_pair(normalizers.Precompiled(charsmap(tmp_path, corpus[:300], rules)), tmp_path)
    assert not normalizer_mismatches(hf, tok, ASSIGNED_PLANES)
    chars = [chr(c) for c in ASSIGNED_PLANES if not 0xD800 <= c <= 0xDFFF]
    for probe in (lambda c: "a" + c, lambda c: c + "a", lambda c: c + "\r\n"):
        for at in range(0, len(chars), 4096):
            text = "\n".join(probe(c) for c in chars[at : at + 4096])
            assert tok.encode_ordinary(text) == hf.encode(text).ids, (rules, at)
    wrong = [s for s in corpus if tok.encode_ordinary(s) != hf.encode(s).ids]
    assert not wrong, f"{len(wrong)} of {len(corpus)} differ, first: {wrong[0]!r}"


@pytest.mark.parametrize("pattern, content", [(" {2,}", "\u2581"), ("(?:x|\u2581)+", "-"), ("c+(?=b)|é", "<>"), ("ab", "")])
def test_replace_normalizer_equals_the_tokenizers_library(pattern, content, tmp_path):
    """Replace by a regex (on the Rust regex engine) and by a string. A regex that can match the
    empty string is refused (on some of its empty matches the library itself panics)."""
    from tokenizers import Regex, normalizers

    rng = random.Random(5)
    texts = ["".join(rng.choices("abcx  \u2581é", k=rng.randint(0, 12))) for _ in range(400)]
    for spelled in (Regex(pattern), pattern) if pattern.isalpha() else (Regex(pattern),):
        hf, tok = normalizer_pair(normalizers.Replace(spelled, content), tmp_path)
        wrong = [t for t in texts if tok.encode_ordinary(t) != hf.encode(t).ids]
        assert not wrong, wrong[:5]
    with pytest.raises(MonologueError, match="can match the empty string"):
        normalizer_pair(normalizers.Replace(Regex(pattern + "|x*"), content), tmp_path)


@pytest.mark.parametrize("pre_tokenizer", ["Whitespace", "BertPreTokenizer", "WhitespaceSplit"])
def test_word_pre_tokenizers_split_every_code_point_as_the_tokenizers_library(pre_tokenizer, tmp_path):
    r""""a" c "a" for each code point c (as above), through a WordLevel that knows only "a": one unknown
    word where c is a word char (Whitespace's `\w`), two a's where c is whitespace, and a, c, a
    where the pre-tokenizer splits c off (punctuation, or Whitespace's other chars)."""
    from tokenizers import models, pre_tokenizers

    hf = tokenizers.Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    hf.pre_tokenizer = getattr(pre_tokenizers, pre_tokenizer)()
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path / "tokenizer.json")
    chars = [chr(c) for c in ASSIGNED_PLANES if not 0xD800 <= c <= 0xDFFF]
    wrong = []
    for at in range(0, len(chars), 8192):
        probes = [f"a{c}a" for c in chars[at : at + 8192]]
        if tok.encode_ordinary(" ".join(probes)) != hf.encode(" ".join(probes)).ids:
            wrong += [hex(ord(p[1])) for p in probes if tok.encode_ordinary(p) != hf.encode(p).ids]
    assert not wrong, f"{len(wrong)} code points split differently, first: {wrong[:10]}"


# Added tokens with each flag, and text that puts them where the flags matter: after and before
# whitespace, inside words, decomposed (the normalized ones are found after NFC).
FLAGGED = [
    ("<L>", {"lstrip": True, "special": True, "normalized": False}),
    ("<R>", {"rstrip": True, "special": True, "normalized": False}),
    ("<LR>", {"lstrip": True, "rstrip": True, "special": True, "normalized": False}),
    ("word", {"single_word": True, "normalized": True}),
    ("hello world", {"normalized": True}),
    ("naïve", {"normalized": True, "single_word": True, "rstrip": True}),
    ("<raw>", {"normalized": False}),
    ("<Up>", {"normalized": True, "special": True}),  # kept, and decoded, as the normalizer makes it
]
FLAGGED_TEXT = ["<L>", "<R>", "<LR>", "word", "words", "sword", "hello world", "hello  world", "naïve", "nai\u0308ve",
                "naïve_", "<raw>", "<Up>", "<up>", " ", "  ", "\n", "\u3000", "x", "1", "²", "Ⅻ", "_", "\u0301", "é", "\u200d", "-"]


@pytest.mark.parametrize("style", ["llama3", "qwen2", "gpt2_prefix_space", "sentencepiece", "metaspace_first", "bert",
                                   "unigram_xglm"])
def test_added_token_flags_equal_the_tokenizers_library(style, corpus, tmp_path):
    hf = train_hf(style, corpus[:500])
    hf.add_tokens([tokenizers.AddedToken(content, **flags) for content, flags in FLAGGED])
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path / "tokenizer.json")
    rng = random.Random(3)
    texts = ["".join(rng.choices(FLAGGED_TEXT, k=rng.randint(1, 8))) for _ in range(1500)]
    texts += [s[: len(s) // 2] + "".join(rng.choices(FLAGGED_TEXT, k=3)) + s[len(s) // 2 :] for s in corpus[:500]]
    mismatches = [t for t in texts if tok.encode(t) != hf.encode(t, add_special_tokens=False).ids]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, first: {mismatches[0]!r}"
    decoded = [t for t in texts[:500] if tok.decode(tok.encode(t)) != hf.decode(tok.encode(t), skip_special_tokens=False)]
    assert not decoded, f"{len(decoded)} decodes differ, first: {decoded[0]!r}"


# --- a vocabulary of chars without byte tokens (nanoGPT's meta.pkl as the compiler writes it) ------

@pytest.mark.parametrize("unknown", ["dropped", "unk", "fused_unk"])
def test_a_char_vocabulary_without_byte_tokens_equals_the_tokenizers_library(corpus, tmp_path, unknown):
    """BPE over chars with the decoder Fuse alone and no byte fallback: a char outside the (limited)
    alphabet is left out, or is the unk token (one per run with fuse_unk), and merges then join its
    neighbours as `tokenizers` joins them."""
    from tokenizers import decoders, models, trainers

    unk = None if unknown == "dropped" else "<unk>"
    hf = tokenizers.Tokenizer(models.BPE(unk_token=unk, fuse_unk=unknown == "fused_unk"))
    hf.decoder = decoders.Fuse()
    hf.train_from_iterator(corpus[: N_STRINGS // 2], trainer=trainers.BpeTrainer(
        vocab_size=400, limit_alphabet=60, special_tokens=[unk] if unk else [], show_progress=False))
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    tok = Tokenizer.load(path)
    strings = corpus + ["a\u00e9\u00e9b", "\u00e9\u00e9\u00e9", "x\U0001f642\U0001f642y"]
    mismatches = [s for s in strings if tok.encode(s) != hf.encode(s).ids]
    assert not mismatches, f"{len(mismatches)} of {len(strings)} differ, first: {mismatches[0]!r}"
    vocab = hf.get_vocab()
    assert sum(c not in vocab for s in strings for c in s) > 1000  # the unknown chars were exercised
    for s in corpus[:300]:
        ids = hf.encode(s).ids
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=False)
    if unknown != "dropped":
        assert tok.encode("\U0001f642\U0001f642") == hf.encode("\U0001f642\U0001f642").ids != []


# --- a SentencePiece model (llama2.c's tok*.model, Llama-2's tokenizer.model) ---------------------

def train_sentencepiece(folder, corpus: list[str], **overrides) -> "Path":
    """A SentencePiece BPE trained as llama2.c's train_vocab trains one (byte fallback, digits split,
    identity normalization)."""
    sentencepiece = pytest.importorskip("sentencepiece")
    (folder / "corpus.txt").write_text("\n".join(s.replace("\n", " ") for s in corpus), encoding="utf-8")
    options = dict(input=str(folder / "corpus.txt"), model_prefix=str(folder / "tok"), model_type="bpe",
                   vocab_size=1000, self_test_sample_size=0, input_format="text", character_coverage=0.98, hard_vocab_limit=False,
                   num_threads=2, split_digits=True, allow_whitespace_only_pieces=True, byte_fallback=True,
                   unk_surface=r" \342\201\207 ", normalization_rule_name="identity", minloglevel=2)
    sentencepiece.SentencePieceTrainer.train(**{**options, **overrides})
    return folder / "tok.model"


def test_a_sentencepiece_model_reads_as_transformers_converts_it(corpus, tmp_path):
    """`--tokenizer tok.model`: the ids transformers' LlamaTokenizer gives for the same file (its
    conversion to a tokenizer.json, byte fallback and `▁` included) on the hard strings."""
    from transformers import AutoTokenizer

    model = train_sentencepiece(tmp_path, corpus[:500])
    tok = Tokenizer.load(model)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "tokenizer.model").write_bytes(model.read_bytes())
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    auto = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    strings = [s for s in corpus[:800] if not any(x in s for x in SPECIALS)]
    mismatches = [s for s in strings if tok.encode(s) != auto(s, add_special_tokens=False)["input_ids"]]
    assert not mismatches, f"{len(mismatches)} of {len(strings)} differ, first: {mismatches[0]!r}"
    assert {"<unk>": 0, "<s>": 1, "</s>": 2}.items() <= tok.special_tokens.items()


@pytest.mark.parametrize("overrides, says", [(dict(model_type="char"), "model type CHAR"),
                                             (dict(normalization_rule_name="nmt_nfkc"), "normalization 'nmt_nfkc'"),
                                             (dict(byte_fallback=False), "no byte_fallback")])
def test_a_sentencepiece_model_not_trained_as_llamas_is_refused_by_name(corpus, tmp_path, overrides, says):
    model = train_sentencepiece(tmp_path, corpus[:300], **overrides)
    with pytest.raises(MonologueError, match=f"tok.model: a SentencePiece model with {says}"):
        Tokenizer.load(model)


SENTENCEPIECE_UNIGRAMS = {
    "default": {},  # nmt_nfkc, extra whitespace removed, a dummy prefix
    "byte_fallback": dict(byte_fallback=True),
    "identity_spaces_kept": dict(normalization_rule_name="identity", remove_extra_whitespaces=False),
    "nfkc_cf_no_prefix": dict(normalization_rule_name="nmt_nfkc_cf", add_dummy_prefix=False),
    # pieces always found whole and never normalized (a chat's markers, a fullwidth letter NFKC
    # would change, a prefix of a common word, and one that ends in a space)
    "user_defined": dict(user_defined_symbols=["<think>", "</think>", "<|im_start|>", "Ｘ", "th", "a▁"]),
}


@pytest.mark.parametrize("name", SENTENCEPIECE_UNIGRAMS)
def test_a_sentencepiece_unigram_model_tokenizes_as_the_sentencepiece_library(name, corpus, tmp_path):
    """`--tokenizer tok.model` of a Unigram model (SentencePiece's default type): the ids the
    sentencepiece library itself gives on the hard strings, whatever its normalization rules, and
    its decode (but of <unk>, which reads as its piece, not " ⁇ "). transformers' converters do not
    reproduce the library here: tokenizers applies a charsmap by the shortest key of a grapheme
    cluster, the library by the longest key at each position."""
    sentencepiece = pytest.importorskip("sentencepiece")
    options = dict(model_type="unigram", byte_fallback=False, normalization_rule_name="nmt_nfkc", vocab_size=1500)
    model = train_sentencepiece(tmp_path, corpus[:800], **{**options, **SENTENCEPIECE_UNIGRAMS[name]})
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    tok = Tokenizer.load(model)
    strings = corpus + ["  two  spaces \t\n ", "\r\nＡ\u0301ﬁ", "", " ", "<s> </s> <unk>", " <think>x</think> ",
                        "<|im_start|>user\nthe Ｘ X <thin <think><think>", "a a  a\u2581 ▁a▁ <|im_start|"]
    mismatches = [s for s in strings if tok.encode_ordinary(s) != sp.encode(s)]
    assert not mismatches, f"{len(mismatches)} of {len(strings)} differ, first: {mismatches[0]!r}"
    if name != "byte_fallback":
        assert sum(sp.unk_id() in sp.encode(s) for s in corpus) > 50  # unknown chars were met
    for s in corpus[:400]:
        ids = sp.encode(s)
        if sp.unk_id() not in ids:
            assert tok.decode(ids) == sp.decode(ids), s
    assert tok.special_tokens["<s>"] == sp.bos_id()


def test_text_streamed_token_by_token_equals_the_whole_decode(pair, corpus):
    """`monologue chat` shows a reply token by token: each token read after the one before it, so
    a decoder that treats a text's first token apart (Llama-2's Strip, Metaspace's dropped `▁`)
    does so once, and the text shown is the whole reply's decode."""
    from monologue_compile.chat import TextStream

    hf, tok = pair
    for s in corpus[:200]:
        ids = tok.encode_ordinary(s)
        stream = TextStream(tok)
        for i in ids:
            stream.add(i)
        stream.finish()
        assert stream.text == tok.decode(ids), s
