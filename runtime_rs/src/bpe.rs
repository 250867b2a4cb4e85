//! Byte-level BPE encoding and decoding with tiktoken's exact merge rule, plus special tokens; and
//! the other models a Hugging Face tokenizer.json may hold (WordPiece, WordLevel), which share the
//! vocabulary, the added tokens and the pre-tokenizer steps.

use std::borrow::Cow;
use std::sync::{Mutex, TryLockError};

use crate::fxhash::FxHashMap;
use crate::normalize::{normalize, Form};
use crate::parallel::{parallel_map, worker_count};
use crate::pretokenize::{apply_steps, is_word_char, SplitPattern, Step, METASPACE};

pub type Rank = u32;

/// Pieces longer than this are not cached (they are rare and would bloat the cache).
const CACHE_MAX_PIECE: usize = 64;
const CACHE_MAX_ENTRIES: usize = 1 << 18;

/// The most token ids a tokenizer may have (the largest real vocabularies hold about 260k).
pub(crate) const MAX_VOCAB: usize = 1 << 22;

/// Which special tokens `encode` recognises in the text.
pub enum AllowedSpecial<'a> {
    None,
    All,
    Some(&'a [String]),
}

pub struct Tokenizer {
    pattern: SplitPattern,
    encoder: FxHashMap<Vec<u8>, Rank>,
    /// Token bytes by id; specials hold their UTF-8 text; `None` for ids that are unused.
    decoder: Vec<Option<Vec<u8>>>,
    num_ranks: usize,
    /// Special tokens in their declared order.
    specials: Vec<(String, Rank)>,
    /// BPE results of recent pieces that are not whole tokens.
    cache: Mutex<PieceCache>,
    /// Hugging Face BPE merges, for a tokenizer read from a Hugging Face tokenizer.json; `None`
    /// for tiktoken-style ranks (merge the pair whose concatenation has the lowest rank).
    hf: Option<HfModel>,
}

/// What a Hugging Face BPE adds to the tables: merges by pair (their rank is their index in the
/// file), and how pieces are prepared and decoded.
pub struct HfModel {
    /// (left id, right id) -> (merge rank, merged id)
    pub merges: FxHashMap<(Rank, Rank), (Rank, Rank)>,
    /// The id of each byte's token (`<0xNN>` in SentencePiece style).
    pub byte_ids: Vec<Rank>,
    pub options: HfOptions,
    /// Whether the steps are the split pattern alone (after ByteLevel's prefix space when
    /// `add_prefix_space`), which `Tokenizer::pattern` runs without copying pieces.
    fast: bool,
    add_prefix_space: bool,
    /// ByteLevel's char of each byte, and the byte of each such char (for `byte_steps`).
    byte_chars: Vec<char>,
    char_bytes: Vec<u8>,
}

/// How a Hugging Face tokenizer.json prepares text and reads tokens back.
pub struct HfOptions {
    /// NFC or NFKC, applied to each stretch of text between added tokens before the steps.
    pub normalizer: Option<Form>,
    /// Ids the model never finds in text (a SentencePiece model's control and unused pieces).
    pub unmatched: Vec<Rank>,
    /// The normalizer's and pre-tokenizer's steps, in order.
    pub steps: Vec<Step>,
    /// The pre-tokenizer's steps after ByteLevel, on each piece's bytes as ByteLevel's chars.
    pub byte_steps: Vec<Step>,
    /// How many of `steps` are the normalizer's (they never split).
    pub normalizer_steps: usize,
    /// The flags of each added token, in the order of the added tokens.
    pub added: Vec<AddedFlags>,
    /// SentencePiece style (Llama-2, Mistral, Gemma): pieces start as chars, a char without a
    /// token as its `<0xNN>` byte tokens; else byte-level (pieces start as bytes). A vocabulary of
    /// chars without byte tokens (decoder `Plain`) is char-level too.
    pub char_level: bool,
    /// Every byte has a token: byte-level, or SentencePiece's byte fallback (`<0xNN>`).
    pub byte_fallback: bool,
    /// For a vocabulary without byte tokens: the id a char without a token becomes, and whether a
    /// run of them is one (`fuse_unk`); `None`: such a char is dropped, as `tokenizers` drops it.
    pub unk: Option<(Rank, bool)>,
    /// A piece that is a whole token is that token, without merging (Llama-3's `ignore_merges`).
    pub ignore_merges: bool,
    pub model: PieceModel,
    pub decoder: Decoder,
    /// The tokenizer.json text, written back unchanged.
    pub source: String,
}

/// An added token's flags, as `tokenizers` applies them when it finds the token in text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddedFlags {
    /// The match takes the whitespace before it.
    pub lstrip: bool,
    /// The match takes the whitespace after it.
    pub rstrip: bool,
    /// Only found where no word char (`is_word_char`) touches it on either side.
    pub single_word: bool,
    /// Found in the normalized text (its own text normalized alike), after the tokens that are not.
    pub normalized: bool,
}

/// An added token being looked for: its text (normalized if it is found in normalized text), id, flags.
type Added<'a> = (Cow<'a, str>, Rank, AddedFlags);

