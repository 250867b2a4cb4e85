//! Hugging Face `tokenizer.json` (the `tokenizers` library's format): BPE with merges in file
//! order and added tokens at any id, in two styles. Byte-level (decoder ByteLevel): a
//! pre-tokenizer of Split regexes, Digits and Punctuation with ByteLevel, as in GPT-2, GPT-NeoX,
//! SmolLM, Llama-3, Qwen2, GPT-4o-style, StarCoder, Bloom and Falcon files (Falcon's Digits and
//! Split come after ByteLevel and so see each byte as its char). SentencePiece style:
//! the normalizer Prepend `▁` + Replace ` `→`▁` (Llama-2, Mistral v0.1, TinyLlama) or the Replace
//! alone (Gemma), or a Metaspace pre-tokenizer (newer Llama/Mistral files), maybe with Split and
//! Digits; decoder Replace/ByteFallback/Fuse[/Strip] or Metaspace; with byte fallback, or without
//! it (the `tokenizers` library's SentencePieceBPETokenizer). A vocabulary of chars without
//! byte tokens (decoder Fuse alone; nanoGPT's char-level meta.pkl as the compiler writes it). Without
//! byte tokens a char the vocabulary lacks is the unk_token or dropped, as `tokenizers` does. Either may normalize with NFC
//! (Qwen2/3) or NFKC first. Unigram files (T5's, XGLM's, SentencePieceUnigramTokenizer's), with
//! the Precompiled (SentencePiece's charsmap), Nmt, Strip and Replace normalizers. Word-based
//! files (BERT's, the `tokenizers` quicktour's): a WordPiece,
//! WordLevel or char BPE model after BertNormalizer, NFD, Lowercase or StripAccents and the
//! BertPreTokenizer, Whitespace or WhitespaceSplit pre-tokenizers, decoded by the WordPiece
//! decoder or, without one, with spaces between tokens. The normalizer and pre-tokenizer become
//! `Step`s applied in order. Anything else in the file (another model, normalizer,
//! pre-tokenizer, decoder or flag) is refused by name rather than tokenized differently.

use crate::bpe::{AddedFlags, Decoder, HfOptions, PieceModel, Rank, Tokenizer};
use crate::json::Json;
use crate::normalize::Form;
use crate::precompiled::{Precompiled, SentencePieceNormalizer};
use crate::pretokenize::{Prepend, SplitPattern, Step};
use crate::regex::Regex;
use crate::tokenizers_tables::{MARKS, NONSPACING};

/// GPT-2's map from bytes to the printable chars byte-level vocabularies are written in.
pub fn byte_of_char() -> Vec<(char, u8)> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut shifted = 0;
    (0..=255u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            (char::from_u32(c).unwrap(), b as u8)
        })
        .collect()
}

fn token_bytes(token: &str, map: &[Option<u8>]) -> Result<Vec<u8>, String> {
    token
        .chars()
        .map(|c| map.get(c as usize).copied().flatten())
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| format!("token {:?} has a char outside the byte-level alphabet", token))
}

fn type_of(part: &Json) -> &str {
    part.get("type").and_then(Json::as_str).unwrap_or("with no \"type\"")
}

fn flag(part: &Json, key: &str) -> bool {
    matches!(part.get(key), Some(Json::Bool(true)))
}

/// Refuse a setting the reader does not implement, naming it.
fn require(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("tokenizer.json: {} is not supported", what))
    }
}

fn items<'j>(part: &'j Json, key: &str) -> Result<&'j [Json], String> {
    match part.get(key) {
        Some(Json::Array(items)) => Ok(items),
        _ => Err(format!("tokenizer.json: a {} {} without its \"{}\" list", type_of(part), "Sequence", key)),
    }
}

