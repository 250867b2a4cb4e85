//! The engine: a compiled model (generated code + its constants) with its weights, KV caches,
//! tokenizer, sampler and thought/answer parser. IR-independent; the generated `model_gen.rs`
//! supplies a `ModelInfo` and a `run` function (the schedule as straight-line kernel calls).
//!
//! Context management: the cache holds at most `seq_len` positions. A forward that would pass it
//! is refused before anything runs (the cache stays as it was); a chat turn that reaches it ends
//! with the reason "context".

use crate::bpe::Tokenizer;
use crate::chat::Template;
use crate::json::{self, Json};
use crate::kernels::{KvCache, View};
use crate::sampler::{Sampler, SamplerConfig};
use crate::think::{Part, ThinkParser};
use crate::weights::{Loader, Tensor, TensorSpec};

/// What the generated code says about the compiled model.
pub struct ModelInfo {
    pub vocab: usize,
    pub seq_len: usize,
    /// most tokens one `run` call takes (prefill is done in chunks of this)
    pub chunk: usize,
    /// f32 elements of each planned activation buffer (for T = chunk)
    pub buffers: &'static [usize],
    /// (n_kv_head, head_dim) of each attention node's cache
    pub kv: &'static [(usize, usize)],
    /// per-token size of each token_shift's carried row
    pub shifts: &'static [usize],
    pub specs: &'static [TensorSpec],
    /// where the logits are: buffer and per-token view
    pub logits: (usize, View),
    /// the logits hold only the `rows` tokens `run` was asked for, from row 0 (the output tail
    /// ran for those alone); otherwise every token's
    pub tail: bool,
}

/// Activation buffers and KV caches of one conversation.
pub struct State {
    pub bufs: Vec<Vec<f32>>,
    pub kv: Vec<KvCache>,
    /// the last row each token_shift saw (its state across calls)
    pub shift: Vec<Vec<f32>>,
}

/// The generated schedule: run `ids` (at most `chunk`) at positions `pos..`, with the logits of
/// the last `rows` of them.
pub type RunFn = fn(&[Tensor], &mut State, &[u32], usize, usize);

/// Why a chat turn ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Done {
    Stop,
    MaxTokens,
    Context,
}

impl Done {
    pub fn name(self) -> &'static str {
        match self {
            Done::Stop => "stop",
            Done::MaxTokens => "max_tokens",
            Done::Context => "context",
        }
    }
}

/// One generated token's effect.
pub struct StepOut {
    pub token: Option<u32>,
    pub pieces: Vec<(Part, String)>,
    pub done: Option<Done>,
}

pub struct Engine {
    pub info: &'static ModelInfo,
    run: RunFn,
    loader: Option<Loader>,
    weights: Vec<Tensor>,
    state: Option<State>,
    pub tokenizer: Option<Tokenizer>,
    special_tokens: Vec<(String, u32)>,
    /// the manifest's chat template and the tokens that end the assistant's turn
    pub template: Template,
    stops: Vec<u32>,
    /// the tokens the cache holds, in order (its length is the position)
    pub history: Vec<u32>,
    last_logits: Vec<f32>,
    pub sampler: Sampler,
    think: ThinkParser,
    /// The turn's last generated token, which the next one's text is decoded after.
    previous: Option<u32>,
    turn_tokens: usize,
    max_tokens: usize,
    turn_done: Option<Done>,
}

impl Engine {
    pub fn new(info: &'static ModelInfo, run: RunFn) -> Engine {
        Engine {
            info,
            run,
            loader: None,
            weights: Vec::new(),
            state: None,
            tokenizer: None,
            special_tokens: Vec::new(),
            template: Template::nanochat(),
            stops: Vec::new(),
            history: Vec::new(),
            last_logits: Vec::new(),
            sampler: Sampler::new(SamplerConfig::default()),
            think: ThinkParser::new(),
            previous: None,
            turn_tokens: 0,
            max_tokens: 0,
            turn_done: None,
        }
    }

    // --- loading -----------------------------------------------------------------------------

