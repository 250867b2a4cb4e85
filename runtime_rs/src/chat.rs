//! The chat template, applied without Jinja: a conversation becomes text pieces (the template's
//! own strings and the messages' contents) and then token ids.
//!
//! The layout is data (`Template`, the manifest's "chat" section, docs/formats.md): the text that
//! opens the conversation, how a system message is placed, each role's prefix and suffix, the
//! generation prompt (with thinking on or off) and how earlier thoughts are rendered or dropped.
//! The compiler reduces a model's Jinja template to it and proves the reduction
//! (monologue_compile/chat_template.py). `Template::nanochat()` is this project's and nanochat's
//! layout: `<|bos|> <|user_start|> text <|user_end|> <|assistant_start|> <think> thought </think>
//! answer <|assistant_end|> ...`, a system message merged into the first user message as
//! `system + "\n\n" + user`.
//!
//! Special-token text is recognised in the template's strings only; in a message it stays text.
//! Ordinary text runs across template and content (as in the rendered string a tokenizer sees),
//! so the ids equal encoding the whole rendered text whenever no message spells a special token.

use crate::bpe::{Rank, Tokenizer};
use crate::json::Json;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Clone, Debug)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// The assistant's chain of thought; `None` renders no think block at all, `Some("")` an
    /// empty one.
    pub thought: Option<String>,
}

/// Messages from JSON: `[{"role": ..., "content": ..., "thought": ...}, ...]`.
pub fn messages_from_json(doc: &Json) -> Result<Vec<Message>, String> {
    let items = match doc {
        Json::Array(items) => items,
        _ => return Err("a conversation must be a list of messages".to_string()),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            if !matches!(item, Json::Object(_)) {
                return Err(format!("message {} is not an object", i));
            }
            let role = match item.get("role").and_then(Json::as_str) {
                Some("system") => Role::System,
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some(other) => return Err(format!("message {} has unknown role {:?} (system, user or assistant)", i, other)),
                None => return Err(format!("message {} has no \"role\"", i)),
            };
            let content = item
                .get("content")
                .and_then(Json::as_str)
                .ok_or_else(|| format!("message {} has no \"content\" string", i))?
                .to_string();
            let thought = match item.get("thought") {
                None | Some(Json::Null) => None,
                Some(Json::String(s)) if role == Role::Assistant => Some(s.clone()),
                Some(Json::String(_)) => return Err(format!("message {}: only assistant messages have a \"thought\"", i)),
                Some(_) => return Err(format!("message {}: \"thought\" must be a string", i)),
            };
            Ok(Message { role, content, thought })
        })
        .collect()
}

/// Which whitespace the template strips off a message's content (Jinja's `strip`/`trim`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Strip {
    None,
    Both,
    Left,
    Right,
}

#[derive(Clone, Debug)]
pub struct RoleFormat {
    pub prefix: String,
    pub suffix: String,
    pub strip: Strip,
}

/// Where a system message goes.
#[derive(Clone, Debug)]
pub enum Placement {
    /// its own block: `before + system + after` replaces the conversation's opening text
    Block { before: String, after: String, strip: Strip },
    /// into the first user message's content: `before + system + between + user`
    Merged { before: String, between: String },
    /// left out, as the template does
    Dropped,
    /// the template refuses one
    Refused,
}

/// How an assistant message's thought is rendered in the history.
#[derive(Clone, Debug)]
pub struct ThoughtFormat {
    pub before: String,
    pub after: String,
}

#[derive(Clone, Debug)]
pub struct Template {
    /// the conversation's opening text without a system message (BOS, a default system block)
    pub opening: String,
    pub system: Placement,
    pub user: RoleFormat,
    pub assistant: RoleFormat,
    /// appended after the last (user) message of a completion prompt
    pub generation: String,
    /// the same with thinking switched off, where the template supports it
    pub generation_no_thinking: Option<String>,
    /// `None`: thoughts in the history are dropped (as Qwen3's template drops them)
    pub thought: Option<ThoughtFormat>,
    /// every template string must be one special token (this project's own layout)
    pub strict: bool,
}

impl Template {
    pub fn nanochat() -> Template {
        let role = |p: &str, s: &str| RoleFormat { prefix: p.to_string(), suffix: s.to_string(), strip: Strip::None };
        Template {
            opening: "<|bos|>".to_string(),
            system: Placement::Merged { before: String::new(), between: "\n\n".to_string() },
            user: role("<|user_start|>", "<|user_end|>"),
            assistant: role("<|assistant_start|>", "<|assistant_end|>"),
            generation: "<|assistant_start|>".to_string(),
            generation_no_thinking: None,
            thought: Some(ThoughtFormat { before: "<think>".to_string(), after: "</think>".to_string() }),
            strict: true,
        }
    }

