//! Unicode NFC, NFKC and NFD (the normalizers Qwen2/3 and others declare in tokenizer.json, and
//! the NFD under BERT's accent stripping): full canonical (NFKC: compatibility) decomposition,
//! canonical ordering of combining marks, then (but for NFD) canonical composition, from the
//! generated `normalize_tables` (Hangul syllables computed).

use std::borrow::Cow;

use crate::normalize_tables::{CANONICAL, COMBINING_CLASSES, COMPATIBILITY, COMPATIBILITY_CHARS, COMPOSITIONS, NFC_ACTIVE, NFKC_ACTIVE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Nfc,
    Nfkc,
    Nfd,
}

const S_BASE: u32 = 0xAC00;
const L_BASE: u32 = 0x1100;
const V_BASE: u32 = 0x1161;
const T_BASE: u32 = 0x11A7;
const L_COUNT: u32 = 19;
const V_COUNT: u32 = 21;
const T_COUNT: u32 = 28;
const N_COUNT: u32 = V_COUNT * T_COUNT;
const S_COUNT: u32 = L_COUNT * N_COUNT;

fn combining_class(c: u32) -> u8 {
    if c < 0x300 {
        return 0;
    }
    let key = c << 8 | 0xFF;
    let i = COMBINING_CLASSES.partition_point(|&entry| entry <= key);
    match i.checked_sub(1).map(|i| COMBINING_CLASSES[i]) {
        Some(entry) if entry >> 8 == c => (entry & 0xFF) as u8,
        _ => 0,
    }
}

fn push_decomposed(c: u32, compat: bool, out: &mut Vec<u32>) {
    if (S_BASE..S_BASE + S_COUNT).contains(&c) {
        let s = c - S_BASE;
        out.push(L_BASE + s / N_COUNT);
        out.push(V_BASE + (s % N_COUNT) / T_COUNT);
        if s % T_COUNT != 0 {
            out.push(T_BASE + s % T_COUNT);
        }
        return;
    }
    if let Ok(i) = CANONICAL.binary_search_by_key(&c, |&(from, _, _)| from) {
        let (_, first, second) = CANONICAL[i];
        push_decomposed(first, compat, out);
        if second != 0 {
            push_decomposed(second, compat, out);
        }
        return;
    }
    if compat {
        if let Ok(i) = COMPATIBILITY.binary_search_by_key(&c, |&(from, _)| from) {
            let at = (COMPATIBILITY[i].1 >> 5) as usize;
            for &part in &COMPATIBILITY_CHARS[at..at + (COMPATIBILITY[i].1 & 31) as usize] {
                push_decomposed(part, compat, out);
            }
            return;
        }
    }
    out.push(c);
}

fn compose_pair(first: u32, second: u32) -> Option<u32> {
    if (L_BASE..L_BASE + L_COUNT).contains(&first) && (V_BASE..V_BASE + V_COUNT).contains(&second) {
        return Some(S_BASE + ((first - L_BASE) * V_COUNT + (second - V_BASE)) * T_COUNT);
    }
    if (S_BASE..S_BASE + S_COUNT).contains(&first) && (first - S_BASE) % T_COUNT == 0 && (T_BASE + 1..T_BASE + T_COUNT).contains(&second) {
        return Some(first + (second - T_BASE));
    }
    COMPOSITIONS.binary_search_by_key(&(first, second), |&(a, b, _)| (a, b)).ok().map(|i| COMPOSITIONS[i].2)
}

/// Whether normalization leaves `c` as it is whatever surrounds it: it does not decompose, is
/// no mark and never joins a char before it.
#[inline]
fn inert(ch: char, form: Form) -> bool {
    let c = ch as u32;
    // below U+0300 nothing decomposes canonically or combines; ASCII has no compatibility mapping
    if c < 0x80 || (c < 0x300 && form == Form::Nfc) {
        return true;
    }
    if form == Form::Nfd {
        let decomposes = (S_BASE..S_BASE + S_COUNT).contains(&c) || CANONICAL.binary_search_by_key(&c, |&(from, _, _)| from).is_ok();
        return !decomposes && combining_class(c) == 0;
    }
    !in_table(ch, if form == Form::Nfc { NFC_ACTIVE } else { NFKC_ACTIVE })
}

