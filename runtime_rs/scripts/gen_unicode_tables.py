"""Generate runtime_rs/src/unicode_tables.rs: the character classes the split pattern needs, and
the general categories and simple case folding the regex engine (runtime_rs/src/regex.rs) needs.

The split pattern uses three classes, defined as the Rust `regex` crate (the engine behind
tiktoken) defines them:
  \\p{L}  general category L*  (Lu Ll Lt Lm Lo)
  \\p{N}  general category N*  (Nd Nl No)
  \\s     the Unicode White_Space property = Zs, Zl, Zp, U+0009..U+000D and U+0085
          (not Python's str.isspace(), which also counts U+001C..U+001F)
The table is a sorted list of disjoint ranges, each tagged with its class; anything not listed
is "other".

The regex engine looks up any general category (\\p{Lu}, \\p{M}, ...) in a packed table of range
starts, `start << 5 | category index`, and folds case with the simple (one char to one char)
folding: `casefold()` when it gives one char, else `lower()` when that gives one char (so U+1E9E
folds to U+00DF, and U+0130, whose folds are all two chars, folds to nothing). `MULTI_FOLDS` lists
what the full folding turns single chars into when that is longer than one char: Oniguruma (the
engine behind the `tokenizers` library) lets such a string match the one char case-insensitively
("ss" matches "ß"), which the engine does not implement, so it refuses a case-insensitive pattern
that spells one.

The Unicode version must be the one of tiktoken's regex engine, or the tokenizers disagree on
newly assigned characters. tiktoken 0.14 uses Unicode 16.0 (checked over every code point by
tests/test_tokenizer_unicode.py); Python 3.11's own `unicodedata` is 14.0, which misses 9,392 code
points assigned since (9,272 letters, 120 numbers). So generate with the `unicodedata2` backport
pinned to the engine's version; it is used in preference to `unicodedata` when importable:

    pip install --target /tmp/ud2 unicodedata2==16.0.0
    PYTHONPATH=/tmp/ud2 python runtime_rs/scripts/gen_unicode_tables.py > runtime_rs/src/unicode_tables.rs
"""

from __future__ import annotations

import sys

try:  # newer Unicode than the interpreter's, when available
    import unicodedata2 as unicodedata  # type: ignore[import-not-found]
except ImportError:
    import unicodedata

OTHER, LETTER, NUMBER, WHITESPACE = 0, 1, 2, 3
CLASS_NAMES = {LETTER: "LETTER", NUMBER: "NUMBER", WHITESPACE: "WHITESPACE"}
EXTRA_WHITESPACE = set(range(0x09, 0x0E)) | {0x85}


def char_class(cp: int) -> int:
    category = unicodedata.category(chr(cp))
    if category[0] == "L":
        return LETTER
    if category[0] == "N":
        return NUMBER
    if category in ("Zs", "Zl", "Zp") or cp in EXTRA_WHITESPACE:
        return WHITESPACE
    return OTHER


def class_ranges() -> list[tuple[int, int, int]]:
    ranges: list[tuple[int, int, int]] = []
    for cp in range(0x110000):
        cls = char_class(cp)
        if cls == OTHER:
            continue
        if ranges and ranges[-1][1] == cp - 1 and ranges[-1][2] == cls:
            ranges[-1] = (ranges[-1][0], cp, cls)
        else:
            ranges.append((cp, cp, cls))
    return ranges


# General categories in the order of `regex.rs`'s category bits; "Cn" (unassigned) is 0.
CATEGORIES = ["Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe",
              "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"]


def category_starts() -> list[tuple[int, int]]:
    starts: list[tuple[int, int]] = []
    for cp in range(0x110000):
        index = CATEGORIES.index(unicodedata.category(chr(cp)))
        if not starts or starts[-1][1] != index:
            starts.append((cp, index))
    return starts


def simple_fold(cp: int) -> int | None:
    c = chr(cp)
    for folded in (c.casefold(), c.lower()):
        if len(folded) == 1:
            return ord(folded) if folded != c else None
    return None


def write_tables(out) -> None:
    starts = category_starts()
    out.write("\n/// General category by range: `start << 5 | index` (index into `CATEGORY_NAMES`), sorted;\n")
    out.write(f"/// each range runs to the next start. {len(starts)} ranges.\n")
    out.write(f"pub const CATEGORY_NAMES: [&str; {len(CATEGORIES)}] = {json_list(CATEGORIES)};\n")
    out.write("pub static CATEGORY_STARTS: &[u32] = &[\n")
    for i in range(0, len(starts), 8):
        out.write("    " + ", ".join(f"0x{cp << 5 | index:X}" for cp, index in starts[i : i + 8]) + ",\n")
    out.write("];\n")
    folds = [(cp, f) for cp in range(0x110000) if (f := simple_fold(cp)) is not None]
    out.write("\n/// Simple case folding (char, folded char), sorted by char; chars that fold to themselves are absent.\n")
    out.write("pub static CASE_FOLDS: &[(u32, u32)] = &[\n")
    for i in range(0, len(folds), 6):
        out.write("    " + ", ".join(f"(0x{cp:X}, 0x{f:X})" for cp, f in folds[i : i + 6]) + ",\n")
    out.write("];\n")
    multi = sorted({chr(cp).casefold() for cp in range(0x110000) if len(chr(cp).casefold()) > 1})
    out.write("\n/// What full case folding turns single chars into when longer than one char.\n")
    out.write(f"pub static MULTI_FOLDS: [&str; {len(multi)}] = {json_list(multi)};\n")


def json_list(items: list[str]) -> str:
    return "[" + ", ".join('"' + "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else f"\\u{{{ord(c):X}}}" for c in s) + '"' for s in items) + "]"


def main() -> None:
    ranges = class_ranges()
    out = sys.stdout
    out.write("// @generated by runtime_rs/scripts/gen_unicode_tables.py — do not edit.\n")
    out.write(f"// Unicode version {unicodedata.unidata_version}; {len(ranges)} ranges.\n\n")
    out.write(f'pub const UNICODE_VERSION: &str = "{unicodedata.unidata_version}";\n\n')
    out.write("#[derive(Clone, Copy, PartialEq, Eq, Debug)]\n")
    out.write("pub enum CharClass {\n    Other,\n    Letter,\n    Number,\n    Whitespace,\n}\n\n")
    out.write("/// Sorted, disjoint, inclusive ranges (first, last, class); gaps are `Other`.\n")
    out.write("pub static CLASS_RANGES: &[(u32, u32, CharClass)] = &[\n")
    for lo, hi, cls in ranges:
        out.write(f"    (0x{lo:X}, 0x{hi:X}, CharClass::{CLASS_NAMES[cls].title()}),\n")
    out.write("];\n")
    write_tables(out)


if __name__ == "__main__":
    main()
