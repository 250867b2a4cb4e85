//! Split patterns: the ones nanochat, GPT-4, Llama-3, Qwen2 and GPT-2 use are recognised by their
//! text and run hand-written (fast paths); any other pattern runs on the regex engine
//! (`crate::regex`), which the tests also use to check the fast paths piece for piece.
//!
//! The GPT-4/nanochat family:
//!
//! ```text
//! '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,K}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+
//! ```
//!
//! with K = 2 (nanochat) or 3 (GPT-4 cl100k). Alternatives are tried in order at each position
//! and the first that matches wins (leftmost-first, as in the `regex`/`fancy-regex` crates that
//! tiktoken uses). `\s`, `\p{L}` and `\p{N}` come from the generated `unicode_tables`.

use std::sync::Arc;

use crate::normalize::{in_table, normalize, Form};
use crate::precompiled::{Precompiled, SentencePieceNormalizer};
use crate::regex::Regex;
use crate::tokenizers_tables::{CHINESE, CONTROL, LOWERCASE, LOWERCASE_MULTI, PUNCTUATION, WORD};
use crate::unicode_tables::{CharClass, CLASS_RANGES};

pub const NANOCHAT_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

const PATTERN_HEAD: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,";
const PATTERN_TAIL: &str = r"}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// The character class of `c` for the split pattern.
#[inline]
pub fn class_of(c: char) -> CharClass {
    let cp = c as u32;
    if cp < 0x80 {
        return match c {
            'a'..='z' | 'A'..='Z' => CharClass::Letter,
            '0'..='9' => CharClass::Number,
            '\t' | '\n' | '\x0B' | '\x0C' | '\r' | ' ' => CharClass::Whitespace,
            _ => CharClass::Other,
        };
    }
    let ranges = CLASS_RANGES;
    let (mut lo, mut hi) = (0usize, ranges.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        let (first, last, class) = ranges[mid];
        if cp < first {
            hi = mid;
        } else if cp > last {
            lo = mid + 1;
        } else {
            return class;
        }
    }
    CharClass::Other
}