/// Whether `c` is in `table`, sorted ranges of code points (the generated tables' layout).
pub(crate) fn in_table(c: char, table: &[(u32, u32)]) -> bool {
    let cp = c as u32;
    let i = table.partition_point(|&(first, _)| first <= cp);
    i > 0 && table[i - 1].1 >= cp
}

/// `text` in normalization form `form`; borrowed when every char is inert. Only the runs of
/// chars that are not, each with the char before it (which they may join), are normalized.
pub fn normalize(text: &str, form: Form) -> Cow<'_, str> {
    let next_active = |from: usize| text[from..].char_indices().find(|&(_, c)| !inert(c, form)).map(|(i, _)| from + i);
    let mut at = match next_active(0) {
        Some(at) => at,
        None => return Cow::Borrowed(text),
    };
    let mut out = String::with_capacity(text.len() + 16);
    let mut copied = 0;
    loop {
        let start = text[copied..at].char_indices().next_back().map_or(at, |(i, _)| copied + i);
        out.push_str(&text[copied..start]);
        let end = text[at..].char_indices().find(|&(_, c)| inert(c, form)).map_or(text.len(), |(i, _)| at + i);
        normalize_run(&text[start..end], form, &mut out);
        copied = end;
        match next_active(end) {
            Some(next) => at = next,
            None => break,
        }
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Append `text` in normalization form `form` to `out`.
fn normalize_run(text: &str, form: Form, out: &mut String) {
    let mut chars = Vec::with_capacity(text.len());
    for c in text.chars() {
        push_decomposed(c as u32, form == Form::Nfkc, &mut chars);
    }
    // canonical ordering: each run of marks stably sorted by class
    let mut i = 0;
    while i < chars.len() {
        if combining_class(chars[i]) == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && combining_class(chars[i]) != 0 {
            i += 1;
        }
        chars[start..i].sort_by_key(|&c| combining_class(c));
    }
    if form == Form::Nfd {
        out.extend(chars.into_iter().filter_map(char::from_u32));
        return;
    }
    // canonical composition: a char joins the last starter unless a char between them blocks it
    let mut composed: Vec<u32> = Vec::with_capacity(chars.len());
    let mut starter: Option<usize> = None;
    let mut last_class: Option<u8> = None; // of the last char kept after the starter
    for c in chars {
        let class = combining_class(c);
        if let Some(s) = starter {
            if last_class.map_or(true, |last| last < class) {
                if let Some(composite) = compose_pair(composed[s], c) {
                    composed[s] = composite;
                    continue;
                }
            }
        }
        if class == 0 {
            starter = Some(composed.len());
            last_class = None;
        } else {
            last_class = Some(class);
        }
        composed.push(c);
    }
    out.extend(composed.into_iter().filter_map(char::from_u32));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composes_decomposes_and_reorders() {
        assert_eq!(normalize("e\u{301}", Form::Nfc), "\u{e9}");
        assert_eq!(normalize("\u{1100}\u{1161}\u{11A8}", Form::Nfc), "\u{AC01}");
        assert_eq!(normalize("\u{212B}", Form::Nfc), "\u{C5}"); // a singleton: Angstrom sign
        assert_eq!(normalize("a\u{323}\u{302}", Form::Nfc), normalize("a\u{302}\u{323}", Form::Nfc));
        assert_eq!(normalize("\u{FB01}x\u{2460}", Form::Nfkc), "fix1");
        assert_eq!(normalize("\u{FB01}", Form::Nfc), "\u{FB01}");
        assert_eq!(normalize("\u{0958}", Form::Nfc), "\u{915}\u{93C}"); // a composition exclusion
        assert!(matches!(normalize("plain text", Form::Nfc), Cow::Borrowed(_)));
        assert!(matches!(normalize("Привет 漢字 안녕", Form::Nfc), Cow::Borrowed(_)));
        assert_eq!(normalize("\u{AC00}\u{11A8}", Form::Nfc), "\u{AC01}");
        assert_eq!(normalize("\u{DD9}\u{DCF}", Form::Nfc), "\u{DDC}"); // a second char of class 0
        assert_eq!(normalize("\u{E9}\u{AC01}", Form::Nfd), "e\u{301}\u{1100}\u{1161}\u{11A8}");
        assert_eq!(normalize("a\u{302}\u{323}\u{FB01}", Form::Nfd), "a\u{323}\u{302}\u{FB01}");
    }
}
