"""Generate runtime_rs/src/tokenizers_tables.rs: the char sets and the lowercase mapping of the
`tokenizers` library's BertNormalizer, Lowercase, StripAccents, Whitespace and Punctuation
(BertNormalizer's strip_accents and the StripAccents normalizer remove different sets of marks),
and the grapheme clusters its Precompiled normalizer (SentencePiece's charsmap) maps whole,
measured from the library itself, one code point at a time.

They are measured rather than built from Unicode data because the library's own tables are of
different ages (tokenizers 0.23: its punctuation and nonspacing marks are from about Unicode 9,
the `regex` crate's `\\w` from a newer one, and Rust's lowercase from the compiler that built the
wheel), and the runtime must split exactly as the file's tokenizer does on every char, in every
build (the wasm runtime is built by an older Rust, with older tables of its own). Regenerate with
the `tokenizers` version the tests compare against:

    python runtime_rs/scripts/gen_tokenizers_tables.py > runtime_rs/src/tokenizers_tables.rs
"""

from __future__ import annotations

import tokenizers
from tokenizers import normalizers, pre_tokenizers

CODE_POINTS = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]


def bert(**only) -> normalizers.Normalizer:
    flags = dict(clean_text=False, handle_chinese_chars=False, strip_accents=False, lowercase=False)
    return normalizers.BertNormalizer(**{**flags, **only})


def ranges(code_points: list[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for cp in code_points:
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return [(a, b) for a, b in out]


def every_char_keyed_charsmap() -> bytes:
    """A SentencePiece precompiled charsmap that maps every code point but NUL and "Y" to "Y",
    built by sentencepiece's own trainer from a rule file."""
    import tempfile
    from pathlib import Path

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "rules.tsv").write_text("".join(f"{cp:X}\t59\n" for cp in CODE_POINTS if cp not in (0, 0x59)))
        (folder / "corpus.txt").write_text("hello world\n" * 50)
        spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "m"), vocab_size=20,
                                       normalization_rule_tsv=str(folder / "rules.tsv"), minloglevel=2, hard_vocab_limit=False)
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString((folder / "m.model").read_bytes())
        return proto.normalizer_spec.precompiled_charsmap


def grapheme_sets() -> dict[str, list[int]]:
    """The Precompiled normalizer maps a grapheme cluster shorter than 6 bytes by the shortest key
    it starts with, else char by char; so which chars join a cluster (in the `unicode-segmentation`
    tables of the wheel) shows through a charsmap that maps every char to "Y": a pair of chars is
    one cluster exactly where it becomes one "Y"."""
    precompiled = normalizers.Precompiled(every_char_keyed_charsmap())
    one = lambda text: precompiled.normalize_str(text) == "Y"  # noqa: E731
    chars = [cp for cp in CODE_POINTS if cp not in (0, 0x59)]
    return {
        "grapheme_extend": [cp for cp in chars if one("a" + chr(cp))],
        "grapheme_prepend": [cp for cp in chars if one(chr(cp) + "a")],
        # a char that nothing joins (a control, CR, LF); a 4-byte one starts no short cluster anyway
        "grapheme_control": [cp for cp in chars if cp < 0x10000 and not one(chr(cp) + "\u0301")],
    }


def measure() -> dict:
    clean, chinese, strip, lower = bert(clean_text=True), bert(handle_chinese_chars=True), bert(strip_accents=True), bert(lowercase=True)
    marks = normalizers.StripAccents()
    whitespace, punctuation = pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()
    split = pre_tokenizers.WhitespaceSplit()
    sets: dict[str, list[int]] = {"control": [], "chinese": [], "nonspacing": [], "marks": [], "word": [], "punctuation": []}
    lowercase: dict[int, str] = {}
    for cp in CODE_POINTS:
        c = chr(cp)
        cleaned = clean.normalize_str(c)
        if cleaned == "":
            sets["control"].append(cp)
        # what the runtime assumes: else a whitespace char (Rust's `char::is_whitespace`, what
        # WhitespaceSplit splits at) becomes a space, and nothing else changes
        white = len(split.pre_tokenize_str(f"a{c}a")) == 2
        assert cleaned == ("" if cleaned == "" else " " if white else c), hex(cp)
        if chinese.normalize_str(c) == f" {c} ":
            sets["chinese"].append(cp)
        if strip.normalize_str(c) == "":
            sets["nonspacing"].append(cp)
        if marks.normalize_str(c) == "":
            sets["marks"].append(cp)
        if lower.normalize_str(c) != c:
            lowercase[cp] = lower.normalize_str(c)
        # "a" c "a": one piece where c is a word char, two where it is whitespace, three otherwise
        if len(whitespace.pre_tokenize_str(f"a{c}a")) == 1:
            sets["word"].append(cp)
        if len(punctuation.pre_tokenize_str(f"a{c}a")) == 3:
            sets["punctuation"].append(cp)
    return {"sets": {**sets, **grapheme_sets()}, "lowercase": lowercase}


DOCS = {
    "control": "Chars BertNormalizer's clean_text removes (controls, format and private-use chars, U+0000, U+FFFD).",
    "chinese": "Chars BertNormalizer's handle_chinese_chars puts spaces around (CJK ideographs).",
    "nonspacing": "Nonspacing marks (Mn), which BertNormalizer's strip_accents removes after its NFD.",
    "marks": "Combining marks (M), which the StripAccents normalizer removes.",
    "word": "The chars of the Whitespace pre-tokenizer's `\\w` (the `regex` crate's: Alphabetic, marks, Nd, Pc, joiners).",
    "punctuation": "The chars the Punctuation and BertPreTokenizer pre-tokenizers split off (ASCII punctuation and P*).",
    "grapheme_extend": "Chars that join the grapheme cluster before them (Extend, ZWJ, SpacingMark), as the Precompiled normalizer segments.",
    "grapheme_prepend": "Chars that the next char joins (Prepend), as the Precompiled normalizer segments.",
    "grapheme_control": "Chars below U+10000 that no char joins (controls, CR, LF), as the Precompiled normalizer segments.",
}


def main() -> None:
    data = measure()
    print("// @generated by runtime_rs/scripts/gen_tokenizers_tables.py — do not edit.")
    print(f"// Measured from the `tokenizers` library {tokenizers.__version__}, one code point at a time.")
    for name, code_points in data["sets"].items():
        print(f"\n/// {DOCS[name]}\npub static {name.upper()}: &[(u32, u32)] = &[")
        spans = ranges(code_points)
        for at in range(0, len(spans), 6):
            print("    " + " ".join(f"(0x{a:X}, 0x{b:X})," for a, b in spans[at : at + 6]))
        print("];")
    single = {cp: s for cp, s in data["lowercase"].items() if len(s) == 1}
    multi = {cp: s for cp, s in data["lowercase"].items() if len(s) > 1}
    print("\n/// Lowercase (the Lowercase normalizer and BertNormalizer's lowercase): (char, its lowercase), sorted.")
    print("pub static LOWERCASE: &[(u32, u32)] = &[")
    items = sorted(single.items())
    for at in range(0, len(items), 6):
        print("    " + " ".join(f"(0x{cp:X}, 0x{ord(s):X})," for cp, s in items[at : at + 6]))
    print("];")
    print("\n/// The chars whose lowercase is more than one char.")
    print("pub static LOWERCASE_MULTI: &[(u32, &str)] = &[")
    for cp, s in sorted(multi.items()):
        escaped = "".join("\\u{%X}" % ord(ch) for ch in s)
        print(f'    (0x{cp:X}, "{escaped}"),')
    print("];")


if __name__ == "__main__":
    main()
