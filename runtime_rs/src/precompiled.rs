//! SentencePiece's precompiled normalizer (`Precompiled` in tokenizer.json; the `nmt_nfkc` rules
//! of a default-trained SentencePiece model and the T5/XGLM/ALBERT family's files): a darts-clone
//! double-array trie from UTF-8 keys to replacement strings, applied as `tokenizers` applies it.
//! A grapheme cluster shorter than 6 bytes becomes the replacement of the shortest key it starts
//! with, if any (so `Ａ` + U+0301 becomes "A" and "\r\n" one space); anything else is replaced
//! char by char. The charsmap comes with a stranger's file: every index is checked, and a key
//! whose replacement is out of bounds or not UTF-8 counts as no key.

use crate::normalize::in_table;
use crate::tokenizers_tables::{GRAPHEME_CONTROL, GRAPHEME_EXTEND, GRAPHEME_PREPEND};

#[derive(Debug)]
pub struct Precompiled {
    /// The double array's units.
    trie: Vec<u32>,
    /// The replacement strings, each ended by a NUL.
    normalized: Vec<u8>,
}

impl Precompiled {
    /// Read a charsmap: a little-endian u32 byte size of the trie, the trie's units, then the
    /// replacement strings.
    pub fn from_bytes(blob: &[u8]) -> Result<Precompiled, String> {
        let size = match blob.get(..4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
            None => return Err("a precompiled_charsmap shorter than its header".to_string()),
        };
        let units = blob.get(4..4 + size).filter(|_| size % 4 == 0 && size > 0).ok_or("a precompiled_charsmap whose trie size does not fit it")?;
        let trie = units.chunks_exact(4).map(|u| u32::from_le_bytes([u[0], u[1], u[2], u[3]])).collect();
        let normalized = blob[4 + size..].to_vec();
        if std::str::from_utf8(&normalized).is_err() {
            return Err("a precompiled_charsmap whose replacements are not UTF-8".to_string());
        }
        Ok(Precompiled { trie, normalized })
    }

    /// Call `found(length, replacement)` for each key that `key` starts with, shortest first
    /// (darts-clone's common prefix search), until it returns false.
    fn prefixes<'s>(&'s self, key: &[u8], mut found: impl FnMut(usize, Option<&'s str>) -> bool) {
        let unit = |pos: usize| self.trie.get(pos).copied();
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let mut pos = match unit(0) {
            Some(u) => offset(u),
            None => return,
        };
        for (i, &byte) in key.iter().enumerate() {
            if byte == 0 {
                return;
            }
            pos ^= byte as usize;
            let u = match unit(pos) {
                Some(u) if u & ((1 << 31) | 0xFF) == byte as u32 => u,
                _ => return,
            };
            pos ^= offset(u);
            if (u >> 8) & 1 == 1 {
                let replacement = unit(pos).and_then(|v| {
                    let rest = self.normalized.get((v & ((1 << 31) - 1)) as usize..)?;
                    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                    std::str::from_utf8(&rest[..end]).ok()
                });
                if !found(i + 1, replacement) {
                    return;
                }
            }
        }
    }

    /// The replacement of the shortest key `key` starts with.
    fn shortest_match(&self, key: &[u8]) -> Option<&str> {
        let mut shortest = None;
        self.prefixes(key, |_, replacement| {
            shortest = replacement;
            false
        });
        shortest
    }

    /// The length and replacement of the longest key `text` starts with (SentencePiece's own
    /// rule); a key that ends inside a char of `text` (a stranger's trie may hold one) is none.
    pub fn longest_match(&self, text: &str) -> Option<(usize, &str)> {
        let mut longest = None;
        self.prefixes(text.as_bytes(), |len, replacement| {
            if let (Some(r), true) = (replacement, text.is_char_boundary(len)) {
                longest = Some((len, r));
            }
            true
        });
        longest
    }

    /// `text` normalized.
    pub fn normalize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        while at < text.len() {
            let end = cluster_end(text, at);
            let cluster = &text[at..end];
            let whole = if cluster.len() < 6 { self.shortest_match(cluster.as_bytes()) } else { None };
            match whole {
                Some(replacement) => out.push_str(replacement),
                None => {
                    for (i, c) in cluster.char_indices() {
                        match self.shortest_match(&cluster.as_bytes()[i..i + c.len_utf8()]) {
                            Some(replacement) => out.push_str(replacement),
                            None => out.push(c),
                        }
                    }
                }
            }
            at = end;
        }
        out
    }
}

/// The end of the grapheme cluster that starts at `at`, by the rules that can make one shorter
/// than 6 bytes (CR LF; a Prepend joins what follows; marks, ZWJ and spacing marks join what
/// precedes; nothing joins a control), with the `tokenizers` wheel's tables.
fn cluster_end(text: &str, at: usize) -> usize {
    if text[at..].starts_with("\r\n") {
        return at + 2;
    }
    let mut chars = text[at..].chars();
    let first = chars.next().expect("at < text.len()");
    let mut end = at + first.len_utf8();
    if in_table(first, GRAPHEME_CONTROL) {
        return end;
    }
    let mut after_prepend = in_table(first, GRAPHEME_PREPEND);
    for c in chars {
        let joins = if after_prepend { !in_table(c, GRAPHEME_CONTROL) } else { in_table(c, GRAPHEME_EXTEND) };
        if !joins {
            break;
        }
        after_prepend = after_prepend && in_table(c, GRAPHEME_PREPEND);
        end += c.len_utf8();
    }
    end
}