/// A list of strings under `key` (none if absent), each non-empty.
fn strings_of(part: &Json, key: &str) -> Result<Vec<String>, String> {
    match part.get(key) {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .iter()
            .map(|item| match item.as_str() {
                Some(s) if !s.is_empty() => Ok(s.to_string()),
                _ => Err(format!("tokenizer.json: a {} {} entry that is not a non-empty string", type_of(part), key)),
            })
            .collect(),
        Some(_) => Err(format!("tokenizer.json: a {} {} that is not a list", type_of(part), key)),
    }
}

fn text_of<'j>(part: &'j Json, key: &str) -> Option<&'j str> {
    part.get(key).and_then(Json::as_str)
}

/// A Replace's (pattern string, content).
fn replace_of(part: &Json) -> (Option<&str>, Option<&str>) {
    (part.get("pattern").and_then(|p| p.get("String")).and_then(Json::as_str), text_of(part, "content"))
}

/// The normalizer: NFC or NFKC first (Qwen2/3) is returned, to run before the steps (it has a
/// fast path); the rest become steps: SentencePiece's Prepend("▁") + Replace(" ", "▁") or the
/// Replace alone (Gemma), NFD/NFC/NFKC, Lowercase, StripAccents, and BertNormalizer's parts.
fn normalizer_steps(part: Option<&Json>, steps: &mut Vec<Step>) -> Result<Option<Form>, String> {
    let part = match part {
        None | Some(Json::Null) => return Ok(None),
        Some(p) => p,
    };
    let mut list: Vec<&Json> = match type_of(part) {
        "Sequence" => items(part, "normalizers")?.iter().collect(),
        _ => vec![part],
    };
    let form = match list.first().map(|p| type_of(p)) {
        Some("NFC") => Some(Form::Nfc),
        Some("NFKC") => Some(Form::Nfkc),
        _ => None,
    };
    if form.is_some() {
        list.remove(0);
    }
    let space_to_meta = |p: &Json| replace_of(p) == (Some(" "), Some("\u{2581}"));
    let mut at = 0;
    while at < list.len() {
        match type_of(list[at]) {
            "Prepend" => {
                require(text_of(list[at], "prepend") == Some("\u{2581}"), "a Prepend other than ▁")?;
                require(list.get(at + 1).map_or(false, |p| space_to_meta(p)), "a Prepend without a Replace ' ' -> ▁ after it")?;
                steps.push(Step::Metaspace { prepend: Prepend::Normalizer, split: false });
                at += 1;
            }
            "Replace" if space_to_meta(list[at]) => steps.push(Step::Metaspace { prepend: Prepend::Never, split: false }),
            "Replace" => steps.push(replace_step(list[at])?),
            "Strip" => steps.push(Step::Strip { left: flag(list[at], "strip_left"), right: flag(list[at], "strip_right") }),
            "Nmt" => steps.push(Step::Nmt),
            "Precompiled" => match charsmap_of(list[at])? {
                Some(charsmap) => steps.push(Step::Precompiled(std::sync::Arc::new(charsmap))),
                None => return Err("tokenizer.json: a Precompiled normalizer without its precompiled_charsmap".to_string()),
            },
            // this project's, for a SentencePiece .model (monologue_compile/tokenizer.py writes it)
            "SentencePiece" => steps.push(Step::SentencePiece(std::sync::Arc::new(SentencePieceNormalizer {
                charsmap: charsmap_of(list[at])?,
                user_defined: strings_of(list[at], "user_defined")?,
                add_dummy_prefix: flag(list[at], "add_dummy_prefix"),
                remove_extra_whitespaces: flag(list[at], "remove_extra_whitespaces"),
                escape_whitespaces: flag(list[at], "escape_whitespaces"),
            }))),
            "NFD" => steps.push(Step::Normalize(Form::Nfd)),
            "NFC" => steps.push(Step::Normalize(Form::Nfc)),
            "NFKC" => steps.push(Step::Normalize(Form::Nfkc)),
            "Lowercase" => steps.push(Step::Lowercase),
            "StripAccents" => steps.push(Step::RemoveChars(MARKS)),
            "BertNormalizer" => bert_normalizer(list[at], steps)?,
            other => return Err(format!("tokenizer.json: normalizer {} is not supported", other)),
        }
        at += 1;
    }
    Ok(form)
}

