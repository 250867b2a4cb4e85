//! Byte-level BPE training: count pre-tokens (in parallel), then merge the most frequent
//! adjacent pair repeatedly, updating pair counts incrementally from the words that contain
//! the merged pair instead of recounting.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::bpe::{Rank, Tokenizer};
use crate::fxhash::FxHashMap;
use crate::parallel::{parallel_map, worker_count};
use crate::pretokenize::SplitPattern;

/// Texts longer than this are cut (at safe points) so threads share the work.
const SEGMENT_BYTES: usize = 1 << 20;

/// Accumulates pre-token counts from texts fed in batches, then trains.
pub struct Trainer {
    pattern: SplitPattern,
    counts: FxHashMap<String, u64>,
}

type Pair = (u32, u32);

/// A heap entry: most frequent first; on equal counts the smaller pair (by id) first, so
/// training is deterministic.
#[derive(PartialEq, Eq)]
struct Candidate {
    count: u64,
    pair: Pair,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.count.cmp(&other.count).then_with(|| other.pair.cmp(&self.pair))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn count_pieces<'t>(pattern: &SplitPattern, segments: &[&'t str]) -> FxHashMap<&'t str, u64> {
    let mut counts: FxHashMap<&str, u64> = FxHashMap::default();
    for segment in segments {
        for piece in pattern.pieces(segment) {
            *counts.entry(piece).or_insert(0) += 1;
        }
    }
    counts
}

/// Split `segments` into `n` groups of about equal byte size.
fn balance<'t>(segments: Vec<&'t str>, n: usize) -> Vec<Vec<&'t str>> {
    let total: usize = segments.iter().map(|s| s.len()).sum();
    let per_group = total / n + 1;
    let mut groups: Vec<Vec<&str>> = vec![Vec::new()];
    let mut size = 0;
    for segment in segments {
        if size >= per_group && groups.len() < n {
            groups.push(Vec::new());
            size = 0;
        }
        size += segment.len();
        groups.last_mut().unwrap().push(segment);
    }
    groups
}

impl Trainer {
    pub fn new(pattern: SplitPattern) -> Trainer {
        Trainer { pattern, counts: FxHashMap::default() }
    }

    /// Count the pre-tokens of `texts`.
    pub fn feed(&mut self, texts: &[&str]) {
        let mut segments: Vec<&str> = Vec::new();
        for text in texts {
            let mut from = 0;
            for cut in self.pattern.safe_cuts(text, SEGMENT_BYTES) {
                segments.push(&text[from..cut]);
                from = cut;
            }
            segments.push(&text[from..]);
        }
        let workers = worker_count().max(1);
        let pattern = &self.pattern;
        let partials: Vec<FxHashMap<&str, u64>> = if workers == 1 || segments.len() == 1 {
            vec![count_pieces(pattern, &segments)]
        } else {
            parallel_map(balance(segments, workers), |group| count_pieces(pattern, &group))
        };
        for partial in partials {
            for (piece, n) in partial {
                match self.counts.get_mut(piece) {
                    Some(total) => *total += n,
                    None => {
                        self.counts.insert(piece.to_string(), n);
                    }
                }
            }
        }
    }

    /// Learn merges until there are `vocab_size - specials.len()` ranks (or no pair is left),
    /// then give special tokens the ids right after the last rank.
    pub fn train(&self, vocab_size: usize, specials: &[String]) -> Result<Tokenizer, String> {
        let min = 256 + specials.len();
        if vocab_size < min {
            return Err(format!(
                "vocab size {} is smaller than 256 byte tokens + {} special tokens = {}",
                vocab_size,
                specials.len(),
                min
            ));
        }
        let target_ranks = vocab_size - specials.len();
        let ranks = learn_ranks(&self.counts, target_ranks);
        let first_special = ranks.len() as Rank;
        let specials = specials
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), first_special + i as Rank))
            .collect();
        Tokenizer::new(self.pattern.clone(), ranks, specials)
    }
}

/// Merge `pair` wherever it occurs in `word`, left to right, into `new_id`.
fn merge_word(word: &[u32], pair: Pair, new_id: u32, merged: &mut Vec<u32>) {
    merged.clear();
    let mut i = 0;
    while i < word.len() {
        if i + 1 < word.len() && word[i] == pair.0 && word[i + 1] == pair.1 {
            merged.push(new_id);
            i += 2;
        } else {
            merged.push(word[i]);
            i += 1;
        }
    }
}