/// SentencePiece's own normalizer (a `.model`'s normalizer_spec, as its C++ library applies it,
/// which `tokenizers`' Precompiled does not reproduce): at each position the longest key of the
/// charsmap (or the char itself), spaces collapsed and trimmed with `remove_extra_whitespaces`,
/// a space before the text with `add_dummy_prefix`, spaces written `▁` with `escape_whitespaces`.
#[derive(Debug)]
pub struct SentencePieceNormalizer {
    pub charsmap: Option<Precompiled>,
    /// The model's user-defined pieces, each passed through whole and unchanged where it starts.
    pub user_defined: Vec<String>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

impl SentencePieceNormalizer {
    /// The replacement of the longest user-defined piece or key at the start of `text` and how many
    /// bytes it takes.
    fn prefix<'s>(&'s self, text: &'s str) -> (&'s str, usize) {
        if let Some(piece) = self.user_defined.iter().filter(|p| text.starts_with(p.as_str())).max_by_key(|p| p.len()) {
            return (&text[..piece.len()], piece.len());
        }
        if let Some((len, replacement)) = self.charsmap.as_ref().and_then(|c| c.longest_match(text)) {
            return (replacement, len);
        }
        let len = text.chars().next().map_or(0, char::len_utf8);
        (&text[..len], len)
    }

    pub fn normalize(&self, text: &str) -> String {
        let mut input = text;
        if self.remove_extra_whitespaces {
            while !input.is_empty() {
                let (replacement, len) = self.prefix(input);
                if replacement != " " {
                    break;
                }
                input = &input[len..];
            }
        }
        if input.is_empty() {
            return String::new();
        }
        let space = if self.escape_whitespaces { "\u{2581}" } else { " " };
        let mut out = String::with_capacity(input.len() + 3);
        if self.add_dummy_prefix {
            out.push_str(space);
        }
        let mut after_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut replacement, len) = self.prefix(input);
            while after_space && replacement.starts_with(' ') {
                replacement = &replacement[1..];
            }
            if !replacement.is_empty() {
                out.push_str(&replacement.replace(' ', space));
                after_space = replacement.ends_with(' ');
            }
            input = &input[len..];
            if !self.remove_extra_whitespaces {
                after_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A charsmap as its bytes: the trie's units, then the replacement strings.
    fn blob(units: &[u32], normalized: &[u8]) -> Vec<u8> {
        let mut b = ((units.len() * 4) as u32).to_le_bytes().to_vec();
        units.iter().for_each(|u| b.extend(u.to_le_bytes()));
        b.extend(normalized);
        b
    }

    /// One key, the byte 0xC3 (the first byte of "é"), whose replacement is "x": a stranger's
    /// trie need not end its keys on char boundaries.
    fn half_char_key() -> Precompiled {
        let mut units = vec![0u32; 256];
        units[0xC3] = 0xC3 | (1 << 8) | (1 << 10); // a leaf, its value at 0xC3 ^ 1
        units[0xC2] = 0; // the value: offset 0 in the strings
        Precompiled::from_bytes(&blob(&units, b"x\0")).unwrap()
    }

    #[test]
    fn a_key_that_ends_inside_a_char_is_no_key() {
        let sp = SentencePieceNormalizer {
            charsmap: Some(half_char_key()),
            user_defined: Vec::new(),
            add_dummy_prefix: false,
            remove_extra_whitespaces: false,
            escape_whitespaces: false,
        };
        assert_eq!(sp.normalize("aé b"), "aé b");
        // tokenizers replaces the cluster a key starts, wherever the key ends
        assert_eq!(half_char_key().normalize("aé b"), "ax b");
    }

    #[test]
    fn random_charsmaps_never_panic() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let texts = ["", "a", "é", "\r\n", " \u{a0}x  y ", "ｶﾞ\u{301}\u{200d}", "日本語 text\u{0}"];
        for _ in 0..2000 {
            let n = 1 + (next() % 300) as usize;
            // mostly units labelled with their own index's low byte, so keys do match
            let units: Vec<u32> = (0..n)
                .map(|i| match next() % 3 {
                    0 => next() as u32,
                    _ => (i as u32 & 0xFF) | (next() as u32 & (1 << 8)) | ((next() % 4) as u32) << 10,
                })
                .collect();
            let strings: Vec<u8> = (0..(next() % 600)).flat_map(|_| ["a", "b", " ", "é", "\0"][(next() % 5) as usize].bytes()).collect();
            let charsmap = match Precompiled::from_bytes(&blob(&units, &strings)) {
                Ok(charsmap) => charsmap,
                Err(_) => continue,
            };
            for text in texts {
                charsmap.normalize(text);
            }
            let sp = SentencePieceNormalizer { charsmap: Some(charsmap), user_defined: vec!["é".to_string(), "a ".to_string()], add_dummy_prefix: true, remove_extra_whitespaces: true, escape_whitespaces: true };
            for text in texts {
                sp.normalize(text);
            }
        }
    }
}