/// Cut `text` at the added tokens found in it, as `tokenizers` does: leftmost match, the longest
/// at equal starts, then the flags. Gives (start, end, the token's id or None for text between).
fn split_added(text: &str, tokens: &[Added]) -> Vec<(usize, usize, Option<Rank>)> {
    let is_word = |c: Option<char>| c.map_or(false, is_word_char);
    let mut parts = Vec::new();
    let mut next: Vec<Option<usize>> = tokens.iter().map(|(name, _, _)| text.find(name.as_ref())).collect();
    let (mut done, mut search) = (0, 0);
    loop {
        // earliest occurrence at or after `search`; at equal starts the longest name wins
        let mut best: Option<(usize, usize)> = None;
        for (i, slot) in next.iter_mut().enumerate() {
            if let Some(p) = *slot {
                let p = if p < search {
                    let found = text[search..].find(tokens[i].0.as_ref()).map(|q| q + search);
                    *slot = found;
                    match found {
                        Some(q) => q,
                        None => continue,
                    }
                } else {
                    p
                };
                if best.map_or(true, |(bp, bi)| p < bp || (p == bp && tokens[i].0.len() > tokens[bi].0.len())) {
                    best = Some((p, i));
                }
            }
        }
        let (pos, which) = match best {
            Some(b) => b,
            None => break,
        };
        let (name, id, flags) = &tokens[which];
        let (mut start, mut stop) = (pos, pos + name.len());
        search = stop;
        if pos < done || (flags.single_word && (is_word(text[..start].chars().next_back()) || is_word(text[stop..].chars().next()))) {
            continue;
        }
        if flags.lstrip {
            let spaces: usize = text[..start].chars().rev().take_while(|c| c.is_whitespace()).map(char::len_utf8).sum();
            start = (start - spaces).max(done);
        }
        if flags.rstrip {
            stop += text[stop..].chars().take_while(|c| c.is_whitespace()).map(char::len_utf8).sum::<usize>();
        }
        if done < start {
            parts.push((done, start, None));
        }
        parts.push((start, stop, Some(*id)));
        done = stop;
    }
    if done < text.len() {
        parts.push((done, text.len(), None));
    }
    parts
}

/// How a piece (of the pre-tokenizer's) becomes ids.
#[derive(Clone, Debug, PartialEq)]
pub enum PieceModel {
    /// BPE merges. Over a vocabulary of chars, a word's chars after its first may be spelled with
    /// a `prefix` and its last with a `suffix` (CharBPETokenizer's and GPT-1's `</w>`).
    Bpe { prefix: String, suffix: String },
    /// WordPiece (BERT's): the longest token the piece starts with, then the longest token, with
    /// `prefix` before it, the rest starts with, and so on; a piece with a rest no token starts,
    /// or of more than `max_chars` chars, is the `unk` token.
    WordPiece { prefix: String, max_chars: usize, unk: Rank },
    /// WordLevel: the piece's own token, else the `unk` token.
    WordLevel { unk: Rank },
    /// Unigram (SentencePiece's default): the split of the piece into tokens whose scores (log
    /// probabilities, by id) sum highest, a char that no token starts with being the `unk` token
    /// (scored `unk_score`); a run of them one unk (`fuse_unk`), or its bytes' tokens with byte
    /// fallback. `longest`: the most bytes a token has. `f32`: path scores summed in f32, as
    /// SentencePiece's own library sums them (`tokenizers` sums in f64).
    Unigram { scores: Vec<f64>, unk: Rank, unk_score: f64, fuse_unk: bool, longest: usize, f32: bool },
}

impl PieceModel {
    /// A Unigram of these scores (by id): an unknown char scores 10 below the lowest, as
    /// `tokenizers` scores it (its K_UNK_PENALTY).
    pub fn unigram(scores: Vec<f64>, unk: Rank, fuse_unk: bool, longest: usize, f32: bool) -> PieceModel {
        let lowest = scores.iter().copied().fold(f64::INFINITY, f64::min);
        let unk_score = if f32 { (lowest as f32 - 10.0) as f64 } else { lowest - 10.0 };
        PieceModel::Unigram { scores, unk, unk_score, fuse_unk, longest, f32 }
    }
}

/// The decoders this runtime implements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoder {
    ByteLevel,
    /// Sequence[Replace("▁", " "), ByteFallback, Fuse], then Strip(" ", 1, 0) if `strip_first_space`.
    Fuse { strip_first_space: bool },
    /// Metaspace: `▁` becomes a space, except in the first token, where (unless the
    /// prepend_scheme is "never", `drop_first`) it is dropped; byte tokens stay as their text.
    Metaspace { drop_first: bool },
    /// Fuse alone: the tokens' text joined (a vocabulary of chars, nanoGPT's meta.pkl).
    Plain,
    /// BPEDecoder: `suffix` (`</w>`) is a space, or nothing in the last token.
    Suffix(String),
    /// No decoder: the tokens' text joined by spaces, as `tokenizers` decodes without one.
    Spaced,
    /// WordPiece: a space before each token but the first, except a token that starts with
    /// `prefix`, which loses it instead; `cleanup`: then no space before `.,!?` and English
    /// contractions (the decoder's cleanup, applied to each token).
    WordPiece { prefix: String, cleanup: bool },
}