/// A normalizer's precompiled_charsmap (base64), if it has one.
fn charsmap_of(part: &Json) -> Result<Option<Precompiled>, String> {
    let blob = match text_of(part, "precompiled_charsmap") {
        Some(blob) if !blob.is_empty() => blob,
        _ => return Ok(None),
    };
    let blob = crate::base64::decode(blob).map_err(|e| format!("tokenizer.json: a {} normalizer's charsmap: {}", type_of(part), e))?;
    Precompiled::from_bytes(&blob).map(Some).map_err(|e| format!("tokenizer.json: {}", e))
}

/// A Replace normalizer of a string or a regex (the engine's Oniguruma semantics).
fn replace_step(part: &Json) -> Result<Step, String> {
    let pattern = part.get("pattern");
    let regex = match (pattern.and_then(|p| p.get("Regex")), pattern.and_then(|p| p.get("String"))) {
        (Some(Json::String(regex)), _) => regex.clone(),
        (_, Some(Json::String(literal))) if !literal.is_empty() => escape(literal),
        _ => return Err("tokenizer.json: a Replace normalizer without a Regex or a non-empty String pattern".to_string()),
    };
    let content = text_of(part, "content").ok_or("tokenizer.json: a Replace normalizer without its content")?;
    let pattern = Regex::new(&regex).map_err(|e| format!("tokenizer.json: Replace normalizer: {}", e))?;
    // `tokenizers` itself panics on some empty matches of a Replace
    require(!pattern.can_match_empty(), &format!("a Replace normalizer whose pattern {:?} can match the empty string", regex))?;
    Ok(Step::Replace { pattern: std::sync::Arc::new(pattern), content: content.to_string() })
}

/// BertNormalizer as its steps, in its order: clean_text, handle_chinese_chars, strip_accents
/// (NFD, then the nonspacing marks removed; unset: as lowercase), lowercase.
fn bert_normalizer(part: &Json, steps: &mut Vec<Step>) -> Result<(), String> {
    let setting = |key: &str| match part.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("tokenizer.json: a BertNormalizer {} that is not a boolean", key)),
    };
    let lowercase = setting("lowercase")?.unwrap_or(true);
    if setting("clean_text")?.unwrap_or(true) {
        steps.push(Step::CleanText);
    }
    if setting("handle_chinese_chars")?.unwrap_or(true) {
        steps.push(Step::PadChinese);
    }
    if setting("strip_accents")?.unwrap_or(lowercase) {
        steps.extend([Step::Normalize(Form::Nfd), Step::RemoveChars(NONSPACING)]);
    }
    if lowercase {
        steps.push(Step::Lowercase);
    }
    Ok(())
}

/// Metaspace's prepend_scheme (older files: add_prefix_space).
fn prepend_scheme(part: &Json) -> Result<Prepend, String> {
    match (text_of(part, "prepend_scheme"), part.get("add_prefix_space")) {
        (Some("always"), _) | (None, Some(Json::Bool(true))) | (None, None) => Ok(Prepend::Always),
        (Some("first"), _) => Ok(Prepend::First),
        (Some("never"), _) | (None, Some(Json::Bool(false))) => Ok(Prepend::Never),
        (Some(other), _) => Err(format!("tokenizer.json: Metaspace prepend_scheme {:?} is not supported", other)),
        (None, Some(_)) => Err("tokenizer.json: a Metaspace add_prefix_space that is not a boolean".to_string()),
    }
}

