//! Hugging Face `tokenizer.json` (the `tokenizers` library's format), BPE with merges in file
//! order and added tokens at any id, in two styles: byte-level (the ByteLevel pre-tokenizer alone
//! as in GPT-2, GPT-NeoX, SmolLM, or after a Split regex as in Llama-3, Qwen2) and SentencePiece
//! (Llama-2, Mistral, TinyLlama: normalizer Prepend `▁` + Replace ` `→`▁`, byte fallback to
//! `<0xNN>`, decoder Replace/ByteFallback/Fuse/Strip). Anything else in the file (another
//! model, normalizer, pre-tokenizer, decoder or flag) is refused by name rather than tokenized
//! differently.

use crate::bpe::{Rank, Tokenizer};
use crate::json::Json;
use crate::pretokenize::SplitPattern;

/// GPT-2's map from bytes to the printable chars byte-level vocabularies are written in.
fn byte_of_char() -> Vec<(char, u8)> {
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
    part.get("type").and_then(Json::as_str).unwrap_or("?")
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

/// (split pattern, add_prefix_space) of the pre-tokenizer.
fn pre_tokenizer(part: Option<&Json>) -> Result<(SplitPattern, bool), String> {
    let byte_level = |p: &Json, regex: bool| -> Result<bool, String> {
        require(type_of(p) == "ByteLevel", &format!("pre-tokenizer {}", type_of(p)))?;
        let use_regex = !matches!(p.get("use_regex"), Some(Json::Bool(false)));
        require(use_regex == regex, "a ByteLevel pre-tokenizer's use_regex with this pattern")?;
        Ok(flag(p, "add_prefix_space"))
    };
    match part {
        Some(p) if type_of(p) == "ByteLevel" => Ok((SplitPattern::Gpt2, byte_level(p, true)?)),
        Some(p) if type_of(p) == "Sequence" => {
            let steps = match p.get("pretokenizers") {
                Some(Json::Array(steps)) => steps,
                _ => return Err("tokenizer.json: a Sequence pre-tokenizer without its list".to_string()),
            };
            require(steps.len() == 2 && type_of(&steps[0]) == "Split", "a pre-tokenizer Sequence other than [Split, ByteLevel]")?;
            let split = &steps[0];
            require(split.get("behavior").and_then(Json::as_str) == Some("Isolated"), "a Split behavior other than Isolated")?;
            require(!flag(split, "invert"), "an inverted Split")?;
            let regex = split
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(Json::as_str)
                .ok_or("tokenizer.json: a Split pre-tokenizer without a Regex pattern")?;
            let pattern = SplitPattern::parse(regex)?;
            require(!byte_level(&steps[1], false)?, "add_prefix_space after a Split")?;
            Ok((pattern, false))
        }
        Some(p) => Err(format!("tokenizer.json: pre-tokenizer {} is not supported", type_of(p))),
        None => Err("tokenizer.json: a byte-level BPE needs a ByteLevel pre-tokenizer".to_string()),
    }
}

/// Whether the normalizer and decoder are SentencePiece's (Prepend + Replace; Replace,
/// ByteFallback, Fuse, Strip), with no pre-tokenizer.
fn is_sentencepiece(doc: &Json) -> Result<bool, String> {
    let steps = |part: Option<&Json>, key: &str| -> Vec<String> {
        match part.and_then(|p| p.get(key)) {
            Some(Json::Array(items)) => items.iter().map(|i| type_of(i).to_string()).collect(),
            _ => Vec::new(),
        }
    };
    let normalizer = doc.get("normalizer").filter(|n| **n != Json::Null);
    if normalizer.map(type_of) != Some("Sequence") {
        return Ok(false);
    }
    let names = steps(normalizer, "normalizers");
    require(names == ["Prepend", "Replace"], &format!("normalizer Sequence {:?}", names))?;
    let step = |i: usize| match normalizer.and_then(|n| n.get("normalizers")) {
        Some(Json::Array(items)) => items.get(i),
        _ => None,
    };
    require(step(0).and_then(|p| p.get("prepend")).and_then(Json::as_str) == Some("\u{2581}"), "a Prepend other than ▁")?;
    let replace = step(1);
    let replace_ok = |r: Option<&Json>, from: &str, to: &str| {
        r.and_then(|r| r.get("pattern")).and_then(|p| p.get("String")).and_then(Json::as_str) == Some(from)
            && r.and_then(|r| r.get("content")).and_then(Json::as_str) == Some(to)
    };
    require(replace_ok(replace, " ", "\u{2581}"), "a Replace other than ' ' -> ▁")?;
    match doc.get("pre_tokenizer") {
        None | Some(Json::Null) => {}
        Some(p) => return Err(format!("tokenizer.json: pre-tokenizer {} after a SentencePiece normalizer is not supported", type_of(p))),
    }
    let decoder = doc.get("decoder");
    let dec = steps(decoder, "decoders");
    require(dec == ["Replace", "ByteFallback", "Fuse", "Strip"], &format!("decoder Sequence {:?}", dec))?;
    let items = match decoder.and_then(|d| d.get("decoders")) {
        Some(Json::Array(items)) => items,
        _ => unreachable!(),
    };
    require(replace_ok(Some(&items[0]), "\u{2581}", " "), "a decoder Replace other than ▁ -> ' '")?;
    let strip = &items[3];
    require(
        strip.get("content").and_then(Json::as_str) == Some(" ")
            && strip.get("start").and_then(Json::as_u32) == Some(1)
            && strip.get("stop").and_then(Json::as_u32) == Some(0),
        "a decoder Strip other than one leading space",
    )?;
    Ok(true)
}

pub fn from_doc(doc: &Json, text: &str) -> Result<Tokenizer, String> {
    let model = doc.get("model").ok_or("tokenizer.json has no \"model\"")?;
    require(type_of(model) == "BPE", &format!("model type {}", type_of(model)))?;
    let metaspace = is_sentencepiece(doc)?;
    for key in ["dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"] {
        let unset = match model.get(key) {
            None | Some(Json::Null) => true,
            // with byte fallback every char has tokens, so the unknown token is never produced
            Some(Json::String(s)) => s.is_empty() || (key == "unk_token" && metaspace),
            _ => false,
        };
        require(unset, &format!("the BPE model's {}", key))?;
    }
    require(flag(model, "byte_fallback") == metaspace, "byte_fallback without the SentencePiece normalizer, or the reverse")?;
    if metaspace {
        let vocab = vocab_and_merges(model, |token| Ok(token.as_bytes().to_vec()))?;
        return Tokenizer::from_hf(SplitPattern::default(), vocab.0, &vocab.1, added_tokens(doc)?, flag(model, "ignore_merges"), false, true, text.to_string());
    }
    match doc.get("normalizer") {
        None | Some(Json::Null) => {}
        Some(n) => return Err(format!("tokenizer.json: normalizer {} is not supported", type_of(n))),
    }
    match doc.get("decoder") {
        Some(d) if type_of(d) == "ByteLevel" => {}
        Some(d) => return Err(format!("tokenizer.json: decoder {} is not supported", type_of(d))),
        None => return Err("tokenizer.json: a byte-level BPE needs a ByteLevel decoder".to_string()),
    }
    let (pattern, add_prefix_space) = pre_tokenizer(doc.get("pre_tokenizer"))?;
    let mut map: Vec<Option<u8>> = vec![None; 324];
    for (c, b) in byte_of_char() {
        map[c as usize] = Some(b);
    }
    let (vocab, merges) = vocab_and_merges(model, |token| token_bytes(token, &map))?;
    Tokenizer::from_hf(pattern, vocab, &merges, added_tokens(doc)?, flag(model, "ignore_merges"), add_prefix_space, false, text.to_string())
}

type VocabAndMerges = (Vec<(Vec<u8>, Rank)>, Vec<(Vec<u8>, Vec<u8>)>);

/// The model's vocabulary and merges, each token turned into bytes by `bytes`.
fn vocab_and_merges<F: Fn(&str) -> Result<Vec<u8>, String>>(model: &Json, bytes: F) -> Result<VocabAndMerges, String> {
    let vocab = match model.get("vocab") {
        Some(Json::Object(members)) => members
            .iter()
            .map(|(token, id)| {
                let id = id.as_u32().ok_or_else(|| format!("vocabulary token {:?} has a non-integer id", token))?;
                Ok((bytes(token)?, id as Rank))
            })
            .collect::<Result<Vec<(Vec<u8>, Rank)>, String>>()?,
        _ => return Err("tokenizer.json: the BPE model has no \"vocab\" object".to_string()),
    };
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

fn added_tokens(doc: &Json) -> Result<Vec<(String, Rank)>, String> {
    match doc.get("added_tokens") {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .iter()
            .map(|item| {
                let content = item.get("content").and_then(Json::as_str).ok_or("tokenizer.json: an added token without content")?;
                let id = item.get("id").and_then(Json::as_u32).ok_or_else(|| format!("added token {} has no integer id", content))?;
                for key in ["lstrip", "rstrip", "single_word"] {
                    require(!flag(item, key), &format!("added token {}'s {}", content, key))?;
                }
                Ok((content.to_string(), id as Rank))
            })
            .collect(),
        _ => Err("tokenizer.json: \"added_tokens\" is not a list".to_string()),
    }
}