/// The WordPiece decoder's cleanup of one token (with the space put before it).
fn wordpiece_cleanup(token: &str) -> String {
    let mut out = token.to_string();
    for (from, to) in [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
        (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]
    {
        out = out.replace(from, to);
    }
    out
}

type PieceCache = FxHashMap<Vec<u8>, Vec<Rank>>;

impl Tokenizer {
    /// Build from ranks (index == rank) and special tokens; checks the table is usable.
    pub fn new(
        pattern: SplitPattern,
        ranks: Vec<Vec<u8>>,
        specials: Vec<(String, Rank)>,
    ) -> Result<Tokenizer, String> {
        let num_ranks = ranks.len();
        // Sizes and ids are checked before the tables are built: an id of 4294967295 must be
        // refused, not become a 100 GB decoder table.
        if num_ranks + specials.len() > MAX_VOCAB {
            return Err(format!(
                "{} ranks and {} special tokens are more ids than this runtime allows ({})",
                num_ranks, specials.len(), MAX_VOCAB
            ));
        }
        let mut encoder: FxHashMap<Vec<u8>, Rank> = FxHashMap::default();
        encoder.reserve(num_ranks);
        for (rank, bytes) in ranks.iter().enumerate() {
            if bytes.is_empty() {
                return Err(format!("rank {} is an empty token", rank));
            }
            if encoder.insert(bytes.clone(), rank as Rank).is_some() {
                return Err(format!("rank {} repeats the bytes of an earlier rank", rank));
            }
        }
        for byte in 0..=255u8 {
            if !encoder.contains_key(&[byte][..]) {
                return Err(format!("the single byte {} has no rank (every byte needs one)", byte));
            }
        }
        let vocab_size = num_ranks + specials.len();
        for (name, id) in &specials {
            if *id as usize >= vocab_size {
                return Err(format!(
                    "special token {} has id {}, outside 0..{} (ids must be dense: {} ranks then {} special tokens)",
                    name, id, vocab_size, num_ranks, specials.len()
                ));
            }
        }
        let mut decoder: Vec<Option<Vec<u8>>> = ranks.into_iter().map(Some).collect();
        let mut names: FxHashMap<&str, ()> = FxHashMap::default();
        for (name, id) in specials.iter() {
            if name.is_empty() {
                return Err("a special token has an empty name".to_string());
            }
            if names.insert(name.as_str(), ()).is_some() {
                return Err(format!("special token {} is declared twice", name));
            }
            let id = *id as usize;
            if id < num_ranks {
                return Err(format!("special token {} has id {}, which is a BPE rank", name, id));
            }
            if id >= decoder.len() {
                decoder.resize(id + 1, None);
            }
            if decoder[id].is_some() {
                return Err(format!("special token {} reuses id {}", name, id));
            }
            decoder[id] = Some(name.as_bytes().to_vec());
        }
        Ok(Tokenizer {
            pattern,
            encoder,
            decoder,
            num_ranks,
            specials,
            cache: Mutex::new(FxHashMap::default()),
            hf: None,
        })
    }

    /// A Hugging Face BPE: `vocab` maps token bytes to ids anywhere in 0..MAX_VOCAB, `added`
    /// tokens (recognised in text as special tokens are) take ids of their own.
    pub fn from_hf(
        vocab: Vec<(Vec<u8>, Rank)>,
        merges: &[(Vec<u8>, Vec<u8>)],
        added: Vec<(String, Rank)>,
        options: HfOptions,
    ) -> Result<Tokenizer, String> {
        let mut size = 0usize;
        for (bytes, id) in &vocab {
            if *id as usize >= MAX_VOCAB {
                return Err(format!("token {:?} has id {}, more than this runtime allows ({})", String::from_utf8_lossy(bytes), id, MAX_VOCAB));
            }
            size = size.max(*id as usize + 1);
        }
        for (name, id) in &added {
            if *id as usize >= MAX_VOCAB {
                return Err(format!("added token {} has id {}, more than this runtime allows ({})", name, id, MAX_VOCAB));
            }
            size = size.max(*id as usize + 1);
        }
        let mut decoder: Vec<Option<Vec<u8>>> = vec![None; size];
        let mut encoder: FxHashMap<Vec<u8>, Rank> = FxHashMap::default();
        encoder.reserve(vocab.len());
        for (bytes, id) in vocab {
            if decoder[id as usize].is_some() {
                return Err(format!("vocabulary id {} is used twice", id));
            }
            decoder[id as usize] = Some(bytes.clone());
            // a token listed twice (a Unigram trainer may relearn an added token's text) is found
            // by its last id, as `tokenizers` finds it
            encoder.insert(bytes, id);
        }
        // every byte's token (byte-level, or SentencePiece's byte fallback); a vocabulary of chars has none
        let mut byte_ids = Vec::with_capacity(256);
        if options.byte_fallback {
            for byte in 0..=255u8 {
                let token = if options.char_level { format!("<0x{:02X}>", byte).into_bytes() } else { vec![byte] };
                match encoder.get(&token) {
                    Some(&id) => byte_ids.push(id),
                    None => return Err(format!("byte {} has no token {} (every byte needs one)", byte, String::from_utf8_lossy(&token))),
                }
            }
        }
        // found by id (a byte's token above), never in text
        for &id in &options.unmatched {
            if let Some(Some(bytes)) = decoder.get(id as usize) {
                if encoder.get(bytes) == Some(&id) {
                    encoder.remove(bytes);
                }
            }
        }
        let mut pairs: FxHashMap<(Rank, Rank), (Rank, Rank)> = FxHashMap::default();
        pairs.reserve(merges.len());
        for (rank, (left, right)) in merges.iter().enumerate() {
            let id_of = |part: &[u8]| encoder.get(part).copied();
            let joined = [&left[..], &right[..]].concat();
            match (id_of(left), id_of(right), id_of(&joined)) {
                (Some(l), Some(r), Some(m)) => {
                    // a repeated merge keeps its first rank, as in `tokenizers`
                    pairs.entry((l, r)).or_insert((rank as Rank, m));
                }
                _ => return Err(format!("merge {} joins or makes a token that is not in the vocabulary", rank)),
            }
        }
        let mut names: FxHashMap<&str, ()> = FxHashMap::default();
        for (name, id) in &added {
            if name.is_empty() {
                return Err("an added token has empty content".to_string());
            }
            if names.insert(name.as_str(), ()).is_some() {
                return Err(format!("added token {} is declared twice", name));
            }
            match &decoder[*id as usize] {
                // `tokenizers` lets an added token name a vocabulary entry with its own text
                Some(bytes) if bytes != name.as_bytes() => {
                    return Err(format!("added token {} reuses id {} of another token", name, id))
                }
                _ => decoder[*id as usize] = Some(name.as_bytes().to_vec()),
            }
        }
        if let Decoder::Fuse { .. } = options.decoder {
            // every token (added ones too) with ▁ as a space (byte tokens become their byte below)
            for entry in decoder.iter_mut().flatten() {
                if entry.windows(3).any(|w| w == "\u{2581}".as_bytes()) {
                    *entry = String::from_utf8_lossy(entry).replace(METASPACE, " ").into_bytes();
                }
            }
        }
        // the fast path: the split pattern alone, maybe after ByteLevel's prefix space
        let fast = match &options.steps[options.normalizer_steps..] {
            _ if !options.byte_steps.is_empty() => None,
            [Step::Split(p)] if !options.char_level => Some((p.clone(), false)),
            [Step::PrefixSpace, Step::Split(p)] if !options.char_level => Some((p.clone(), true)),
            _ => None,
        };
        let (pattern, add_prefix_space) = fast.clone().unwrap_or((SplitPattern::default(), false));
        let (mut byte_chars, mut char_bytes) = (vec!['\0'; 256], vec![0u8; 324]);
        for (c, b) in crate::hf_tokenizer::byte_of_char() {
            byte_chars[b as usize] = c;
            char_bytes[c as usize] = b;
        }
        let num_ranks = decoder.len();
        let mut tokenizer = Tokenizer {
            pattern,
            encoder,
            decoder,
            num_ranks,
            specials: added,
            cache: Mutex::new(FxHashMap::default()),
            hf: Some(HfModel { merges: pairs, byte_ids, options, fast: fast.is_some(), add_prefix_space, byte_chars, char_bytes }),
        };
        // An added token decodes as `tokenizers` decodes it: a normalized one as its normalized
        // text (a lowercasing normalizer's "[unk]", a prepending one's "▁<|im_end|>"), and through
        // the decoder like any token (ByteLevel reads "naïve" as bytes, where every char is one).
        let hf = tokenizer.hf.as_ref().expect("built above");
        let decoder = hf.options.decoder.clone();
        let flags = hf.options.added.clone();
        for (i, (name, id)) in tokenizer.specials.clone().into_iter().enumerate() {
            let normalized = flags.get(i).map_or(false, |f| f.normalized);
            if !normalized && decoder != Decoder::ByteLevel {
                continue; // its text as it is (Fuse's ▁ replaced above)
            }
            let surface = if normalized { tokenizer.normalized(&name).into_owned() } else { name };
            let bytes = match decoder {
                Decoder::Fuse { .. } => surface.replace(METASPACE, " ").into_bytes(),
                Decoder::ByteLevel => {
                    let hf = tokenizer.hf.as_ref().expect("built above");
                    let mapped: Option<Vec<u8>> = surface
                        .chars()
                        .map(|c| match hf.char_bytes.get(c as usize) {
                            Some(&b) if hf.byte_chars[b as usize] == c => Some(b),
                            _ => None,
                        })
                        .collect();
                    mapped.unwrap_or_else(|| surface.into_bytes())
                }
                _ => surface.into_bytes(),
            };
            tokenizer.decoder[id as usize] = Some(bytes);
        }
        if let Decoder::Fuse { .. } = decoder {
            let hf = tokenizer.hf.as_ref().expect("built above");
            for (byte, &id) in hf.byte_ids.iter().enumerate() {
                tokenizer.decoder[id as usize] = Some(vec![byte as u8]);
            }
        }
        Ok(tokenizer)
    }

    /// The tokenizer.json text a Hugging Face tokenizer was read from.
    pub fn hf_source(&self) -> Option<&str> {
        self.hf.as_ref().map(|hf| hf.options.source.as_str())
    }

    pub fn pattern(&self) -> &SplitPattern {
        &self.pattern
    }

    /// One more than the largest id (ranks and special tokens).
    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    pub fn num_ranks(&self) -> usize {
        self.num_ranks
    }

    /// The bytes of rank `rank` (< num_ranks).
    pub fn rank_bytes(&self, rank: usize) -> &[u8] {
        self.decoder[rank].as_deref().unwrap_or(&[])
    }

    pub fn specials(&self) -> &[(String, Rank)] {
        &self.specials
    }

    pub fn special_id(&self, name: &str) -> Option<Rank> {
        self.specials.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
    }

    /// Encode without recognising any special token.
    pub fn encode_ordinary(&self, text: &str) -> Vec<Rank> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.with_cache(|cache| self.encode_ordinary_into(text, true, &mut out, cache));
        out
    }

    /// Run `f` with the shared piece cache, or with a fresh one while another thread holds it
    /// (so concurrent callers never wait on each other).
    fn with_cache<R, F: FnOnce(&mut PieceCache) -> R>(&self, f: F) -> R {
        match self.cache.try_lock() {
            Ok(mut cache) => f(&mut cache),
            Err(TryLockError::Poisoned(poisoned)) => f(&mut poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => f(&mut PieceCache::default()),
        }
    }

    /// `encode_ordinary` of each text, spread over threads.
    pub fn encode_ordinary_batch(&self, texts: &[&str]) -> Vec<Vec<Rank>> {
        let workers = worker_count().min(texts.len()).max(1);
        if workers == 1 {
            return texts.iter().map(|t| self.encode_ordinary(t)).collect();
        }
        let per_worker = (texts.len() + workers - 1) / workers;
        parallel_map(texts.chunks(per_worker).collect(), |chunk: &[&str]| {
            let mut cache = PieceCache::default();
            chunk
                .iter()
                .map(|text| {
                    let mut out = Vec::with_capacity(text.len() / 3 + 1);
                    self.encode_ordinary_into(text, true, &mut out, &mut cache);
                    out
                })
                .collect::<Vec<Vec<Rank>>>()
        })
        .into_iter()
        .flatten()
        .collect()
    }

    /// Encode `text`, a stretch without special tokens; `at_start`: whether it starts the input.
    fn encode_ordinary_into(&self, text: &str, at_start: bool, out: &mut Vec<Rank>, cache: &mut PieceCache) {
        if text.is_empty() {
            return;
        }
        let normalized = self.normalized(text);
        self.pre_tokenized_into(&normalized, at_start, out, cache);
    }

    /// What the normalizer makes of `text`: NFC/NFKC, then its ▁ steps.
    fn normalized<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let hf = match &self.hf {
            Some(hf) => hf,
            None => return Cow::Borrowed(text),
        };
        let text = match hf.options.normalizer {
            Some(form) => normalize(text, form),
            None => Cow::Borrowed(text),
        };
        match &hf.options.steps[..hf.options.normalizer_steps] {
            [] => text,
            steps => Cow::Owned(apply_steps(steps, &text, true).concat()),
        }
    }

    /// Pre-tokenize normalized `text` and encode its pieces.
    fn pre_tokenized_into(&self, text: &str, at_start: bool, out: &mut Vec<Rank>, cache: &mut PieceCache) {
        let hf = match &self.hf {
            Some(hf) if !hf.fast => {
                for piece in apply_steps(&hf.options.steps[hf.options.normalizer_steps..], text, at_start) {
                    if hf.options.byte_steps.is_empty() {
                        self.encode_piece(piece.as_bytes(), out, cache);
                        continue;
                    }
                    // ByteLevel's chars, one per byte, so a step may cut inside a UTF-8 sequence
                    // (Falcon's Digits cuts at a continuation byte 0xB2, '²')
                    let chars: String = piece.bytes().map(|b| hf.byte_chars[b as usize]).collect();
                    for part in apply_steps(&hf.options.byte_steps, &chars, false) {
                        let bytes: Vec<u8> = part.chars().map(|c| hf.char_bytes[c as usize]).collect();
                        self.encode_piece(&bytes, out, cache);
                    }
                }
                return;
            }
            hf => hf,
        };
        let prefixed;
        let text = match hf {
            Some(hf) if hf.add_prefix_space && !text.starts_with(' ') => {
                prefixed = format!(" {}", text);
                &prefixed
            }
            _ => text,
        };
        for piece in self.pattern.pieces(text) {
            self.encode_piece(piece.as_bytes(), out, cache);
        }
    }

    fn encode_piece(&self, piece: &[u8], out: &mut Vec<Rank>, cache: &mut PieceCache) {
        if self.hf.as_ref().map_or(true, |hf| hf.options.ignore_merges) {
            if let Some(rank) = self.encoder.get(piece) {
                out.push(*rank);
                return;
            }
        }
        if piece.len() > CACHE_MAX_PIECE {
            self.merge(piece, out);
            return;
        }
        if let Some(tokens) = cache.get(piece) {
            out.extend_from_slice(tokens);
            return;
        }
        let from = out.len();
        self.merge(piece, out);
        if cache.len() >= CACHE_MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(piece.to_vec(), out[from..].to_vec());
    }

    fn merge(&self, piece: &[u8], out: &mut Vec<Rank>) {
        match &self.hf {
            None => byte_pair_encode(piece, &self.encoder, out),
            Some(HfModel { options: HfOptions { model: PieceModel::WordLevel { unk }, .. }, .. }) => {
                out.push(self.encoder.get(piece).copied().unwrap_or(*unk))
            }
            Some(HfModel { options: HfOptions { model: PieceModel::WordPiece { prefix, max_chars, unk }, .. }, .. }) => {
                self.word_pieces(piece, prefix, *max_chars, *unk, out)
            }
            Some(hf @ HfModel { options: HfOptions { model: PieceModel::Unigram { .. }, .. }, .. }) => self.unigram(hf, piece, out),
            Some(hf) if hf.options.char_level => self.merge_chars(hf, piece, out),
            Some(hf) => merge_parts(
                piece,
                piece.iter().enumerate().map(|(i, &byte)| (i, hf.byte_ids[byte as usize])),
                |_, left, right| hf.merges.get(&(left, right)).copied(),
                out,
            ),
        }
    }

    /// WordPiece of one piece (see `PieceModel::WordPiece`), greedy from the left as
    /// `tokenizers` runs it.
    fn word_pieces(&self, piece: &[u8], prefix: &str, max_chars: usize, unk: Rank, out: &mut Vec<Rank>) {
        let text = String::from_utf8_lossy(piece);
        if text.chars().count() > max_chars {
            out.push(unk);
            return;
        }
        let from = out.len();
        let (mut start, mut key) = (0, Vec::with_capacity(piece.len() + prefix.len()));
        while start < text.len() {
            let found = text[start..].char_indices().map(|(i, c)| start + i + c.len_utf8()).rev().find_map(|end| {
                key.clear();
                if start > 0 {
                    key.extend_from_slice(prefix.as_bytes());
                }
                key.extend_from_slice(text[start..end].as_bytes());
                self.encoder.get(&key).map(|&id| (id, end))
            });
            match found {
                Some((id, end)) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    out.truncate(from);
                    out.push(unk);
                    return;
                }
            }
        }
    }

    /// Unigram of one piece (see `PieceModel::Unigram`): Viterbi over its char boundaries as
    /// `tokenizers` runs it (f64 sums; at each end the first best path found, starts and then
    /// token lengths in increasing order, is kept on a tie).
    fn unigram(&self, hf: &HfModel, piece: &[u8], out: &mut Vec<Rank>) {
        let (scores, unk, unk_score, fuse_unk, longest, f32) = match &hf.options.model {
            PieceModel::Unigram { scores, unk, unk_score, fuse_unk, longest, f32 } => (scores, *unk, *unk_score, *fuse_unk, *longest, *f32),
            _ => unreachable!("unigram() of another model"),
        };
        // best[end]: (score of the best path to end, where its last token starts, that token's id)
        let mut best: Vec<Option<(f64, usize, Rank)>> = vec![None; piece.len() + 1];
        best[0] = Some((0.0, 0, 0));
        let mut start = 0;
        while start < piece.len() {
            let here = best[start].map_or(0.0, |b| b.0);
            let char_len = utf8_len(piece[start]);
            let mut single = false;
            let consider = |end: usize, id: Rank, score: f64, best: &mut Vec<Option<(f64, usize, Rank)>>| {
                let total = if f32 { (score as f32 + here as f32) as f64 } else { score + here };
                if best[end].map_or(true, |(b, _, _)| total > b) {
                    best[end] = Some((total, start, id));
                }
            };
            let mut end = start + char_len;
            while end <= piece.len() && end - start <= longest {
                if let Some(&id) = self.encoder.get(&piece[start..end]) {
                    consider(end, id, scores.get(id as usize).copied().unwrap_or(0.0), &mut best);
                    single |= end == start + char_len;
                }
                end += piece.get(end).map_or(1, |&b| utf8_len(b));
            }
            if !single {
                consider(start + char_len, unk, unk_score, &mut best);
            }
            start += char_len;
        }
        // the tokens back from the end; a run of unknown chars is one string with fuse_unk
        let mut spans: Vec<(usize, usize, Rank)> = Vec::new();
        let mut end = piece.len();
        while end > 0 {
            let (_, start, id) = best[end].expect("every char boundary is reached");
            match spans.last_mut() {
                Some(last) if fuse_unk && id == unk && last.2 == unk && last.0 == end => last.0 = start,
                _ => spans.push((start, end, id)),
            }
            end = start;
        }
        for &(start, end, id) in spans.iter().rev() {
            // a string the path made of unknown chars is looked up as `tokenizers` looks it up
            match self.encoder.get(&piece[start..end]) {
                _ if id != unk => out.push(id),
                Some(&found) => out.push(found),
                None if !hf.byte_ids.is_empty() => out.extend(piece[start..end].iter().map(|&b| hf.byte_ids[b as usize])),
                None => out.push(unk),
            }
        }
    }

    /// SentencePiece-style BPE of a normalized text: parts start as chars, or as the byte tokens
    /// of a char that has no token.
    fn merge_chars(&self, hf: &HfModel, text: &[u8], out: &mut Vec<Rank>) {
        if hf.byte_ids.is_empty() {
            return self.merge_known_chars(hf, text, out);
        }
        let mut parts = Vec::with_capacity(text.len());
        let mut at = 0;
        while at < text.len() {
            let len = utf8_len(text[at]);
            match self.encoder.get(&text[at..at + len]) {
                Some(&id) => parts.push((at, id)),
                None => parts.extend((at..at + len).map(|i| (i, hf.byte_ids[text[i] as usize]))),
            }
            at += len;
        }
        merge_parts(text, parts.into_iter(), |_, left, right| hf.merges.get(&(left, right)).copied(), out);
    }

    /// BPE over a vocabulary without byte tokens, as `tokenizers` runs it: a char without a token
    /// is the unknown token (one for a run, with fuse_unk), or is left out where there is none,
    /// and its neighbours then merge as if it had never been there.
    fn merge_known_chars(&self, hf: &HfModel, text: &[u8], out: &mut Vec<Rank>) {
        let (prefix, suffix) = match &hf.options.model {
            PieceModel::Bpe { prefix, suffix } => (prefix.as_bytes(), suffix.as_bytes()),
            _ => (&[][..], &[][..]),
        };
        let (mut kept, mut parts) = (Vec::with_capacity(text.len()), Vec::with_capacity(text.len()));
        let (mut at, mut unknown_run) = (0, false);
        let mut key = Vec::new();
        while at < text.len() {
            let c = &text[at..at + utf8_len(text[at])];
            let first = at == 0;
            at += c.len();
            key.clear();
            key.extend_from_slice(if first { &[] } else { prefix });
            key.extend_from_slice(c);
            key.extend_from_slice(if at == text.len() { suffix } else { &[] });
            let known = self.encoder.get(&key).copied();
            let id = match (known, hf.options.unk) {
                (Some(id), _) => id,
                (None, Some((_, true))) if unknown_run => {
                    kept.extend_from_slice(c); // the run's one unknown token covers this char too
                    continue;
                }
                (None, Some((unk, _))) => unk,
                (None, None) => continue,
            };
            unknown_run = known.is_none();
            parts.push((kept.len(), id));
            kept.extend_from_slice(c);
        }
        merge_parts(&kept, parts.into_iter(), |_, left, right| hf.merges.get(&(left, right)).copied(), out);
    }

    /// Encode, recognising the allowed special tokens (tiktoken's `encode(allowed_special=...)`);
    /// other special-token text is encoded as ordinary text.
    pub fn encode(&self, text: &str, allowed: AllowedSpecial) -> Vec<Rank> {
        let no_flags = Vec::new();
        let flags = self.hf.as_ref().map_or(&no_flags, |hf| &hf.options.added);
        let mut raw: Vec<Added> = Vec::new();
        let mut normalized: Vec<Added> = Vec::new();
        for (i, (name, id)) in self.specials.iter().enumerate() {
            let wanted = match allowed {
                AllowedSpecial::None => false,
                AllowedSpecial::All => true,
                AllowedSpecial::Some(names) => names.iter().any(|a| a == name),
            };
            let f = flags.get(i).copied().unwrap_or_default();
            if wanted && f.normalized {
                normalized.push((self.normalized(name), *id, f));
            } else if wanted {
                raw.push((Cow::Borrowed(name.as_str()), *id, f));
            }
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.with_cache(|cache| {
            for (start, end, id) in split_added(text, &raw) {
                match id {
                    Some(id) => out.push(id),
                    None if normalized.is_empty() => self.encode_ordinary_into(&text[start..end], start == 0, &mut out, cache),
                    None => {
                        // normalized added tokens are found in the normalized text
                        let segment = self.normalized(&text[start..end]);
                        for (s, e, id) in split_added(&segment, &normalized) {
                            match id {
                                Some(id) => out.push(id),
                                None => self.pre_tokenized_into(&segment[s..e], start == 0 && s == 0, &mut out, cache),
                            }
                        }
                    }
                }
            }
        });
        out
    }

    /// The bytes token `id` adds to a text after token `previous` (`None`: it starts the text).
    /// Decoded alone, a token would lose what the decoder does to a text's first token (Llama-2's
    /// Strip of a leading space, Metaspace's dropped `▁`, the space WordPiece and a tokenizer
    /// without a decoder put between tokens), so after another it is the pair's bytes less the
    /// other's (as `monologue chat` and the page's worker.js stream a reply).
    pub fn token_bytes_after(&self, previous: Option<Rank>, id: Rank) -> Result<Vec<u8>, String> {
        let previous = match previous {
            None => return self.decode_bytes(&[id]),
            Some(p) => p,
        };
        let pair = self.decode_bytes(&[previous, id])?;
        let before = self.decode_bytes(&[previous])?.len().min(pair.len());
        Ok(pair[before..].to_vec())
    }

    /// The text of `ids` (special tokens give their text), as the tokenizer's decoder makes it.
    pub fn decode_bytes(&self, ids: &[Rank]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        let byte_level = Decoder::ByteLevel;
        let decoder = self.hf.as_ref().map_or(&byte_level, |hf| &hf.options.decoder);
        for (i, &id) in ids.iter().enumerate() {
            let bytes = match self.decoder.get(id as usize) {
                Some(Some(bytes)) => bytes,
                _ => return Err(format!("token id {} is not in the vocabulary (size {})", id, self.vocab_size())),
            };
            match decoder {
                Decoder::Metaspace { drop_first } => {
                    let space = if i == 0 && *drop_first { "" } else { " " };
                    out.extend_from_slice(String::from_utf8_lossy(bytes).replace(METASPACE, space).as_bytes());
                }
                Decoder::Suffix(suffix) => {
                    let space = if i + 1 == ids.len() { "" } else { " " };
                    out.extend_from_slice(String::from_utf8_lossy(bytes).replace(suffix.as_str(), space).as_bytes());
                }
                Decoder::Spaced => {
                    if i > 0 {
                        out.push(b' ');
                    }
                    out.extend_from_slice(bytes);
                }
                Decoder::WordPiece { prefix, cleanup } => {
                    let text = String::from_utf8_lossy(bytes);
                    let token = match text.strip_prefix(prefix.as_str()) {
                        _ if i == 0 => text.to_string(),
                        Some(rest) => rest.to_string(),
                        None => format!(" {}", text),
                    };
                    out.extend_from_slice(if *cleanup { wordpiece_cleanup(&token) } else { token }.as_bytes());
                }
                _ => out.extend_from_slice(bytes),
            }
        }
        if *decoder == (Decoder::Fuse { strip_first_space: true }) && out.first() == Some(&b' ') {
            out.remove(0);
        }
        Ok(out)
    }
}