/// Append the steps of pre-tokenizer `part` (a Sequence's in order) to `steps`, and those after
/// ByteLevel (which maps bytes to chars: Falcon's Digits and Split) to `byte_steps`, which then
/// see each byte as its char. ByteLevel only in a byte-level tokenizer; Metaspace only in a
/// SentencePiece-style one.
fn pre_tokenizer_steps(part: &Json, byte_level: bool, steps: &mut Vec<Step>, byte_steps: &mut Vec<Step>, ended: &mut bool) -> Result<(), String> {
    let kind = type_of(part);
    require(!*ended || matches!(kind, "Sequence" | "Split" | "Digits" | "Punctuation"), &format!("a pre-tokenizer {} after ByteLevel", kind))?;
    if *ended && kind != "Sequence" {
        // the same step, appended to byte_steps (nothing after it is ByteLevel's: checked above)
        return pre_tokenizer_steps(part, byte_level, byte_steps, &mut Vec::new(), &mut false);
    }
    match kind {
        "Sequence" => {
            for step in items(part, "pretokenizers")? {
                pre_tokenizer_steps(step, byte_level, steps, byte_steps, ended)?;
            }
        }
        "Punctuation" => {
            let individual = match text_of(part, "behavior").unwrap_or("Isolated") {
                "Isolated" => true,
                "Contiguous" => false,
                other => return Err(format!("tokenizer.json: a Punctuation behavior {} (Isolated and Contiguous are supported)", other)),
            };
            steps.push(Step::Punctuation { individual });
        }
        "Split" => {
            require(text_of(part, "behavior") == Some("Isolated"), "a Split behavior other than Isolated")?;
            require(!flag(part, "invert"), "an inverted Split")?;
            let pattern = part.get("pattern");
            let regex = match (pattern.and_then(|p| p.get("Regex")), pattern.and_then(|p| p.get("String"))) {
                (Some(Json::String(regex)), _) => regex.clone(),
                (_, Some(Json::String(literal))) => escape(literal),
                _ => return Err("tokenizer.json: a Split pre-tokenizer without a Regex or String pattern".to_string()),
            };
            steps.push(Step::Split(SplitPattern::parse(&regex)?));
        }
        "Digits" => steps.push(Step::Digits { individual: flag(part, "individual_digits") }),
        "Whitespace" => steps.push(Step::Whitespace),
        "WhitespaceSplit" => steps.push(Step::WhitespaceSplit),
        "BertPreTokenizer" => steps.extend([Step::WhitespaceSplit, Step::Punctuation { individual: true }]),
        "ByteLevel" => {
            require(byte_level, "a ByteLevel pre-tokenizer without the ByteLevel decoder")?;
            if flag(part, "add_prefix_space") {
                steps.push(Step::PrefixSpace);
            }
            if !matches!(part.get("use_regex"), Some(Json::Bool(false))) {
                steps.push(Step::Split(SplitPattern::Gpt2));
            }
            *ended = true;
        }
        "Metaspace" => {
            require(!byte_level, "a Metaspace pre-tokenizer in a byte-level tokenizer")?;
            require(text_of(part, "replacement").map_or(true, |r| r == "\u{2581}"), "a Metaspace replacement other than ▁")?;
            let split = !matches!(part.get("split"), Some(Json::Bool(false)));
            steps.push(Step::Metaspace { prepend: prepend_scheme(part)?, split });
        }
        other => return Err(format!("tokenizer.json: pre-tokenizer {} is not supported", other)),
    }
    Ok(())
}

/// `literal` as a regex that matches exactly it.
fn escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len() * 2);
    for c in literal.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The decoder of a tokenizer that is not byte-level: none (the tokens joined by spaces), WordPiece,
