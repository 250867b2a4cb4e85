//! The chat template (nanochat's layout plus a hidden thought):
//! `<|bos|> <|user_start|> text <|user_end|> <|assistant_start|> <think> thought </think> answer
//! <|assistant_end|> ...`, no role names or newlines between the tokens. A system message is
//! merged into the first user message as `system + "\n\n" + user`.

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

struct Specials {
    bos: Rank,
    user_start: Rank,
    user_end: Rank,
    assistant_start: Rank,
    assistant_end: Rank,
}

fn special(tok: &Tokenizer, name: &str) -> Result<Rank, String> {
    tok.special_id(name).ok_or_else(|| format!("the tokenizer has no special token {}", name))
}

/// The system message folded into the first user message, and roles checked to alternate
/// user, assistant, user, ...
fn normalize(messages: &[Message]) -> Result<Vec<Message>, String> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    let mut system: Option<&str> = None;
    for (i, message) in messages.iter().enumerate() {
        if message.role == Role::System {
            if i != 0 {
                return Err(format!("message {}: a system message may only come first", i));
            }
            system = Some(&message.content);
            continue;
        }
        let expected = if out.len() % 2 == 0 { Role::User } else { Role::Assistant };
        if message.role != expected {
            return Err(format!(
                "message {}: expected {} message (roles alternate user, assistant, ...)",
                i,
                if expected == Role::User { "a user" } else { "an assistant" }
            ));
        }
        let mut message = message.clone();
        if let Some(system) = system.take() {
            message.content = format!("{}\n\n{}", system, message.content);
        }
        out.push(message);
    }
    if system.is_some() {
        return Err("a system message must be followed by a user message".to_string());
    }
    Ok(out)
}

/// Token ids and the training mask (1 on what the assistant produces: `<think>` .. answer ..
/// `<|assistant_end|>`; 0 elsewhere).
pub fn render_conversation(tok: &Tokenizer, messages: &[Message]) -> Result<(Vec<Rank>, Vec<u8>), String> {
    let messages = normalize(messages)?;
    let s = Specials {
        bos: special(tok, "<|bos|>")?,
        user_start: special(tok, "<|user_start|>")?,
        user_end: special(tok, "<|user_end|>")?,
        assistant_start: special(tok, "<|assistant_start|>")?,
        assistant_end: special(tok, "<|assistant_end|>")?,
    };
    let mut out = Rendered { ids: vec![s.bos], mask: vec![0] };
    for message in &messages {
        match message.role {
            Role::User => {
                out.push(&[s.user_start], 0);
                out.push(&tok.encode_ordinary(&message.content), 0);
                out.push(&[s.user_end], 0);
            }
            Role::Assistant => {
                out.push(&[s.assistant_start], 0);
                if let Some(thought) = &message.thought {
                    out.push(&[special(tok, "<think>")?], 1);
                    out.push(&tok.encode_ordinary(thought), 1);
                    out.push(&[special(tok, "</think>")?], 1);
                }
                out.push(&tok.encode_ordinary(&message.content), 1);
                out.push(&[s.assistant_end], 1);
            }
            Role::System => unreachable!("normalize folds the system message away"),
        }
    }
    Ok((out.ids, out.mask))
}

struct Rendered {
    ids: Vec<Rank>,
    mask: Vec<u8>,
}

impl Rendered {
    fn push(&mut self, ids: &[Rank], mask: u8) {
        self.ids.extend_from_slice(ids);
        self.mask.extend(std::iter::repeat(mask).take(ids.len()));
    }
}

/// A prompt for the assistant's next turn: the conversation (ending with a user message)
/// followed by `<|assistant_start|>`.
pub fn render_for_completion(tok: &Tokenizer, messages: &[Message]) -> Result<Vec<Rank>, String> {
    let last_is_user = normalize(messages)?.last().map(|m| m.role == Role::User).unwrap_or(false);
    if !last_is_user {
        return Err("a completion prompt must end with a user message".to_string());
    }
    let (mut ids, _) = render_conversation(tok, messages)?;
    ids.push(special(tok, "<|assistant_start|>")?);
    Ok(ids)
}
