//! Byte-level BPE encoding and decoding with tiktoken's exact merge rule, plus special tokens.

use std::sync::{Mutex, TryLockError};

use crate::fxhash::FxHashMap;
use crate::parallel::{parallel_map, worker_count};
use crate::pretokenize::SplitPattern;

pub type Rank = u32;

/// Pieces longer than this are not cached (they are rare and would bloat the cache).
const CACHE_MAX_PIECE: usize = 64;
const CACHE_MAX_ENTRIES: usize = 1 << 18;

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
        let mut decoder: Vec<Option<Vec<u8>>> = ranks.into_iter().map(Some).collect();
        for (i, (name, id)) in specials.iter().enumerate() {
            if name.is_empty() {
                return Err("a special token has an empty name".to_string());
            }
            if specials[..i].iter().any(|(earlier, _)| earlier == name) {
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
        })
    }

    pub fn pattern(&self) -> SplitPattern {
        self.pattern
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
        self.with_cache(|cache| self.encode_ordinary_into(text, &mut out, cache));
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
                    self.encode_ordinary_into(text, &mut out, &mut cache);
                    out
                })
                .collect::<Vec<Vec<Rank>>>()
        })
        .into_iter()
        .flatten()
        .collect()
    }

    fn encode_ordinary_into(
        &self,
        text: &str,
        out: &mut Vec<Rank>,
        cache: &mut PieceCache,
    ) {
        for piece in self.pattern.pieces(text) {
            let piece = piece.as_bytes();
            if let Some(rank) = self.encoder.get(piece) {
                out.push(*rank);
                continue;
            }
            if piece.len() > CACHE_MAX_PIECE {
                byte_pair_encode(piece, &self.encoder, out);
                continue;
            }
            if let Some(tokens) = cache.get(piece) {
                out.extend_from_slice(tokens);
                continue;
            }
            let from = out.len();
            byte_pair_encode(piece, &self.encoder, out);
            if cache.len() >= CACHE_MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(piece.to_vec(), out[from..].to_vec());
        }
    }

    /// Encode, recognising the allowed special tokens (tiktoken's `encode(allowed_special=...)`);
    /// other special-token text is encoded as ordinary text.
    pub fn encode(&self, text: &str, allowed: AllowedSpecial) -> Vec<Rank> {
        let active: Vec<(&str, Rank)> = match allowed {
            AllowedSpecial::None => Vec::new(),
            AllowedSpecial::All => self.specials.iter().map(|(n, id)| (n.as_str(), *id)).collect(),
            AllowedSpecial::Some(names) => self
                .specials
                .iter()
                .filter(|(n, _)| names.iter().any(|a| a == n))
                .map(|(n, id)| (n.as_str(), *id))
                .collect(),
        };
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.with_cache(|cache| self.encode_with_specials(text, &active, &mut out, cache));
        out
    }

    fn encode_with_specials(&self, text: &str, active: &[(&str, Rank)], out: &mut Vec<Rank>, cache: &mut PieceCache) {
        // next occurrence of each active special at or after `at`
        let mut next: Vec<Option<usize>> = active.iter().map(|(n, _)| text.find(n)).collect();
        let mut at = 0;
        loop {
            // earliest occurrence; at equal starts the longest name wins
            let mut best: Option<(usize, usize)> = None;
            for (i, pos) in next.iter().enumerate() {
                if let Some(p) = *pos {
                    let better = match best {
                        None => true,
                        Some((bp, bi)) => p < bp || (p == bp && active[i].0.len() > active[bi].0.len()),
                    };
                    if better {
                        best = Some((p, i));
                    }
                }
            }
            let (pos, which) = match best {
                Some(b) => b,
                None => break,
            };
            self.encode_ordinary_into(&text[at..pos], out, cache);
            out.push(active[which].1);
            at = pos + active[which].0.len();
            for (i, slot) in next.iter_mut().enumerate() {
                if let Some(p) = *slot {
                    if p < at {
                        *slot = text[at..].find(active[i].0).map(|q| q + at);
                    }
                }
            }
        }
        self.encode_ordinary_into(&text[at..], out, cache);
    }

    /// The bytes of `ids` concatenated (special tokens give their text).
    pub fn decode_bytes(&self, ids: &[Rank]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self.decoder.get(id as usize) {
                Some(Some(bytes)) => out.extend_from_slice(bytes),
                _ => return Err(format!("token id {} is not in the vocabulary (size {})", id, self.vocab_size())),
            }
        }
        Ok(out)
    }
}

/// tiktoken's byte_pair_merge: repeatedly merge the adjacent pair whose concatenation has the
/// lowest rank (leftmost on ties) until no adjacent pair is a token.
fn byte_pair_encode(piece: &[u8], ranks: &FxHashMap<Vec<u8>, Rank>, out: &mut Vec<Rank>) {
    if piece.len() == 1 {
        out.push(ranks[piece]);
        return;
    }
    // parts[i] = (start of part i, rank of merging part i with part i+1)
    let mut parts: Vec<(usize, Rank)> = Vec::with_capacity(piece.len() + 1);
    let mut min_rank = (Rank::MAX, usize::MAX);
    for i in 0..piece.len() - 1 {
        let rank = *ranks.get(&piece[i..i + 2]).unwrap_or(&Rank::MAX);
        if rank < min_rank.0 {
            min_rank = (rank, i);
        }
        parts.push((i, rank));
    }
    parts.push((piece.len() - 1, Rank::MAX));
    parts.push((piece.len(), Rank::MAX));

    let rank_of = |parts: &Vec<(usize, Rank)>, i: usize| -> Rank {
        if i + 3 < parts.len() {
            *ranks.get(&piece[parts[i].0..parts[i + 3].0]).unwrap_or(&Rank::MAX)
        } else {
            Rank::MAX
        }
    };
    while min_rank.0 != Rank::MAX {
        let i = min_rank.1;
        if i > 0 {
            parts[i - 1].1 = rank_of(&parts, i - 1);
        }
        parts[i].1 = rank_of(&parts, i);
        parts.remove(i + 1);
        min_rank = (Rank::MAX, usize::MAX);
        for (j, &(_, rank)) in parts[..parts.len() - 1].iter().enumerate() {
            if rank < min_rank.0 {
                min_rank = (rank, j);
            }
        }
    }
    for w in parts.windows(2) {
        out.push(ranks[&piece[w[0].0..w[1].0]]);
    }
}