/// or a SentencePiece-style one.
fn decoder_of(part: Option<&Json>) -> Result<Decoder, String> {
    let part = match part {
        None | Some(Json::Null) => return Ok(Decoder::Spaced),
        Some(p) => p,
    };
    if type_of(part) == "BPEDecoder" {
        return Ok(Decoder::Suffix(text_of(part, "suffix").unwrap_or("</w>").to_string()));
    }
    if type_of(part) == "WordPiece" {
        let prefix = text_of(part, "prefix").unwrap_or("##").to_string();
        return Ok(Decoder::WordPiece { prefix, cleanup: !matches!(part.get("cleanup"), Some(Json::Bool(false))) });
    }
    if type_of(part) == "Fuse" {
        return Ok(Decoder::Plain);
    }
    if type_of(part) == "Metaspace" {
        require(text_of(part, "replacement").map_or(true, |r| r == "\u{2581}"), "a Metaspace decoder replacement other than ▁")?;
        return Ok(Decoder::Metaspace { drop_first: prepend_scheme(part)? != Prepend::Never });
    }
    let list = match type_of(part) {
        "Sequence" => items(part, "decoders")?,
        other => return Err(format!("tokenizer.json: decoder {} is not supported", other)),
    };
    let names: Vec<&str> = list.iter().map(type_of).collect();
    require(
        names == ["Replace", "ByteFallback", "Fuse"] || names == ["Replace", "ByteFallback", "Fuse", "Strip"],
        &format!("decoder Sequence {:?}", names),
    )?;
    require(replace_of(&list[0]) == (Some("\u{2581}"), Some(" ")), "a decoder Replace other than ▁ -> ' '")?;
    if let Some(strip) = list.get(3) {
        require(
            text_of(strip, "content") == Some(" ")
                && strip.get("start").and_then(Json::as_u32) == Some(1)
                && strip.get("stop").and_then(Json::as_u32) == Some(0),
            "a decoder Strip other than one leading space",
        )?;
    }
    Ok(Decoder::Fuse { strip_first_space: list.len() == 4 })
}