/// tiktoken's byte_pair_merge rule (repeatedly merge the adjacent pair whose concatenation has
/// the lowest rank, leftmost on ties), with ids == ranks.
fn byte_pair_encode(piece: &[u8], ranks: &FxHashMap<Vec<u8>, Rank>, out: &mut Vec<Rank>) {
    merge_parts(
        piece,
        piece.iter().enumerate().map(|(i, &byte)| (i, ranks[&[byte][..]])),
        |joined, _, _| ranks.get(joined).map(|&rank| (rank, rank)),
        out,
    );
}

/// Merge the parts of `piece` (given in order as (start, id), covering it) while `pair(joined
/// bytes, left id, right id)` gives (priority, merged id) for some adjacent pair, lowest priority
/// first, leftmost on ties; push the final ids to `out`. O(n log n): the parts are a linked list
/// and candidate pairs sit in a min-heap, stale entries skipped when popped (tiktoken's own loop
/// rescans every pair after each merge, quadratic in a long word without spaces). A heap entry
/// (priority, left start, right end) is current while its left part still starts there and its
/// right part still ends there: part boundaries only ever disappear, so the split between them
/// is the one it had.
pub(crate) fn merge_parts<I, P>(piece: &[u8], parts: I, pair: P, out: &mut Vec<Rank>)
where
    I: Iterator<Item = (usize, Rank)>,
    P: Fn(&[u8], Rank, Rank) -> Option<(Rank, Rank)>,
{
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    // u32 offsets keep the arrays and heap entries small (a 4 GiB piece is not a message).
    assert!(piece.len() < GONE as usize, "BPE piece of {} bytes", piece.len());
    let n = piece.len() as u32;
    let at = |from: u32, to: u32| &piece[from as usize..to as usize];
    // next[i]: start of the part after the part starting at i (n at the end), GONE once the part
    // at i was merged into its left neighbour; prev[i]: start of the part before (GONE at 0);
    // id[i]: the id of the part starting at i. Entries at offsets inside a part are unused.
    let mut next: Vec<u32> = vec![GONE; piece.len()];
    let mut prev: Vec<u32> = vec![GONE; piece.len()];
    let mut id: Vec<Rank> = vec![0; piece.len()];
    let mut pairs: Vec<Reverse<(Rank, u32, u32)>> = Vec::with_capacity(piece.len());
    let mut last = GONE;
    for (start, part_id) in parts {
        let start = start as u32;
        id[start as usize] = part_id;
        prev[start as usize] = last;
        if last != GONE {
            next[last as usize] = start;
        }
        last = start;
    }
    if last != GONE {
        next[last as usize] = n;
    }
    let mut left = 0;
    while left < n && next[left as usize] < n {
        let right = next[left as usize];
        let end = next[right as usize];
        if let Some((p, _)) = pair(at(left, end), id[left as usize], id[right as usize]) {
            pairs.push(Reverse((p, left, end)));
        }
        left = right;
    }
    let mut heap = BinaryHeap::from(pairs);
    while let Some(Reverse((_, left, end))) = heap.pop() {
        let right = next[left as usize];
        if right == GONE || right >= n || next[right as usize] != end {
            continue;
        }
        let merged = match pair(at(left, end), id[left as usize], id[right as usize]) {
            Some((_, merged)) => merged,
            None => continue,
        };
        id[left as usize] = merged;
        next[left as usize] = end;
        next[right as usize] = GONE;
        if end < n {
            prev[end as usize] = left;
            let after = next[end as usize];
            if let Some((p, _)) = pair(at(left, after), merged, id[end as usize]) {
                heap.push(Reverse((p, left, after)));
            }
        }
        let before = prev[left as usize];
        if before != GONE {
            if let Some((p, _)) = pair(at(before, end), id[before as usize], merged) {
                heap.push(Reverse((p, before, end)));
            }
        }
    }
    let mut start = 0;
    while start < n {
        out.push(id[start as usize]);
        start = next[start as usize];
    }
}