/// GPT-2's split pattern (also GPT-NeoX's and SmolLM's): case-sensitive contractions, no
/// digit cap, no line-break rules.
pub const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The pattern strings Hugging Face tokenizer.json files spell differently from ours but that
/// split identically: Llama-3's (the GPT-4 family with `\p{N}{1,3}`) and Qwen2's (`\p{N}`).
const HF_SPELLINGS: [(&str, usize); 2] = [
    (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+", 3),
    (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+", 1),
];

/// A split pattern: one of the hand-written families (the GPT-4/nanochat family, identified by
/// its longest digit group, or GPT-2's), or any other pattern compiled by the regex engine.
#[derive(Clone, Debug)]
pub enum SplitPattern {
    Gpt4 { max_digits: usize },
    Gpt2,
    Engine(Arc<Regex>),
}

impl Default for SplitPattern {
    fn default() -> Self {
        SplitPattern::Gpt4 { max_digits: 2 }
    }
}

/// The first char of `text[at..]` and its UTF-8 length.
#[inline]
fn char_at(text: &str, at: usize) -> Option<(char, usize)> {
    text[at..].chars().next().map(|c| (c, c.len_utf8()))
}

/// End of the run of chars of `class` starting at `at`.
#[inline]
fn run_end(text: &str, mut at: usize, class: CharClass) -> usize {
    for c in text[at..].chars() {
        if class_of(c) != class {
            break;
        }
        at += c.len_utf8();
    }
    at
}

/// `c` compared case-insensitively (Unicode simple case folding) with an ASCII lowercase letter
/// of the contractions; U+017F LATIN SMALL LETTER LONG S folds to `s`.
#[inline]
fn folds_to(c: char, lower: char) -> bool {
    c == lower || c == lower.to_ascii_uppercase() || (lower == 's' && c == '\u{17F}')
}

impl SplitPattern {
    /// A recognised pattern string runs hand-written; any other is compiled by the regex
    /// engine, which refuses what it does not implement by name.
    pub fn parse(pattern: &str) -> Result<SplitPattern, String> {
        match SplitPattern::recognise(pattern) {
            Some(fast) => Ok(fast),
            None => SplitPattern::engine(pattern),
        }
    }

    /// `pattern` compiled by the regex engine, even when a fast path recognises it.
    pub fn engine(pattern: &str) -> Result<SplitPattern, String> {
        Ok(SplitPattern::Engine(Arc::new(Regex::new(pattern)?)))
    }

    fn recognise(pattern: &str) -> Option<SplitPattern> {
        if pattern == GPT2_PATTERN {
            return Some(SplitPattern::Gpt2);
        }
        if let Some((_, max_digits)) = HF_SPELLINGS.iter().find(|(spelling, _)| *spelling == pattern) {
            return Some(SplitPattern::Gpt4 { max_digits: *max_digits });
        }
        if let Some(rest) = pattern.strip_prefix(PATTERN_HEAD) {
            if let Some(digits) = rest.strip_suffix(PATTERN_TAIL) {
                if let Ok(max_digits) = digits.parse::<usize>() {
                    if (1..=9).contains(&max_digits) {
                        return Some(SplitPattern::Gpt4 { max_digits });
                    }
                }
            }
        }
        None
    }

    pub fn pattern_string(&self) -> String {
        match self {
            SplitPattern::Gpt2 => GPT2_PATTERN.to_string(),
            SplitPattern::Gpt4 { max_digits } => format!("{}{}{}", PATTERN_HEAD, max_digits, PATTERN_TAIL),
            SplitPattern::Engine(regex) => regex.as_str().to_string(),
        }
    }

    /// Byte offset where the piece starting at `start` (< text.len()) ends, for a hand-written
    /// pattern (each matches at every position).
    fn piece_end(&self, text: &str, start: usize) -> usize {
        let (c0, len0) = match char_at(text, start) {
            Some(x) => x,
            None => return start,
        };
        let max_digits = match self {
            SplitPattern::Gpt4 { max_digits } => *max_digits,
            SplitPattern::Gpt2 => return gpt2_piece_end(text, start, c0, len0),
            SplitPattern::Engine(_) => unreachable!("the engine's pieces are searched"),
        };
        let after0 = start + len0;
        let next = char_at(text, after0);

        // '(?i:[sdmt]|ll|ve|re)
        if c0 == '\'' {
            if let Some((c1, len1)) = next {
                if folds_to(c1, 's') || folds_to(c1, 'd') || folds_to(c1, 'm') || folds_to(c1, 't') {
                    return after0 + len1;
                }
                let second = if folds_to(c1, 'l') {
                    Some('l')
                } else if folds_to(c1, 'v') || folds_to(c1, 'r') {
                    Some('e')
                } else {
                    None
                };
                if let Some(want) = second {
                    if let Some((c2, len2)) = char_at(text, after0 + len1) {
                        if folds_to(c2, want) {
                            return after0 + len1 + len2;
                        }
                    }
                }
            }
        }

        let class0 = class_of(c0);
        // [^\r\n\p{L}\p{N}]?+\p{L}+  (the optional char is possessive: taken whenever it can be)
        if class0 == CharClass::Letter {
            return run_end(text, after0, CharClass::Letter);
        }
        if class0 != CharClass::Number && c0 != '\r' && c0 != '\n' {
            if let Some((c1, _)) = next {
                if class_of(c1) == CharClass::Letter {
                    return run_end(text, after0, CharClass::Letter);
                }
            }
        }
        // \p{N}{1,K}
        if class0 == CharClass::Number {
            let mut end = after0;
            let mut taken = 1;
            for c in text[after0..].chars() {
                if taken == max_digits || class_of(c) != CharClass::Number {
                    break;
                }
                end += c.len_utf8();
                taken += 1;
            }
            return end;
        }
        //  ?[^\s\p{L}\p{N}]++[\r\n]*
        let symbols_from = if c0 == ' ' {
            match next {
                Some((c1, _)) if class_of(c1) == CharClass::Other => Some(after0),
                _ => None,
            }
        } else if class0 == CharClass::Other {
            Some(start)
        } else {
            None
        };
        if let Some(from) = symbols_from {
            let mut end = run_end(text, from, CharClass::Other);
            while let Some(b) = text.as_bytes().get(end) {
                if *b != b'\r' && *b != b'\n' {
                    break;
                }
                end += 1;
            }
            return end;
        }
        // c0 is whitespace. \s*[\r\n] ends at the last line break of the whitespace run.
        whitespace_piece_end(text, start, true)
    }

    /// The pieces of `text`, in order; they concatenate back to `text`.
    pub fn pieces<'p, 't>(&'p self, text: &'t str) -> Pieces<'p, 't> {
        Pieces { pattern: self, text, at: 0, search_from: 0, found: None }
    }

    /// Byte offsets at which `text` can be cut into independently pre-tokenized segments (none
    /// for an engine pattern, about which nothing is known).
    pub fn safe_cuts(&self, text: &str, target_segment: usize) -> Vec<usize> {
        match self {
            SplitPattern::Engine(_) => Vec::new(),
            _ => safe_cuts(text, target_segment),
        }
    }
}

/// The pieces as the `tokenizers` library's Split (behavior Isolated) makes them: the matches
/// and the non-empty stretches between them; an empty match only separates two stretches.
pub struct Pieces<'p, 't> {
    pattern: &'p SplitPattern,
    text: &'t str,
    at: usize,
    /// Where the next search starts (past an empty match at `at`).
    search_from: usize,
    /// A match found after a stretch that is returned first.
    found: Option<(usize, usize)>,
}

impl<'p, 't> Pieces<'p, 't> {
    fn next_searched(&mut self, regex: &Regex) -> usize {
        if let Some((_, end)) = self.found.take() {
            return end;
        }
        let text = self.text;
        let mut from = self.search_from.max(self.at);
        loop {
            match regex.find_at(text, from) {
                None => return text.len(),
                Some((start, end)) if start == end => {
                    from = start + char_at(text, start).map_or(1, |(_, len)| len);
                    if start > self.at {
                        self.search_from = from;
                        return start;
                    }
                }
                Some((start, end)) if start > self.at => {
                    self.found = Some((start, end));
                    return start;
                }
                Some((_, end)) => return end,
            }
        }
    }
}

impl<'p, 't> Iterator for Pieces<'p, 't> {
    type Item = &'t str;
    #[inline]
    fn next(&mut self) -> Option<&'t str> {
        if self.at >= self.text.len() {
            return None;
        }
        let end = match self.pattern {
            SplitPattern::Engine(regex) => self.next_searched(regex),
            fast => fast.piece_end(self.text, self.at),
        };
        let piece = &self.text[self.at..end];
        self.at = end;
        Some(piece)
    }
}

/// End of the piece of the whitespace run at `start`: with `line_breaks` (`\s*[\r\n]`) at its
/// last line break if it has one; else \s+(?!\S) leaves the run's last char for the next piece
/// when a non-space follows, and \s+ takes a lone whitespace char.
fn whitespace_piece_end(text: &str, start: usize, line_breaks: bool) -> usize {
    let mut end = start;
    let mut last_break_end = None;
    let mut last_char_start = start;
    for c in text[start..].chars() {
        if class_of(c) != CharClass::Whitespace {
            break;
        }
        last_char_start = end;
        end += c.len_utf8();
        if line_breaks && (c == '\r' || c == '\n') {
            last_break_end = Some(end);
        }
    }
    if let Some(e) = last_break_end {
        return e;
    }
    if end == text.len() || last_char_start == start {
        return end;
    }
    last_char_start
}

/// `piece_end` for GPT2_PATTERN.
fn gpt2_piece_end(text: &str, start: usize, c0: char, len0: usize) -> usize {
    let after0 = start + len0;
    let next = char_at(text, after0);
    if c0 == '\'' {
        let rest = &text.as_bytes()[after0..];
        for suffix in [&b"re"[..], b"ve", b"ll", b"s", b"t", b"m", b"d"] {
            if rest.starts_with(suffix) {
                return after0 + suffix.len();
            }
        }
    }
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional space, then a run of one class
    let (run_from, class) = match (c0, next) {
        (' ', Some((c1, _))) if class_of(c1) != CharClass::Whitespace => (after0, class_of(c1)),
        _ => (start, class_of(c0)),
    };
    if class != CharClass::Whitespace {
        return run_end(text, run_from, class);
    }
    whitespace_piece_end(text, start, false)
}

/// When Metaspace puts `▁` before a piece (after its spaces became `▁`): `Normalizer` is the
/// SentencePiece normalizer's Prepend (before any non-empty text), the others are Metaspace's
/// prepend_scheme (not before a piece that starts with `▁`; `First`: only at the input's start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepend {
    Normalizer,
    Always,
    First,
    Never,
}