pub fn from_doc(doc: &Json, text: &str) -> Result<Tokenizer, String> {
    let model = doc.get("model").ok_or("tokenizer.json has no \"model\"")?;
    let kind = type_of(model);
    require(matches!(kind, "BPE" | "WordPiece" | "WordLevel" | "Unigram"), &format!("model type {}", kind))?;
    let byte_level = doc.get("decoder").map(type_of) == Some("ByteLevel");
    // a vocabulary of chars read back as they are, without byte tokens (nanoGPT's char-level meta.pkl)
    let plain = doc.get("decoder").map(type_of) == Some("Fuse");
    let char_level = !byte_level;
    require(kind == "BPE" || char_level, &format!("a {} model with the ByteLevel decoder", kind))?;
    // without byte fallback (SentencePieceBPETokenizer's files, a vocabulary of chars) a char that
    // has no token is the unk_token, or dropped where there is none
    let byte_fallback = matches!(kind, "BPE" | "Unigram") && flag(model, "byte_fallback");
    if kind == "BPE" {
        for key in ["dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"] {
            let unset = match model.get(key) {
                None | Some(Json::Null) => true,
                // with byte fallback every char has tokens, so the unknown token is never produced;
                // without it (plain) a char the vocabulary lacks becomes it; a word's chars are
                // spelled with the affixes over a vocabulary of chars (CharBPETokenizer's, GPT-1's)
                Some(Json::String(s)) => s.is_empty() || (key != "dropout" && char_level && (key == "unk_token" || !byte_fallback)),
                _ => false,
            };
            require(unset, &format!("the BPE model's {}", key))?;
        }
    }
    require(!byte_fallback || (char_level && !plain), "byte_fallback without a SentencePiece-style decoder")?;
    let mut steps = Vec::new();
    let normalizer = normalizer_steps(doc.get("normalizer"), &mut steps)?;
    let normalizer_steps = steps.len();
    require(
        !byte_level || !steps.iter().any(|s| matches!(s, Step::Metaspace { .. })),
        "a SentencePiece normalizer in a byte-level tokenizer",
    )?;
    let (mut ended, mut byte_steps) = (false, Vec::new());
    match doc.get("pre_tokenizer") {
        None | Some(Json::Null) => require(!byte_level, "a byte-level BPE without a ByteLevel pre-tokenizer")?,
        Some(p) => pre_tokenizer_steps(p, byte_level, &mut steps, &mut byte_steps, &mut ended)?,
    }
    require(!byte_level || ended, "a byte-level BPE without a ByteLevel pre-tokenizer")?;
    let decoder = if byte_level { Decoder::ByteLevel } else { decoder_of(doc.get("decoder"))? };
    let mut scores = Vec::new();
    let (vocab, merges) = if kind == "Unigram" {
        (unigram_vocab(model, &mut scores)?, Vec::new())
    } else if char_level {
        vocab_and_merges(model, kind == "BPE", |token| Ok(token.as_bytes().to_vec()))?
    } else {
        let mut map: Vec<Option<u8>> = vec![None; 324];
        for (c, b) in byte_of_char() {
            map[c as usize] = Some(b);
        }
        vocab_and_merges(model, true, |token| token_bytes(token, &map))?
    };
    let (added, added_flags) = added_tokens(doc)?;
    let unk_id = |u: &str| match vocab.iter().find(|(bytes, _)| bytes == u.as_bytes()) {
        Some(&(_, id)) => Ok(id),
        None => Err(format!("tokenizer.json: the unk_token {:?} is not in the vocabulary", u)),
    };
    let unk = match text_of(model, "unk_token").filter(|u| kind == "BPE" && char_level && !byte_fallback && !u.is_empty()) {
        None => None,
        Some(u) => Some((unk_id(u)?, flag(model, "fuse_unk"))),
    };
    // WordPiece and WordLevel make every piece the tokenizer meets their unk_token, without one
    let model_unk = || unk_id(text_of(model, "unk_token").unwrap_or(""));
    let piece_model = match kind {
        "WordPiece" => PieceModel::WordPiece {
            prefix: text_of(model, "continuing_subword_prefix").unwrap_or("##").to_string(),
            max_chars: match model.get("max_input_chars_per_word") {
                None | Some(Json::Null) => 100,
                Some(n) => n.as_u32().ok_or("tokenizer.json: a WordPiece max_input_chars_per_word that is not a count")? as usize,
            },
            unk: model_unk()?,
        },
        "WordLevel" => PieceModel::WordLevel { unk: model_unk()? },
        "Unigram" => {
            let unk = match model.get("unk_id").and_then(Json::as_u32) {
                Some(id) if (id as usize) < scores.len() => id,
                _ => return Err("tokenizer.json: a Unigram model without an unk_id in its vocabulary".to_string()),
            };
            let longest = vocab.iter().map(|(bytes, _)| bytes.len()).max().unwrap_or(0);
            // this project's, for a SentencePiece .model: its library's f32 sums
            PieceModel::unigram(scores, unk, true, longest, flag(model, "sentencepiece"))
        }
        _ => PieceModel::Bpe {
            prefix: text_of(model, "continuing_subword_prefix").unwrap_or("").to_string(),
            suffix: text_of(model, "end_of_word_suffix").unwrap_or("").to_string(),
        },
    };
    // this project's, for a SentencePiece .model: its control, unknown and unused pieces, which
    // its library never finds in text
    let unmatched = match model.get("unmatched") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(ids)) => ids.iter().map(|id| id.as_u32().ok_or("tokenizer.json: an unmatched id that is not an id")).collect::<Result<_, _>>()?,
        Some(_) => return Err("tokenizer.json: the model's \"unmatched\" is not a list of ids".to_string()),
    };
    let options = HfOptions {
        normalizer,
        unmatched,
        steps,
        byte_steps,
        normalizer_steps,
        added: added_flags,
        char_level,
        byte_fallback: byte_level || byte_fallback,
        unk,
        ignore_merges: flag(model, "ignore_merges"),
        model: piece_model,
        decoder,
        source: text.to_string(),
    };
    Tokenizer::from_hf(vocab, &merges, added, options)
}

