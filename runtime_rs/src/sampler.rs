//! Next-token choice: greedy, or temperature / top-k / top-p (nucleus) sampling with a
//! repetition penalty, from a seeded RNG so a seed gives the same text on every platform.
//!
//! Semantics follow monologue_compile/chat.py `sample`: top-k keeps the logits >= the k-th
//! largest; top-p drops a token when the tokens ranked before it already cover top_p. The
//! repetition penalty (CTRL's) divides a positive logit of an already generated token by the
//! penalty and multiplies a negative one.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// 0 (or less): greedy
    pub temperature: f32,
    /// 0: off
    pub top_k: u32,
    /// outside (0, 1): off
    pub top_p: f32,
    /// 1: off
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { temperature: 0.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }
}

/// SplitMix64: tiny, fast, and the same sequence on every platform for a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    pub config: SamplerConfig,
    rng: Rng,
}

/// Index of the largest value (the first one on ties, as numpy's argmax); NaN never wins.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Sampler {
        Sampler { rng: Rng::new(config.seed), config }
    }

    /// Choose the next token from `logits`, penalizing the ids in `history`.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> usize {
        let c = self.config;
        let penalty = c.repetition_penalty > 0.0 && c.repetition_penalty != 1.0;
        if !(c.temperature > 0.0) && !penalty {
            // greedy: the argmax below without the f64 copy of the logits (f32 to f64 keeps the
            // order, and NaN, -inf there, never wins either), which was 3% of a small model's
            // wasm decode token
            return argmax(logits);
        }
        let mut x: Vec<f64> = logits.iter().map(|&v| if v.is_nan() { f64::NEG_INFINITY } else { v as f64 }).collect();
        if penalty {
            let p = c.repetition_penalty as f64;
            let mut seen = vec![false; x.len()];
            for &id in history {
                if let Some(s) = seen.get_mut(id as usize) {
                    if !*s {
                        *s = true;
                        let v = &mut x[id as usize];
                        *v = if *v > 0.0 { *v / p } else { *v * p };
                    }
                }
            }
        }
        if x.is_empty() {
            return 0;
        }
        if !(c.temperature > 0.0) {
            let mut best = 0;
            for i in 1..x.len() {
                if x[i] > x[best] {
                    best = i;
                }
            }
            return best;
        }
        let t = c.temperature as f64;
        x.iter_mut().for_each(|v| *v /= t);
        let mut order: Vec<usize> = (0..x.len()).collect();
        // descending, ties by index: a total order, so the same logits give the same choice
        order.sort_by(|&a, &b| x[b].partial_cmp(&x[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
        let mut keep = x.len();
        if c.top_k > 0 && (c.top_k as usize) < keep {
            let kth = x[order[c.top_k as usize - 1]];
            keep = order.iter().take_while(|&&i| x[i] >= kth).count();
        }
        let max = x[order[0]];
        let mut p: Vec<f64> = order[..keep].iter().map(|&i| (x[i] - max).exp()).collect();
        if c.top_p > 0.0 && c.top_p < 1.0 {
            let total: f64 = p.iter().sum();
            let mut before = 0.0;
            let mut n = 0;
            for &pi in &p {
                if before / total >= c.top_p as f64 {
                    break;
                }
                before += pi;
                n += 1;
            }
            p.truncate(n.max(1));
        }
        let total: f64 = p.iter().sum();
        let mut u = self.rng.next_f64() * total;
        for (j, &pi) in p.iter().enumerate() {
            if u < pi {
                return order[j];
            }
            u -= pi;
        }
        order[p.len() - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_and_penalty_applies() {
        let mut s = Sampler::new(SamplerConfig::default());
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[]), 1);
        s.config.repetition_penalty = 2.0;
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[1]), 2); // 3/2 < 2
    }

    #[test]
    fn greedy_takes_the_first_largest_and_skips_nan() {
        let mut s = Sampler::new(SamplerConfig::default());
        assert_eq!(s.sample(&[f32::NAN, -1e30, 2.0, 2.0, f32::NAN], &[]), 2);
        assert_eq!(s.sample(&[f32::NAN, f32::NEG_INFINITY], &[]), 0);
        assert_eq!(s.sample(&[f32::NAN, f32::NAN, -3.0], &[]), 2);
        assert_eq!(s.sample(&[], &[]), 0);
        // the same choices through the penalized path with a penalty that changes nothing here
        s.config.repetition_penalty = 2.0;
        assert_eq!(s.sample(&[f32::NAN, -1e30, 2.0, 2.0, f32::NAN], &[]), 2);
        assert_eq!(s.sample(&[f32::NAN, f32::NAN, -3.0], &[]), 2);
    }

    #[test]
    fn top_k_and_top_p_restrict_choices() {
        let logits = [1.0, 5.0, 4.9, -3.0, 4.8];
        let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_k: 2, seed: 3, ..Default::default() });
        for _ in 0..200 {
            let t = s.sample(&logits, &[]);
            assert!(t == 1 || t == 2);
        }
        let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_p: 0.01, seed: 3, ..Default::default() });
        for _ in 0..50 {
            assert_eq!(s.sample(&logits, &[]), 1);
        }
    }

    #[test]
    fn same_seed_same_choices_and_distribution() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln()];
        let cfg = SamplerConfig { temperature: 1.0, seed: 42, ..Default::default() };
        let (mut a, mut b) = (Sampler::new(cfg), Sampler::new(cfg));
        let mut counts = [0usize; 3];
        for _ in 0..6000 {
            let t = a.sample(&logits, &[]);
            assert_eq!(t, b.sample(&logits, &[]));
            counts[t] += 1;
        }
        // expected 1000 / 2000 / 3000
        assert!((counts[0] as i64 - 1000).abs() < 150 && (counts[2] as i64 - 3000).abs() < 200, "{:?}", counts);
    }
}