pub(crate) const METASPACE: char = '\u{2581}';

/// One step of a Hugging Face pre-tokenizer (or of a normalizer: those only rewrite): each step
/// splits or rewrites every piece the steps before it made, as `tokenizers` applies a Sequence.
#[derive(Clone, Debug)]
pub enum Step {
    /// A Unicode normalization form (NFD, or NFC/NFKC after another normalizer).
    Normalize(Form),
    /// BertNormalizer's clean_text: controls removed, whitespace made a space.
    CleanText,
    /// BertNormalizer's handle_chinese_chars: a space on each side of every CJK ideograph.
    PadChinese,
    /// The chars of a table removed: StripAccents' combining marks (`tokenizers_tables::MARKS`),
    /// BertNormalizer's strip_accents' nonspacing marks after its NFD (`NONSPACING`).
    RemoveChars(&'static [(u32, u32)]),
    /// Lowercase (BertNormalizer's lowercase).
    Lowercase,
    /// Nmt (SentencePiece's NMT cleanup): some controls removed, some line breaks and format
    /// chars made spaces.
    Nmt,
    /// Strip: whitespace removed from the start and/or the end of the text.
    Strip { left: bool, right: bool },
    /// Replace: each match of the pattern (a string, or a regex run by the engine) by `content`.
    Replace { pattern: Arc<Regex>, content: String },
    /// Precompiled: SentencePiece's charsmap, as `tokenizers` applies it.
    Precompiled(Arc<Precompiled>),
    /// A SentencePiece `.model`'s own normalizer, as its library applies it.
    SentencePiece(Arc<SentencePieceNormalizer>),
    /// Whitespace: `\w+|[^\w\s]+`, each run of word chars or of other chars that are not
    /// whitespace a piece, the whitespace dropped.
    Whitespace,
    /// WhitespaceSplit (and the first half of BertPreTokenizer): cut at whitespace, dropping it.
    WhitespaceSplit,
    /// Split(Regex, Isolated); also the regex of ByteLevel(use_regex=true).
    Split(SplitPattern),
    /// Digits: every numeric (\p{N}) char a piece of its own, or each run of them one piece.
    Digits { individual: bool },
    /// Punctuation (ASCII punctuation or \p{P}): each such char a piece of its own (Isolated), or
    /// each run of them one piece (Contiguous, Falcon's).
    Punctuation { individual: bool },
    /// ByteLevel's add_prefix_space: a space before a piece that does not start with one.
    PrefixSpace,
    /// Spaces become `▁`, `▁` is prepended as `prepend` says; `split`: each `▁` starts a piece.
    Metaspace { prepend: Prepend, split: bool },
}

/// Push the parts of `piece` cut around the runs of chars where `inside` holds, each such char a
/// part of its own when `individual`.
fn split_runs(piece: &str, at_start: bool, individual: bool, inside: impl Fn(char) -> bool, out: &mut Vec<(String, bool)>) {
    let mut prev: Option<bool> = None;
    let mut cuts = piece.char_indices().filter_map(|(i, c)| {
        let is = inside(c);
        let cut = prev.map_or(false, |was| was != is || (is && individual));
        prev = Some(is);
        if cut {
            Some(i)
        } else {
            None
        }
    });
    push_cuts(piece, at_start, &mut cuts, out);
}

/// `tokenizers`' punctuation: ASCII punctuation (symbols such as `$+<=>^|~` too) or a char of a
/// Unicode punctuation category (in the library's own, older tables).
fn is_punctuation(c: char) -> bool {
    in_table(c, PUNCTUATION)
}

/// A char of the `regex` crate's Unicode `\w`, which `tokenizers` splits Whitespace and checks an
/// added token's single_word with: Alphabetic, a mark, Nd, Pc or a joiner (its tables).
pub(crate) fn is_word_char(c: char) -> bool {
    in_table(c, WORD)
}

fn lowercase_into(c: char, out: &mut String) {
    let cp = c as u32;
    if cp < 0x80 {
        out.push(c.to_ascii_lowercase());
    } else if let Ok(i) = LOWERCASE.binary_search_by_key(&cp, |&(from, _)| from) {
        out.extend(char::from_u32(LOWERCASE[i].1));
    } else if let Ok(i) = LOWERCASE_MULTI.binary_search_by_key(&cp, |&(from, _)| from) {
        out.push_str(LOWERCASE_MULTI[i].1);
    } else {
        out.push(c);
    }
}

/// `piece` with each char replaced by what `rewrite` pushes for it.
fn rewrite_chars(piece: &str, rewrite: impl Fn(char, &mut String)) -> String {
    let mut out = String::with_capacity(piece.len());
    for c in piece.chars() {
        rewrite(c, &mut out);
    }
    out
}

/// `text` with each match of `pattern` (leftmost first, never empty: such patterns are refused)
/// replaced by `content`.
fn replace_matches(pattern: &Regex, text: &str, content: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    while let Some((start, end)) = pattern.find_at(text, copied).filter(|&(start, end)| end > start) {
        out.push_str(&text[copied..start]);
        out.push_str(content);
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Push each run of chars of one kind (by `kind`) in `piece` to `out`, but the runs of kind 0.
fn push_runs(piece: &str, at_start: bool, kind: impl Fn(char) -> u8, out: &mut Vec<(String, bool)>) {
    let mut run: Option<(usize, u8)> = None;
    let end_run = |run: Option<(usize, u8)>, end: usize, out: &mut Vec<(String, bool)>| {
        if let Some((start, k)) = run {
            if k != 0 {
                out.push((piece[start..end].to_string(), at_start && start == 0));
            }
        }
    };
    for (i, c) in piece.char_indices() {
        let k = kind(c);
        if run.map_or(true, |(_, current)| current != k) {
            end_run(run, i, out);
            run = Some((i, k));
        }
    }
    end_run(run, piece.len(), out);
}

/// Push the parts of `piece` cut at `cuts` (increasing byte offsets) to `out`.
fn push_cuts(piece: &str, at_start: bool, cuts: &mut dyn Iterator<Item = usize>, out: &mut Vec<(String, bool)>) {
    let mut from = 0;
    for cut in cuts.chain(std::iter::once(piece.len())) {
        if cut > from {
            out.push((piece[from..cut].to_string(), at_start && from == 0));
            from = cut;
        }
    }
}

impl Step {
    /// What a normalizer's step makes of `piece` (`None`: a step that splits).
    fn rewritten(&self, piece: &str) -> Option<String> {
        Some(match self {
            Step::Normalize(form) => normalize(piece, *form).into_owned(),
            Step::CleanText => rewrite_chars(piece, |c, out| {
                if c.is_whitespace() && !in_table(c, CONTROL) {
                    out.push(' ');
                } else if !in_table(c, CONTROL) {
                    out.push(c);
                }
            }),
            Step::PadChinese => rewrite_chars(piece, |c, out| {
                if in_table(c, CHINESE) {
                    out.extend([' ', c, ' ']);
                } else {
                    out.push(c);
                }
            }),
            Step::RemoveChars(table) => piece.chars().filter(|&c| !in_table(c, table)).collect(),
            Step::Lowercase => rewrite_chars(piece, lowercase_into),
            Step::Nmt => rewrite_chars(piece, |c, out| match c as u32 {
                0x1..=0x8 | 0xB | 0xE..=0x1F | 0x7F | 0x8F | 0x9F => {}
                0x9 | 0xA | 0xC | 0xD | 0x1680 | 0x200B..=0x200F | 0x2028 | 0x2029 | 0x2581 | 0xFEFF | 0xFFFD => out.push(' '),
                _ => out.push(c),
            }),
            Step::Strip { left, right } => {
                let text = if *left { piece.trim_start() } else { piece };
                (if *right { text.trim_end() } else { text }).to_string()
            }
            Step::Replace { pattern, content } => replace_matches(pattern, piece, content),
            Step::Precompiled(charsmap) => charsmap.normalize(piece),
            Step::SentencePiece(normalizer) => normalizer.normalize(piece),
            _ => return None,
        })
    }

    /// Push the pieces `piece` becomes to `out`, each with whether it starts the input.
    fn apply(&self, piece: String, at_start: bool, out: &mut Vec<(String, bool)>) {
        if let Some(text) = self.rewritten(&piece) {
            out.push((text, at_start));
            return;
        }
        match self {
            Step::Split(pattern) => {
                let mut at = 0;
                let mut cuts = pattern.pieces(&piece).map(|p| {
                    at += p.len();
                    at
                });
                push_cuts(&piece, at_start, &mut cuts, out);
            }
            Step::Whitespace => {
                // a word char, whitespace, or neither: each run of one kind a piece, whitespace dropped
                let kind = |c: char| if is_word_char(c) { 1 } else if c.is_whitespace() { 0 } else { 2 };
                push_runs(&piece, at_start, kind, out);
            }
            Step::WhitespaceSplit => push_runs(&piece, at_start, |c| if c.is_whitespace() { 0 } else { 1 }, out),
            Step::Digits { individual } => split_runs(&piece, at_start, *individual, |c| class_of(c) == CharClass::Number, out),
            Step::Punctuation { individual } => split_runs(&piece, at_start, *individual, is_punctuation, out),
            Step::PrefixSpace => {
                out.push((if piece.starts_with(' ') { piece } else { format!(" {}", piece) }, at_start));
            }
            Step::Metaspace { prepend, split } => {
                let replaced = piece.replace(' ', "\u{2581}");
                let starts = replaced.starts_with(METASPACE);
                let add = match prepend {
                    Prepend::Normalizer => true,
                    Prepend::Always => !starts,
                    Prepend::First => !starts && at_start,
                    Prepend::Never => false,
                };
                let text = if add { format!("\u{2581}{}", replaced) } else { replaced };
                if *split {
                    let mut cuts = text.match_indices(METASPACE).map(|(i, _)| i);
                    push_cuts(&text, at_start, &mut cuts, out);
                } else {
                    out.push((text, at_start));
                }
            }
            _ => unreachable!("a normalizer's step is rewritten above"),
        }
    }
}

/// The pieces of `text` after `steps`; `at_start`: whether `text` starts the input.
pub fn apply_steps(steps: &[Step], text: &str, at_start: bool) -> Vec<String> {
    let mut pieces = vec![(text.to_string(), at_start)];
    for step in steps {
        let mut next = Vec::with_capacity(pieces.len());
        for (piece, first) in pieces {
            if !piece.is_empty() {
                step.apply(piece, first, &mut next);
            }
        }
        pieces = next;
    }
    pieces.into_iter().map(|(piece, _)| piece).filter(|p| !p.is_empty()).collect()
}

/// Byte offsets at which `text` can be cut into independently pre-tokenized segments: right
/// after a '\n' that is followed by a non-whitespace char no piece spans the cut (the pieces
/// that contain a line break end at it, and none that starts after it can take the '\n').
fn safe_cuts(text: &str, target_segment: usize) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut cuts = Vec::new();
    let mut at = target_segment;
    while at < bytes.len() {
        let mut i = at;
        while i + 1 < bytes.len() {
            if bytes[i] == b'\n' && text.is_char_boundary(i + 1) {
                let c = text[i + 1..].chars().next().unwrap();
                if class_of(c) != CharClass::Whitespace {
                    break;
                }
            }
            i += 1;
        }
        if i + 1 >= bytes.len() {
            break;
        }
        cuts.push(i + 1);
        at = i + 1 + target_segment;
    }
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<&str> {
        SplitPattern::default().pieces(text).collect()
    }

    #[test]
    fn splits_like_the_regex() {
        assert_eq!(split("Hello world"), vec!["Hello", " world"]);
        assert_eq!(split("I'm 12345"), vec!["I", "'m", " ", "12", "34", "5"]);
        assert_eq!(split("a  \n  b"), vec!["a", "  \n", " ", " b"]);
        assert_eq!(split("x   "), vec!["x", "   "]);
        assert_eq!(split(" !!\n\nx"), vec![" !!\n\n", "x"]);
        assert_eq!(split("WE'LL"), vec!["WE", "'LL"]);
    }

    #[test]
    fn safe_cuts_do_not_change_the_pieces() {
        let text = "one two\n\nthree!!\n  four\r\n5 six\n\t seven \n'll\n😀 end\n\n\n x";
        let cuts = safe_cuts(text, 3);
        assert!(cuts.len() > 3);
        let mut from = 0;
        let mut pieces = Vec::new();
        for cut in cuts.into_iter().chain(std::iter::once(text.len())) {
            pieces.extend(split(&text[from..cut]));
            from = cut;
        }
        assert_eq!(pieces, split(text));
    }

    #[test]
    fn gpt2_pattern_splits_like_the_regex() {
        let split = |text| SplitPattern::Gpt2.pieces(text).collect::<Vec<&str>>();
        assert_eq!(split("I'm 12345 it's"), vec!["I", "'m", " 12345", " it", "'s"]);
        assert_eq!(split("WE'LL a  \n  b"), vec!["WE", "'", "LL", " a", "  \n ", " b"]);
        assert_eq!(split(" !!\n\nx  "), vec![" !!", "\n", "\n", "x", "  "]);
    }

    /// Strings mixing what the patterns treat differently: letters of every case and script,
    /// marks, digits of several kinds, contractions (with folded letters), emoji with joiners,
    /// whitespace runs with and without line breaks, controls, random code points.
    fn hard_strings(n: usize) -> Vec<String> {
        const PARTS: &[&str] = &[
            "hello", "World", "HTMLParser", "naïve", "Straße", "ǅemal", "ΑΘΗΝΑ", "мир", "שָׁלוֹם", "नमस्ते", "漢字", "ｆｕｌｌ",
            "ʰʲ", "0", "42", "98765", "٣٤٥", "²³", "½", "Ⅻ", "'s", "'S", "'ſ", "'ll", "'lL", "'VE", "'re", "'d", "'M", "'", "’s",
            "😀", "👨‍👩‍👧‍👦", "🇫🇷", "#️⃣", "e\u{301}", "\u{301}", "क्षि", ".", "...", "!?", "(", "<|bos|>", "@#$", "—", "_",
            " ", "  ", "\t", "\n", "\r\n", "\n\n", " \n ", "\u{a0}", "\u{3000}", "\u{2028}", "\u{85}", "\u{1c}", "\u{200b}",
            "\u{0}", "\u{7f}",
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        (0..n)
            .map(|_| {
                let mut s = String::new();
                for _ in 0..1 + rand(20) {
                    if rand(6) == 0 {
                        let limit = [0x80, 0x800, 0x10000, 0x110000][rand(4) as usize];
                        s.extend(char::from_u32(rand(limit) as u32));
                    } else {
                        s.push_str(PARTS[rand(PARTS.len() as u64) as usize]);
                    }
                }
                s
            })
            .collect()
    }

    #[test]
    fn the_regex_engine_splits_like_every_fast_path() {
        let patterns = [NANOCHAT_PATTERN.to_string(), SplitPattern::Gpt4 { max_digits: 3 }.pattern_string(), GPT2_PATTERN.to_string()];
        let spellings = patterns.iter().map(String::as_str).chain(HF_SPELLINGS.iter().map(|(p, _)| *p));
        let texts = hard_strings(4000);
        for pattern in spellings {
            let fast = SplitPattern::parse(pattern).unwrap();
            assert!(!matches!(fast, SplitPattern::Engine(_)), "{} is not recognised", pattern);
            let engine = SplitPattern::engine(pattern).unwrap();
            for text in &texts {
                let want: Vec<&str> = fast.pieces(text).collect();
                let got: Vec<&str> = engine.pieces(text).collect();
                assert_eq!(got, want, "pattern {:?} on {:?}", pattern, text);
            }
        }
    }

    #[test]
    fn engine_pieces_keep_the_text_between_matches() {
        let split = |pattern, text| SplitPattern::parse(pattern).unwrap().pieces(text).map(str::to_string).collect::<Vec<_>>();
        assert_eq!(split(r"\p{N}+", "ab12cd3"), vec!["ab", "12", "cd", "3"]);
        // an empty match separates the text around it, and is no piece itself
        assert_eq!(split(r"x*", "abxxc"), vec!["a", "b", "xx", "c"]);
        assert_eq!(split(r"z", "abc"), vec!["abc"]);
        assert_eq!(split(r"(?=b)", "abab"), vec!["a", "ba", "b"]);
    }

    #[test]
    fn pattern_round_trips() {
        let p = SplitPattern::parse(NANOCHAT_PATTERN).unwrap();
        assert_eq!(p.pattern_string(), NANOCHAT_PATTERN);
        assert!(SplitPattern::parse("\\w+").unwrap_err().contains("\\w"));
    }
}