/// The ranks (token bytes, index == rank): the 256 single bytes, then the learned merges.
fn learn_ranks(counts: &FxHashMap<String, u64>, target_ranks: usize) -> Vec<Vec<u8>> {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut token_ids: FxHashMap<Vec<u8>, u32> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();

    let mut words: Vec<Vec<u32>> = Vec::with_capacity(counts.len());
    let mut word_counts: Vec<i64> = Vec::with_capacity(counts.len());
    for (piece, &n) in counts {
        if piece.len() >= 2 {
            words.push(piece.bytes().map(|b| b as u32).collect());
            word_counts.push(n as i64);
        }
    }

    let mut pair_counts: FxHashMap<Pair, i64> = FxHashMap::default();
    let mut pair_words: FxHashMap<Pair, Vec<u32>> = FxHashMap::default();
    for (w, word) in words.iter().enumerate() {
        for p in word.windows(2) {
            let pair = (p[0], p[1]);
            *pair_counts.entry(pair).or_insert(0) += word_counts[w];
            pair_words.entry(pair).or_insert_with(Vec::new).push(w as u32);
        }
    }
    let mut heap: BinaryHeap<Candidate> = pair_counts
        .iter()
        .filter(|(_, &c)| c > 0)
        .map(|(&pair, &c)| Candidate { count: c as u64, pair })
        .collect();

    let mut deltas: FxHashMap<Pair, i64> = FxHashMap::default();
    let mut merged: Vec<u32> = Vec::new();
    while tokens.len() < target_ranks {
        let top = match heap.pop() {
            Some(t) => t,
            None => break,
        };
        let current = pair_counts.get(&top.pair).copied().unwrap_or(0);
        if current <= 0 {
            continue;
        }
        if current as u64 != top.count {
            heap.push(Candidate { count: current as u64, pair: top.pair });
            continue;
        }
        let (a, b) = top.pair;
        let mut bytes = tokens[a as usize].clone();
        bytes.extend_from_slice(&tokens[b as usize]);
        // Two merge orders can spell the same bytes; like the tokenizers library, reuse the id.
        let new_id = match token_ids.get(&bytes) {
            Some(&id) => id,
            None => {
                let id = tokens.len() as u32;
                token_ids.insert(bytes.clone(), id);
                tokens.push(bytes);
                id
            }
        };

        let mut affected = pair_words.remove(&top.pair).unwrap_or_default();
        affected.sort_unstable();
        affected.dedup();
        deltas.clear();
        let touches = |x: u32| x == a || x == b || x == new_id;
        for &w in &affected {
            let word = &words[w as usize];
            if !word.windows(2).any(|p| p[0] == a && p[1] == b) {
                continue;
            }
            let n = word_counts[w as usize];
            merge_word(word, top.pair, new_id, &mut merged);
            // only pairs with a, b or the new token can change
            for p in word.windows(2) {
                if touches(p[0]) || touches(p[1]) {
                    *deltas.entry((p[0], p[1])).or_insert(0) -= n;
                }
            }
            for p in merged.windows(2) {
                if touches(p[0]) || touches(p[1]) {
                    *deltas.entry((p[0], p[1])).or_insert(0) += n;
                    if p[0] == new_id || p[1] == new_id {
                        pair_words.entry((p[0], p[1])).or_insert_with(Vec::new).push(w);
                    }
                }
            }
            std::mem::swap(&mut words[w as usize], &mut merged);
        }
        for (&pair, &delta) in &deltas {
            if delta == 0 {
                continue;
            }
            let count = pair_counts.entry(pair).or_insert(0);
            *count += delta;
            // counts that only fell are fixed lazily when popped; a risen one needs a fresh entry
            if delta > 0 {
                heap.push(Candidate { count: *count as u64, pair });
            }
        }
        pair_counts.remove(&top.pair);
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pretokenize::NANOCHAT_PATTERN;

    #[test]
    fn learns_the_most_frequent_pair_first() {
        let mut trainer = Trainer::new(SplitPattern::parse(NANOCHAT_PATTERN).unwrap());
        trainer.feed(&["aaab aaab aaab cd"]);
        let tok = trainer.train(258, &[]).unwrap();
        assert_eq!(tok.rank_bytes(256), b"aa");
        // then (aa, a) and (a, b) tie at 3: the smaller pair wins
        assert_eq!(tok.rank_bytes(257), b"ab");
        assert_eq!(tok.encode_ordinary("aaab"), vec![256, 257]);
    }
}
