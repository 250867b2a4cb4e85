//! SentencePiece's precompiled normalizer (`Precompiled` in tokenizer.json; the `nmt_nfkc` rules
//! of a default-trained SentencePiece model and the T5/XGLM/ALBERT family's files): a darts-clone
//! double-array trie from UTF-8 keys to replacement strings, applied as `tokenizers` applies it.
//! A grapheme cluster shorter than 6 bytes becomes the replacement of the shortest key it starts
//! with, if any (so `Ａ` + U+0301 becomes "A" and "\r\n" one space); anything else is replaced
//! char by char. The charsmap comes with a stranger's file: every index is checked, and a key
//! whose replacement is out of bounds or not UTF-8 counts as no key.

use crate::pretokenize::in_table;
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

    /// The replacement of the shortest key `key` starts with (darts-clone's common prefix
    /// search, first result).
    fn shortest_match(&self, key: &[u8]) -> Option<&str> {
        let unit = |pos: usize| self.trie.get(pos).copied();
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let mut pos = offset(unit(0)?);
        for &byte in key {
            if byte == 0 {
                return None;
            }
            pos ^= byte as usize;
            let u = unit(pos)?;
            if u & ((1 << 31) | 0xFF) != byte as u32 {
                return None;
            }
            pos ^= offset(u);
            if (u >> 8) & 1 == 1 {
                let start = (unit(pos)? & ((1 << 31) - 1)) as usize;
                let rest = self.normalized.get(start..)?;
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                return std::str::from_utf8(&rest[..end]).ok();
            }
        }
        None
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