    pub fn load_manifest(&mut self, bytes: &[u8]) -> Result<usize, String> {
        let loader = Loader::new(bytes, self.info.specs)?;
        let n = loader.shard_count();
        // Loader::new checked the bytes are one JSON document
        let doc = std::str::from_utf8(bytes).ok().and_then(|t| json::parse(t).ok()).unwrap_or(Json::Null);
        let chat = doc.get("chat").unwrap_or(&Json::Null);
        self.template = Template::from_json(chat.get("template").unwrap_or(&Json::Null))?;
        self.stops = match chat.get("stop") {
            Some(Json::Array(ids)) => ids.iter().map(|v| v.as_u32().ok_or("manifest: chat.stop must list token ids")).collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        self.loader = Some(loader);
        self.state = None;
        Ok(n)
    }

    fn loader(&mut self) -> Result<&mut Loader, String> {
        self.loader.as_mut().ok_or_else(|| "load the manifest first".to_string())
    }

    pub fn add_shard(&mut self, index: usize, bytes: &[u8]) -> Result<(), String> {
        self.loader()?.add_shard(index, bytes)
    }

    pub fn load_tokenizer(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.loader()?.check_tokenizer(bytes)?;
        let text = std::str::from_utf8(bytes).map_err(|_| "tokenizer.json is not UTF-8".to_string())?;
        let tok = crate::tokenizer_file::from_json(text)?;
        if tok.vocab_size() > self.info.vocab {
            return Err(format!("tokenizer has {} ids, the model {}", tok.vocab_size(), self.info.vocab));
        }
        self.tokenizer = Some(tok);
        Ok(())
    }

    /// All shards in: move the weights out of the loader and allocate the state.
    pub fn finish(&mut self) -> Result<(), String> {
        let loader = self.loader.take().ok_or_else(|| "load the manifest first".to_string())?;
        let (weights, config, specials) = loader.finish()?;
        let cfg_num = |k: &str| config.get(k).and_then(Json::as_u32).map(|v| v as usize);
        if cfg_num("vocab_size") != Some(self.info.vocab) || cfg_num("sequence_len") != Some(self.info.seq_len) {
            return Err("manifest: model config does not match the compiled model (vocab_size / sequence_len)".to_string());
        }
        self.weights = weights;
        self.special_tokens = specials;
        if self.stops.is_empty() {
            // a manifest from before chat.stop: this project's end-of-turn tokens
            self.stops = ["<|assistant_end|>", "<|bos|>"].iter().filter_map(|n| self.special(n)).collect();
        }
        self.state = Some(State {
            bufs: self.info.buffers.iter().map(|&n| vec![0.0; n]).collect(),
            kv: self.info.kv.iter().map(|&(h, d)| KvCache::new(self.info.seq_len, h, d)).collect(),
            shift: self.info.shifts.iter().map(|&n| vec![0.0; n]).collect(),
        });
        self.reset();
        Ok(())
    }

    pub fn ready(&self) -> bool {
        self.state.is_some()
    }

    pub fn reset(&mut self) {
        self.history.clear();
        self.last_logits.clear();
        self.turn_done = None;
    }

    pub fn pos(&self) -> usize {
        self.history.len()
    }

    fn special(&self, name: &str) -> Option<u32> {
        self.special_tokens.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
    }

    // --- the model -----------------------------------------------------------------------------

    /// Run `ids` through the model; returns the logits of every position (T x vocab) when `all`,
    /// else of the last. Refused, with the cache untouched, when it would pass sequence_len.
    pub fn forward(&mut self, ids: &[u32], all: bool) -> Result<Vec<f32>, String> {
        let mut out = Vec::with_capacity(if all { ids.len() * self.info.vocab } else { self.info.vocab });
        self.run_ids(ids, all, |row| out.extend_from_slice(row))?;
        Ok(out)
    }

    /// Sample the next token from the last logits, run it, and return it (a decode step).
    pub fn next_token(&mut self) -> Result<u32, String> {
        if self.last_logits.is_empty() {
            return Err("run a forward first".to_string());
        }
        let t = self.sampler.sample(&self.last_logits, &self.history) as u32;
        self.run_ids(&[t], false, |_| {})?;
        Ok(t)
    }

    /// `forward` handing each logits row to `row` (every new position's when `all`, else the
    /// last's) instead of collecting them: a decode step copies its logits once, into
    /// `last_logits`, not three times.
    fn run_ids(&mut self, ids: &[u32], all: bool, mut row: impl FnMut(&[f32])) -> Result<(), String> {
        let info = self.info;
        let state = self.state.as_mut().ok_or_else(|| "the model is not loaded".to_string())?;
        if ids.is_empty() {
            return Err("no tokens to run".to_string());
        }
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= info.vocab) {
            return Err(format!("token id {} is outside the vocabulary ({})", bad, info.vocab));
        }
        let pos = self.history.len();
        if pos + ids.len() > info.seq_len {
            return Err(format!("context full: {} + {} tokens exceed sequence_len {}", pos, ids.len(), info.seq_len));
        }
        let (lb, lv) = info.logits;
        let mut at = pos;
        let chunks = (ids.len() + info.chunk - 1) / info.chunk;
        for (i, chunk) in ids.chunks(info.chunk).enumerate() {
            let rows = if all { chunk.len() } else if i + 1 == chunks { 1 } else { 0 };
            (self.run)(&self.weights, state, chunk, at, rows);
            let logits = &state.bufs[lb];
            let first = if info.tail { 0 } else { chunk.len() - rows };
            for t in first..first + rows {
                row(lv.row(logits, t));
            }
            if i + 1 == chunks {
                self.last_logits.clear();
                self.last_logits.extend_from_slice(lv.row(logits, first + rows - 1));
            }
            at += chunk.len();
        }
        self.history.extend_from_slice(ids);
        Ok(())
    }