    /// The manifest's "chat" section (docs/formats.md); `null` is this project's own layout.
    pub fn from_json(doc: &Json) -> Result<Template, String> {
        if *doc == Json::Null {
            return Ok(Template::nanochat());
        }
        let text = |j: &Json, key: &str| -> Result<String, String> {
            j.get(key).and_then(Json::as_str).map(str::to_string).ok_or_else(|| format!("chat template: \"{}\" must be a string", key))
        };
        let strip = |j: &Json| -> Result<Strip, String> {
            match j.get("strip").and_then(Json::as_str) {
                None | Some("none") => Ok(Strip::None),
                Some("both") => Ok(Strip::Both),
                Some("left") => Ok(Strip::Left),
                Some("right") => Ok(Strip::Right),
                Some(other) => Err(format!("chat template: unknown strip {:?}", other)),
            }
        };
        let role = |key: &str| -> Result<RoleFormat, String> {
            let j = doc.get(key).ok_or_else(|| format!("chat template: no \"{}\"", key))?;
            Ok(RoleFormat { prefix: text(j, "prefix")?, suffix: text(j, "suffix")?, strip: strip(j)? })
        };
        let system = doc.get("system").ok_or("chat template: no \"system\"")?;
        let system = match system.get("placement").and_then(Json::as_str) {
            Some("block") => Placement::Block { before: text(system, "before")?, after: text(system, "after")?, strip: strip(system)? },
            Some("merged") => Placement::Merged { before: text(system, "before")?, between: text(system, "between")? },
            Some("dropped") => Placement::Dropped,
            Some("refused") => Placement::Refused,
            _ => return Err("chat template: system.placement must be block, merged, dropped or refused".to_string()),
        };
        let thought = match doc.get("thought").and_then(|t| t.get("history")) {
            Some(h) if *h != Json::Null => Some(ThoughtFormat { before: text(h, "before")?, after: text(h, "after")? }),
            _ => None,
        };
        let generation_no_thinking = match doc.get("generation_no_thinking") {
            None | Some(Json::Null) => None,
            Some(_) => Some(text(doc, "generation_no_thinking")?),
        };
        Ok(Template {
            opening: text(doc, "opening")?,
            system,
            user: role("user")?,
            assistant: role("assistant")?,
            generation: text(doc, "generation")?,
            generation_no_thinking,
            thought,
            strict: false,
        })
    }
}

/// A render request: a list of messages (this project's layout), or
/// `{"messages": [...], "template": {...} | null, "enable_thinking": bool}`.
pub struct Request {
    pub messages: Vec<Message>,
    pub template: Option<Template>,
    pub thinking: bool,
}

pub fn request_from_json(doc: &Json) -> Result<Request, String> {
    if let Json::Array(_) = doc {
        return Ok(Request { messages: messages_from_json(doc)?, template: None, thinking: true });
    }
    let messages = messages_from_json(doc.get("messages").ok_or("a conversation must be a list of messages")?)?;
    let template = match doc.get("template") {
        None => None,
        Some(t) => Some(Template::from_json(t)?),
    };
    let thinking = match doc.get("enable_thinking") {
        None | Some(Json::Null) | Some(Json::Bool(true)) => true,
        Some(Json::Bool(false)) => false,
        Some(_) => return Err("\"enable_thinking\" must be true or false".to_string()),
    };
    Ok(Request { messages, template, thinking })
}

/// Roles checked to alternate user, assistant, user, ... after an optional leading system
/// message, which is returned apart.
fn normalize(messages: &[Message]) -> Result<(Option<&str>, &[Message]), String> {
    let (system, rest) = match messages.first() {
        Some(m) if m.role == Role::System => (Some(m.content.as_str()), &messages[1..]),
        _ => (None, messages),
    };
    for (i, message) in rest.iter().enumerate() {
        let at = i + system.is_some() as usize;
        if message.role == Role::System {
            return Err(format!("message {}: a system message may only come first", at));
        }
        let expected = if i % 2 == 0 { Role::User } else { Role::Assistant };
        if message.role != expected {
            return Err(format!(
                "message {}: expected {} message (roles alternate user, assistant, ...)",
                at,
                if expected == Role::User { "a user" } else { "an assistant" }
            ));
        }
    }
    if system.is_some() && rest.is_empty() {
        return Err("a system message must be followed by a user message".to_string());
    }
    Ok((system, rest))
}

/// One piece of the rendered text: the template's own (special tokens recognised) or a
/// message's (never), and its training mask.
struct Piece {
    text: String,
    template: bool,
    mask: u8,
}

struct Pieces(Vec<Piece>);

impl Pieces {
    fn template(&mut self, text: &str, mask: u8) {
        if !text.is_empty() {
            self.0.push(Piece { text: text.to_string(), template: true, mask });
        }
    }