const GONE: u32 = u32::MAX;

/// The length of the UTF-8 sequence that starts with `first`.
fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tiktoken's quadratic loop, kept here as the reference for `merge_parts`.
    fn rescan_merge(piece: &[u8], ranks: &FxHashMap<Vec<u8>, Rank>) -> Vec<Vec<u8>> {
        let mut parts: Vec<Vec<u8>> = piece.iter().map(|b| vec![*b]).collect();
        loop {
            let mut best: Option<(Rank, usize)> = None;
            for i in 0..parts.len().saturating_sub(1) {
                let joined = [&parts[i][..], &parts[i + 1][..]].concat();
                if let Some(&r) = ranks.get(&joined) {
                    if best.map_or(true, |(b, _)| r < b) {
                        best = Some((r, i));
                    }
                }
            }
            match best {
                None => return parts,
                Some((_, i)) => {
                    let right = parts.remove(i + 1);
                    parts[i].extend(right);
                }
            }
        }
    }

    #[test]
    fn heap_merging_equals_the_rescanning_loop() {
        let mut ranks: FxHashMap<Vec<u8>, Rank> = FxHashMap::default();
        for b in 0..=255u8 {
            ranks.insert(vec![b], b as Rank);
        }
        // tokens over a 3-letter alphabet, with ranks that disagree with their lengths
        let mut seed = 12345u64;
        let mut rand = move |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut next_rank = 256;
        for _ in 0..60 {
            let len = 2 + rand(4) as usize;
            let token: Vec<u8> = (0..len).map(|_| b'a' + rand(3) as u8).collect();
            ranks.entry(token).or_insert_with(|| {
                next_rank += 1;
                next_rank
            });
        }
        for _ in 0..500 {
            let len = 1 + rand(40) as usize;
            let piece: Vec<u8> = (0..len).map(|_| b'a' + rand(3) as u8).collect();
            let mut got = Vec::new();
            byte_pair_encode(&piece, &ranks, &mut got);
            let want: Vec<Rank> = rescan_merge(&piece, &ranks).iter().map(|part| ranks[part]).collect();
            assert_eq!(got, want, "piece {:?}", String::from_utf8_lossy(&piece));
        }
    }

    #[test]
    fn a_reply_streamed_token_by_token_is_its_whole_decode() {
        // decoders that treat a text's first token apart: Metaspace drops its ▁, WordPiece and a
        // tokenizer without a decoder put no space before it
        let files = [
            r###"{"model": {"type": "BPE", "vocab": {"▁": 0, "a": 1, "▁a": 2, "b": 3}, "merges": [["▁", "a"]]},
                "pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "always"}, "decoder": {"type": "Metaspace"}}"###,
            r###"{"model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[UNK]": 0, "a": 1, "##b": 2, "b": 3, ".": 4}},
                "pre_tokenizer": {"type": "BertPreTokenizer"}, "decoder": {"type": "WordPiece"}}"###,
            r###"{"model": {"type": "WordLevel", "unk_token": "[UNK]", "vocab": {"[UNK]": 0, "a": 1, "ab": 2}},
                "pre_tokenizer": {"type": "WhitespaceSplit"}, "decoder": null}"###,
        ];
        for file in files {
            let tok = crate::hf_tokenizer::from_doc(&crate::json::parse(file).unwrap(), file).unwrap();
            let ids = tok.encode_ordinary("a ab a. b");
            let mut streamed = Vec::new();
            let mut previous = None;
            for &id in &ids {
                streamed.extend(tok.token_bytes_after(previous, id).unwrap());
                previous = Some(id);
            }
            let whole = tok.decode_bytes(&ids).unwrap();
            assert_eq!(String::from_utf8(streamed).unwrap(), String::from_utf8(whole.clone()).unwrap(), "{}", file);
            let alone: Vec<u8> = ids.iter().flat_map(|&id| tok.decode_bytes(&[id]).unwrap()).collect();
            assert_ne!(alone, whole, "each token decoded alone loses the spaces");
        }
    }

    #[test]
    fn a_huge_special_id_is_refused_before_allocating() {
        let ranks: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let err = Tokenizer::new(SplitPattern::default(), ranks, vec![("<|x|>".to_string(), u32::MAX)])
            .err()
            .expect("refused");
        assert!(err.contains("4294967295"), "{}", err);
    }
}
