//! tokenizer.json, the one tokenizer file Python, Rust and the browser share:
//! `{"format": "monologue-tokenizer", "version": 1, "pattern": ..., "ranks": [base64, ...],
//!   "special_tokens": {name: id, ...}}` with list index == rank == token id.

use crate::base64;
use crate::bpe::{Rank, Tokenizer};
use crate::hf_tokenizer;
use crate::json::{self, Json};
use crate::pretokenize::SplitPattern;

pub const FORMAT: &str = "monologue-tokenizer";
pub const VERSION: u32 = 1;

/// The special tokens of a Monologue tokenizer, in id order.
pub const SPECIAL_TOKENS: [&str; 11] = [
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
];

/// A tokenizer.json of this project's format or of Hugging Face's (recognised by its "model").
pub fn from_json(text: &str) -> Result<Tokenizer, String> {
    let doc = json::parse(text)?;
    if doc.get("format").is_none() && doc.get("model").is_some() {
        return hf_tokenizer::from_doc(&doc, text);
    }
    if doc.get("format").and_then(Json::as_str) != Some(FORMAT) {
        return Err(format!("not a tokenizer.json: \"format\" must be \"{}\"", FORMAT));
    }
    match doc.get("version").and_then(Json::as_u32) {
        Some(VERSION) => {}
        _ => return Err(format!("unsupported tokenizer.json \"version\" (this reader knows {})", VERSION)),
    }
    let pattern = doc
        .get("pattern")
        .and_then(Json::as_str)
        .ok_or("tokenizer.json has no \"pattern\" string")?;
    let pattern = SplitPattern::parse(pattern)?;
    let ranks = match doc.get("ranks") {
        Some(Json::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let text = item.as_str().ok_or_else(|| format!("\"ranks\"[{}] is not a string", i))?;
                base64::decode(text).map_err(|e| format!("\"ranks\"[{}]: {}", i, e))
            })
            .collect::<Result<Vec<Vec<u8>>, String>>()?,
        _ => return Err("tokenizer.json has no \"ranks\" list".to_string()),
    };
    let specials = match doc.get("special_tokens") {
        Some(Json::Object(members)) => members
            .iter()
            .map(|(name, id)| {
                let id = id.as_u32().ok_or_else(|| format!("special token {} has a non-integer id", name))?;
                Ok((name.clone(), id as Rank))
            })
            .collect::<Result<Vec<(String, Rank)>, String>>()?,
        _ => return Err("tokenizer.json has no \"special_tokens\" object".to_string()),
    };
    Tokenizer::new(pattern, ranks, specials)
}

pub fn to_json(tok: &Tokenizer) -> String {
    if let Some(source) = tok.hf_source() {
        return source.to_string();
    }
    let mut out = String::with_capacity(tok.num_ranks() * 12 + 1024);
    out.push_str(&format!("{{\"format\": {}, \"version\": {}, \"pattern\": {},\n", json::quote(FORMAT), VERSION, json::quote(&tok.pattern().pattern_string())));
    out.push_str(" \"ranks\": [");
    for rank in 0..tok.num_ranks() {
        if rank > 0 {
            out.push_str(if rank % 16 == 0 { ",\n  " } else { ", " });
        }
        out.push('"');
        out.push_str(&base64::encode(tok.rank_bytes(rank)));
        out.push('"');
    }
    out.push_str("],\n \"special_tokens\": {");
    for (i, (name, id)) in tok.specials().iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&format!("{}: {}", json::quote(name), id));
    }
    out.push_str("}}\n");
    out
}