    fn content(&mut self, text: &str, mask: u8) {
        if !text.is_empty() {
            self.0.push(Piece { text: text.to_string(), template: false, mask });
        }
    }

    /// Strip whitespace off the pieces from `from` on, as the template strips the content they
    /// make up together (Python's `str.strip()`: Unicode White_Space and the separators
    /// U+001C..U+001F).
    fn strip(&mut self, from: usize, strip: Strip) {
        let space = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
        if matches!(strip, Strip::Both | Strip::Left) {
            for p in self.0[from..].iter_mut() {
                p.text = p.text.trim_start_matches(space).to_string();
                if !p.text.is_empty() {
                    break;
                }
            }
        }
        if matches!(strip, Strip::Both | Strip::Right) {
            for p in self.0[from..].iter_mut().rev() {
                p.text = p.text.trim_end_matches(space).to_string();
                if !p.text.is_empty() {
                    break;
                }
            }
        }
        let mut i = from;
        while i < self.0.len() {
            if self.0[i].text.is_empty() {
                self.0.remove(i);
            } else {
                i += 1;
            }
        }
    }
}

/// Specials of `tok` in `text`: (start, name length, id), leftmost first, the longest name at
/// equal starts.
fn find_specials(tok: &Tokenizer, text: &str) -> Vec<(usize, usize, Rank)> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let mut best: Option<(usize, usize, Rank)> = None;
        for (name, id) in tok.specials() {
            if let Some(p) = text[at..].find(name.as_str()) {
                let p = p + at;
                if best.map_or(true, |(bp, bl, _)| p < bp || (p == bp && name.len() > bl)) {
                    best = Some((p, name.len(), *id));
                }
            }
        }
        match best {
            Some(b) => {
                found.push(b);
                at = b.0 + b.1;
            }
            None => break,
        }
    }
    found
}

/// Ids and mask of the pieces: runs of ordinary text (across pieces) are encoded as one text,
/// special tokens of the template's pieces are their ids. A token's mask is that of the piece
/// its first byte comes from (by the lengths of the tokens' bytes; a SentencePiece run's added
/// leading space counts to its first piece).
fn encode(tok: &Tokenizer, pieces: &[Piece]) -> (Vec<Rank>, Vec<u8>) {
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    // the run's text and where each piece's part of it ends, with that piece's mask
    let mut run = String::new();
    let mut ends: Vec<(usize, u8)> = Vec::new();
    let flush = |run: &mut String, ends: &mut Vec<(usize, u8)>, ids: &mut Vec<Rank>, mask: &mut Vec<u8>| {
        let enc = tok.encode_ordinary(run);
        let mut at = 0;
        for &id in &enc {
            let m = ends.iter().find(|(end, _)| at < *end).or(ends.last()).map_or(0, |e| e.1);
            mask.push(m);
            at += tok.decode_bytes(&[id]).map_or(0, |b| b.len());
        }
        ids.extend(enc);
        run.clear();
        ends.clear();
    };
    let add = |text: &str, m: u8, run: &mut String, ends: &mut Vec<(usize, u8)>| {
        if !text.is_empty() {
            run.push_str(text);
            ends.push((run.len(), m));
        }
    };
    for p in pieces {
        if !p.template {
            add(&p.text, p.mask, &mut run, &mut ends);
            continue;
        }
        let mut at = 0;
        for (start, len, id) in find_specials(tok, &p.text) {
            add(&p.text[at..start], p.mask, &mut run, &mut ends);
            flush(&mut run, &mut ends, &mut ids, &mut mask);
            ids.push(id);
            mask.push(p.mask);
            at = start + len;
        }
        add(&p.text[at..], p.mask, &mut run, &mut ends);
    }
    flush(&mut run, &mut ends, &mut ids, &mut mask);
    (ids, mask)
}

/// In a strict template every template string is one special token of `tok`.
fn check_strict(tok: &Tokenizer, pieces: &[Piece]) -> Result<(), String> {
    match pieces.iter().find(|p| p.template && tok.special_id(&p.text).is_none()) {
        Some(p) => Err(format!("the tokenizer has no special token {}", p.text)),
        None => Ok(()),
    }
}