/// A Unigram model's vocabulary, [token, score] pairs with ids in order; their scores to `scores`.
fn unigram_vocab(model: &Json, scores: &mut Vec<f64>) -> Result<Vec<(Vec<u8>, Rank)>, String> {
    let items = match model.get("vocab") {
        Some(Json::Array(items)) => items,
        _ => return Err("tokenizer.json: the Unigram model has no \"vocab\" list".to_string()),
    };
    let mut vocab = Vec::with_capacity(items.len());
    for (id, item) in items.iter().enumerate() {
        match item {
            Json::Array(pair) if pair.len() == 2 => match (&pair[0], &pair[1]) {
                (Json::String(token), Json::Number(score)) => {
                    vocab.push((token.as_bytes().to_vec(), id as Rank));
                    scores.push(*score);
                }
                _ => return Err(format!("tokenizer.json: Unigram vocabulary entry {} is not [token, score]", id)),
            },
            _ => return Err(format!("tokenizer.json: Unigram vocabulary entry {} is not [token, score]", id)),
        }
    }
    Ok(vocab)
}

type VocabAndMerges = (Vec<(Vec<u8>, Rank)>, Vec<(Vec<u8>, Vec<u8>)>);

/// The model's vocabulary and (for a BPE, `merges`) its merges, each token turned into bytes by `bytes`.
fn vocab_and_merges<F: Fn(&str) -> Result<Vec<u8>, String>>(model: &Json, merges: bool, bytes: F) -> Result<VocabAndMerges, String> {
    let vocab = match model.get("vocab") {
        Some(Json::Object(members)) => members
            .iter()
            .map(|(token, id)| {
                let id = id.as_u32().ok_or_else(|| format!("vocabulary token {:?} has a non-integer id", token))?;
                Ok((bytes(token)?, id as Rank))
            })
            .collect::<Result<Vec<(Vec<u8>, Rank)>, String>>()?,
        _ => return Err(format!("tokenizer.json: the {} model has no \"vocab\" object", type_of(model))),
    };
    if !merges {
        return Ok((vocab, Vec::new()));
    }
    let merges = match model.get("merges") {
        Some(Json::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let (left, right) = match item {
                    Json::String(s) => match s.split_once(' ') {
                        Some(pair) => pair,
                        None => return Err(format!("merge {} is not two tokens", i)),
                    },
                    Json::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                        (Some(l), Some(r)) => (l, r),
                        _ => return Err(format!("merge {} is not two tokens", i)),
                    },
                    _ => return Err(format!("merge {} is not two tokens", i)),
                };
                Ok((bytes(left)?, bytes(right)?))
            })
            .collect::<Result<Vec<(Vec<u8>, Vec<u8>)>, String>>()?,
        _ => return Err("tokenizer.json: the BPE model has no \"merges\" list".to_string()),
    };
    Ok((vocab, merges))
}

/// The added tokens (text, id) and their flags.
fn added_tokens(doc: &Json) -> Result<(Vec<(String, Rank)>, Vec<AddedFlags>), String> {
    match doc.get("added_tokens") {
        None | Some(Json::Null) => Ok((Vec::new(), Vec::new())),
        Some(Json::Array(items)) => items
            .iter()
            .map(|item| {
                let content = item.get("content").and_then(Json::as_str).ok_or("tokenizer.json: an added token without content")?;
                let id = item.get("id").and_then(Json::as_u32).ok_or_else(|| format!("added token {} has no integer id", content))?;
                let flags = AddedFlags {
                    lstrip: flag(item, "lstrip"),
                    rstrip: flag(item, "rstrip"),
                    single_word: flag(item, "single_word"),
                    normalized: flag(item, "normalized"),
                };
                Ok(((content.to_string(), id as Rank), flags))
            })
            .collect::<Result<Vec<_>, String>>()
            .map(|pairs| pairs.into_iter().unzip()),
        _ => Err("tokenizer.json: \"added_tokens\" is not a list".to_string()),
    }
}