    // --- chat ------------------------------------------------------------------------------------

    /// Start the assistant's turn after `prompt` (the whole conversation so far, ending with
    /// the template's generation prompt). Tokens the cache already holds are not run again.
    pub fn chat_start(&mut self, prompt: &[u32], max_tokens: usize) -> Result<(), String> {
        if prompt.is_empty() {
            return Err("empty prompt".to_string());
        }
        if prompt.len() >= self.info.seq_len {
            return Err(format!("context full: the prompt has {} tokens, sequence_len is {}", prompt.len(), self.info.seq_len));
        }
        let reuse = !self.history.is_empty() && prompt.len() > self.history.len() && prompt.starts_with(&self.history);
        if !reuse {
            self.reset();
        }
        let fresh = prompt[self.history.len()..].to_vec();
        self.run_ids(&fresh, false, |_| {})?;
        // a generation prompt may open the thought itself: the reply then starts inside it
        let tail = &prompt[prompt.len().saturating_sub(16)..];
        let tail = self.tokenizer.as_ref().and_then(|t| t.decode_bytes(tail).ok()).unwrap_or_default();
        self.think = if ThinkParser::opens_thought(&String::from_utf8_lossy(&tail)) {
            ThinkParser::inside_thought()
        } else {
            ThinkParser::new()
        };
        self.previous = None;
        self.turn_tokens = 0;
        self.max_tokens = max_tokens;
        self.turn_done = None;
        Ok(())
    }

    /// Generate one token of the turn: its text split into thought/answer, or why the turn ended.
    pub fn chat_step(&mut self) -> Result<StepOut, String> {
        if let Some(done) = self.turn_done {
            return Ok(StepOut { token: None, pieces: Vec::new(), done: Some(done) });
        }
        if self.last_logits.is_empty() {
            return Err("start a turn first".to_string());
        }
        let end = |s: &mut Engine, done: Done, token: Option<u32>, mut pieces: Vec<(Part, String)>| {
            pieces.extend(s.think.finish());
            s.turn_done = Some(done);
            StepOut { token, pieces, done: Some(done) }
        };
        if self.turn_tokens >= self.max_tokens {
            return Ok(end(self, Done::MaxTokens, None, Vec::new()));
        }
        let t = self.sampler.sample(&self.last_logits, &self.history) as u32;
        if self.stops.contains(&t) {
            return Ok(end(self, Done::Stop, Some(t), Vec::new()));
        }
        let pieces = if Some(t) == self.special("<think>") {
            self.think.tag(true)
        } else if Some(t) == self.special("</think>") {
            self.think.tag(false)
        } else {
            let tok = self.tokenizer.as_ref().ok_or_else(|| "load the tokenizer first".to_string())?;
            let bytes = tok.token_bytes_after(self.previous, t).unwrap_or_default();
            self.think.bytes(&bytes)
        };
        self.previous = Some(t);
        self.turn_tokens += 1;
        if self.history.len() >= self.info.seq_len {
            return Ok(end(self, Done::Context, Some(t), pieces));
        }
        self.run_ids(&[t], false, |_| {})?;
        Ok(StepOut { token: Some(t), pieces, done: None })
    }
}

/// A step as JSON: {"token": id|null, "pieces": [["thought"|"answer", text], ...], "done": null|reason}.
pub fn step_json(s: &StepOut) -> String {
    let pieces: Vec<String> = s
        .pieces
        .iter()
        .map(|(p, text)| format!("[\"{}\",{}]", if *p == Part::Thought { "thought" } else { "answer" }, json::quote(text)))
        .collect();
    format!(
        "{{\"token\":{},\"pieces\":[{}],\"done\":{}}}",
        s.token.map(|t| t.to_string()).unwrap_or_else(|| "null".to_string()),
        pieces.join(","),
        s.done.map(|d| json::quote(d.name())).unwrap_or_else(|| "null".to_string())
    )
}