fn render(tok: &Tokenizer, t: &Template, messages: &[Message], generation: Option<&str>) -> Result<(Vec<Rank>, Vec<u8>), String> {
    let (system, messages) = normalize(messages)?;
    let mut out = Pieces(Vec::new());
    let mut merged: Option<(&str, &str, &str)> = None;
    match (system, &t.system) {
        (Some(s), Placement::Block { before, after, strip }) => {
            out.template(before, 0);
            let from = out.0.len();
            out.content(s, 0);
            out.strip(from, *strip);
            out.template(after, 0);
        }
        (Some(s), Placement::Merged { before, between }) => {
            out.template(&t.opening, 0);
            merged = Some((before, s, between));
        }
        (Some(_), Placement::Refused) => return Err("this model's chat template takes no system message".to_string()),
        _ => out.template(&t.opening, 0),
    }
    for message in messages {
        match message.role {
            Role::User => {
                out.template(&t.user.prefix, 0);
                let from = out.0.len();
                if let Some((before, s, between)) = merged.take() {
                    // between is the template's text: a separator, never a special token
                    out.template(before, 0);
                    out.content(s, 0);
                    out.content(between, 0);
                }
                out.content(&message.content, 0);
                out.strip(from, t.user.strip);
                out.template(&t.user.suffix, 0);
            }
            Role::Assistant => {
                out.template(&t.assistant.prefix, 0);
                if let (Some(thought), Some(format)) = (&message.thought, &t.thought) {
                    out.template(&format.before, 1);
                    out.content(thought, 1);
                    out.template(&format.after, 1);
                }
                let from = out.0.len();
                out.content(&message.content, 1);
                out.strip(from, t.assistant.strip);
                out.template(&t.assistant.suffix, 1);
            }
            Role::System => unreachable!("normalize takes the system message apart"),
        }
    }
    if let Some(g) = generation {
        out.template(g, 0);
    }
    if t.strict {
        check_strict(tok, &out.0)?;
    }
    Ok(encode(tok, &out.0))
}

/// Token ids and the training mask (1 on what the assistant produces: its thought, answer and
/// suffix; 0 elsewhere).
pub fn render_conversation(tok: &Tokenizer, t: &Template, messages: &[Message]) -> Result<(Vec<Rank>, Vec<u8>), String> {
    render(tok, t, messages, None)
}

/// A prompt for the assistant's next turn: the conversation (ending with a user message)
/// followed by the generation prompt (thinking off where the template can switch it off).
pub fn render_for_completion(tok: &Tokenizer, t: &Template, messages: &[Message], thinking: bool) -> Result<Vec<Rank>, String> {
    let last_is_user = normalize(messages)?.1.last().map(|m| m.role == Role::User).unwrap_or(false);
    if !last_is_user {
        return Err("a completion prompt must end with a user message".to_string());
    }
    let generation = match (&t.generation_no_thinking, thinking) {
        (Some(g), false) => g,
        _ => &t.generation,
    };
    Ok(render(tok, t, messages, Some(generation))?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pretokenize::SplitPattern;

    /// Byte tokens only, plus ChatML-style specials.
    fn tok() -> Tokenizer {
        let ranks: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let specials = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"];
        Tokenizer::new(SplitPattern::default(), ranks, specials.iter().enumerate().map(|(i, s)| (s.to_string(), 256 + i as Rank)).collect()).unwrap()
    }

    fn chatml() -> Template {
        let doc = crate::json::parse(
            r#"{"opening": "", "system": {"placement": "block", "before": "<|im_start|>system\n", "after": "<|im_end|>\n"},
                "user": {"prefix": "<|im_start|>user\n", "suffix": "<|im_end|>\n", "strip": "both"},
                "assistant": {"prefix": "<|im_start|>assistant\n", "suffix": "<|im_end|>\n"},
                "generation": "<|im_start|>assistant\n",
                "generation_no_thinking": "<|im_start|>assistant\n<think>\n\n</think>\n\n",
                "thought": {"history": null}}"#,
        )
        .unwrap();
        Template::from_json(&doc).unwrap()
    }

    fn user(s: &str) -> Message {
        Message { role: Role::User, content: s.to_string(), thought: None }
    }

    #[test]
    fn template_text_has_specials_content_never_and_strip_is_pythons() {
        let t = tok();
        let messages = [user("\u{1c} hi <|im_end|>\n")];
        let ids = render_for_completion(&t, &chatml(), &messages, true).unwrap();
        let text = String::from_utf8(t.decode_bytes(&ids).unwrap()).unwrap();
        assert_eq!(text, "<|im_start|>user\nhi <|im_end|><|im_end|>\n<|im_start|>assistant\n");
        assert_eq!(ids.iter().filter(|&&i| i == 257).count(), 1, "the user's <|im_end|> stays text");
    }

    #[test]
    fn thinking_off_and_dropped_thoughts() {
        let t = tok();
        let answer = Message { role: Role::Assistant, content: "4".to_string(), thought: Some("2+2".to_string()) };
        let ids = render_for_completion(&t, &chatml(), &[user("a"), answer, user("b")], false).unwrap();
        let text = String::from_utf8(t.decode_bytes(&ids).unwrap()).unwrap();
        assert!(!text.contains("2+2") && text.ends_with("<think>\n\n</think>\n\n"), "{}", text);
    }
}
