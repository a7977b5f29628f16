//! Next-token selection with the semantics of transformers 4.46 `generate`.
//!
//! The pipeline is the one `GenerationMixin._get_logits_processor` builds: the repetition penalty,
//! then the warpers temperature → top-k → top-p → min-p, then a draw from the softmax of what
//! survives. Greedy decoding (temperature 0) is the argmax after the penalty. Arithmetic is f32 like
//! torch's, except that sums are accumulated in f64 (torch's CPU `cumsum` does the same, and its
//! vectorised softmax sum is closer to the exact sum than a sequential f32 sum would be).

use std::cmp::Ordering;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// How the next token is chosen. The default is greedy decoding.
#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// Softmax temperature; 0 selects greedy decoding.
    pub temperature: f32,
    /// Keep the `k` highest-scoring tokens (and any tied with the k-th).
    pub top_k: Option<usize>,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to more than `top_p`.
    pub top_p: Option<f32>,
    /// Drop tokens less likely than `min_p` times the most likely one.
    pub min_p: Option<f32>,
    /// CTRL penalty for ids already in the history (> 1 discourages repeats); 1.0 is off.
    pub repetition_penalty: f32,
    /// Seed of the sampling RNG: the same seed, logits and history give the same tokens.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(Error::InvalidArgument(message));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return invalid(format!(
                "temperature must be a finite number >= 0 (0 = greedy), got {}",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return invalid("top_k must be at least 1 (leave it unset to keep every token)".into());
        }
        if let Some(top_p) = self.top_p {
            if !(top_p > 0.0 && top_p <= 1.0) {
                return invalid(format!("top_p must be in (0, 1], got {top_p}"));
            }
        }
        if let Some(min_p) = self.min_p {
            if !(0.0..=1.0).contains(&min_p) {
                return invalid(format!("min_p must be in [0, 1], got {min_p}"));
            }
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return invalid(format!(
                "repetition_penalty must be a finite number > 0 (1 = off), got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// Chooses next tokens; owns the seeded RNG so that a generation is reproducible.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token for raw f32 `logits`; `history` holds the ids seen so far (prompt and
    /// generated) for the repetition penalty.
    ///
    /// # Panics
    /// If `logits` is empty.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let dist = self.filtered_distribution(logits, history);
        if let [(id, _)] = dist[..] {
            return id;
        }
        let total: f64 = dist.iter().map(|&(_, p)| f64::from(p)).sum();
        let mut rest = self.rng.random::<f64>() * total;
        dist.iter()
            .find(|&&(_, p)| {
                rest -= f64::from(p);
                rest < 0.0
            })
            // Rounding can leave `rest` a hair above zero after the last token.
            .or_else(|| dist.iter().rfind(|&&(_, p)| p > 0.0))
            .map_or(dist[0].0, |&(id, _)| id)
    }

    /// The distribution `sample` draws from: the ids that survive the penalty and the warpers,
    /// in increasing id order, with their softmax probabilities. Greedy decoding gives the argmax
    /// with probability 1.
    ///
    /// # Panics
    /// If `logits` is empty.
    pub fn filtered_distribution(&self, logits: &[f32], history: &[u32]) -> Vec<(u32, f32)> {
        assert!(!logits.is_empty(), "sampler: empty logits");
        let p = &self.params;
        let scores = penalized(logits, history, p.repetition_penalty);
        if p.is_greedy() {
            return vec![(argmax(&scores), 1.0)];
        }
        // Filtered tokens would be -inf in transformers; here they are simply dropped.
        let mut cand: Vec<(u32, f32)> = scores
            .iter()
            .enumerate()
            .map(|(id, &s)| (id as u32, s / p.temperature))
            .filter(|&(_, s)| s > f32::NEG_INFINITY)
            .collect();
        if cand.is_empty() {
            // Every logit is -inf or NaN: nothing to draw from, so fall back to the argmax.
            return vec![(argmax(&scores), 1.0)];
        }
        if let Some(k) = p.top_k {
            top_k_filter(&mut cand, k);
        }
        // transformers adds no top-p warper for top_p = 1; running it would drop underflowed tokens.
        if let Some(top_p) = p.top_p.filter(|&top_p| top_p < 1.0) {
            top_p_filter(&mut cand, top_p);
        }
        if let Some(min_p) = p.min_p {
            let softmax = Softmax::new(&cand);
            // The most likely token has exp(0) * inv_sum.
            let cutoff = min_p * softmax.inv_sum;
            cand.retain(|&(_, s)| softmax.prob(s) >= cutoff);
        }
        let softmax = Softmax::new(&cand);
        cand.sort_unstable_by_key(|&(id, _)| id);
        cand.into_iter()
            .map(|(id, s)| (id, softmax.prob(s)))
            .collect()
    }
}

/// The `k` most likely ids with their natural-log softmax probabilities computed from the raw
/// `logits` (no penalty or temperature), most likely first, ties by lower id.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    let (max, log_sum) = log_normalizer(logits);
    let most_likely_first = |&a: &u32, &b: &u32| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    };
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.select_nth_unstable_by(k - 1, most_likely_first);
    ids.truncate(k);
    ids.sort_unstable_by(most_likely_first);
    ids.into_iter()
        .map(|id| (id, logits[id as usize] - max - log_sum))
        .collect()
}

/// The natural-log softmax probability of `id` under the raw `logits`, as [`top_logprobs`]
/// computes it.
pub fn logprob(logits: &[f32], id: u32) -> f32 {
    let (max, log_sum) = log_normalizer(logits);
    logits[id as usize] - max - log_sum
}

/// `(max, ln(sum(exp(x - max))))`, the sum accumulated in f64.
fn log_normalizer(logits: &[f32]) -> (f32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| f64::from((x - max).exp())).sum();
    (max, sum.ln() as f32)
}

/// RepetitionPenaltyLogitsProcessor: logits of seen ids are divided by the penalty when positive
/// and multiplied when negative. Reading from `logits`, not from the output, penalises repeated
/// ids once, like transformers' gather/scatter. Ids outside the vocabulary are ignored.
fn penalized(logits: &[f32], history: &[u32], penalty: f32) -> Vec<f32> {
    let mut scores = logits.to_vec();
    if penalty != 1.0 {
        for &id in history {
            if let Some(&x) = logits.get(id as usize) {
                scores[id as usize] = if x < 0.0 { x * penalty } else { x / penalty };
            }
        }
    }
    scores
}

/// First index of the maximum, like `torch.argmax`.
fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

/// TopKLogitsWarper: drop scores below the k-th largest, so ties with it survive. A partial
/// select keeps this O(vocab).
fn top_k_filter(cand: &mut Vec<(u32, f32)>, k: usize) {
    if k >= cand.len() {
        return;
    }
    cand.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
    let kth = cand[k - 1].1;
    cand.retain(|&(_, s)| s >= kth);
}

/// Candidates least likely first; ties by lower id, which is what a stable ascending sort gives
/// (torch's CPU sort is not stable, so transformers itself is arbitrary on such ties).
fn ascending(a: &Ranked, b: &Ranked) -> Ordering {
    a.score.total_cmp(&b.score).then(a.id.cmp(&b.id))
}

/// A candidate with its probability, for top-p's cumulative sums.
struct Ranked {
    id: u32,
    score: f32,
    prob: f32,
}

/// How many of the most likely candidates `top_p_filter` sorts first; typical nuclei are smaller.
const TOP_P_FIRST_CHUNK: usize = 256;

/// TopPLogitsWarper: in ascending order, drop every token whose cumulative probability (summed
/// from the least likely up, in f64 like torch's CPU `cumsum`) is <= 1 - top_p, keeping at least
/// the most likely token.
///
/// The dropped tokens are a prefix of that order, so only the likely end needs sorting: sort the
/// top `chunk` candidates, add up the rest unsorted, and grow the chunk until the cut falls inside.
fn top_p_filter(cand: &mut Vec<(u32, f32)>, top_p: f32) {
    // torch compares the f32 cumsum with `1 - top_p` (a Python double) rounded to f32.
    let threshold = (1.0 - f64::from(top_p)) as f32;
    let softmax = Softmax::new(cand);
    let mut ranked: Vec<Ranked> = cand
        .iter()
        .map(|&(id, score)| Ranked {
            id,
            score,
            prob: softmax.prob(score),
        })
        .collect();
    let n = ranked.len();
    let mut chunk = TOP_P_FIRST_CHUNK.min(n);
    let first_kept = loop {
        let split = n - chunk;
        if split > 0 {
            ranked.select_nth_unstable_by(split, ascending);
        }
        let below: f64 = ranked[..split].iter().map(|r| f64::from(r.prob)).sum();
        if split == 0 || below as f32 <= threshold {
            ranked[split..].sort_unstable_by(ascending);
            let mut cumulative = below;
            break ranked[split..]
                .iter()
                .position(|r| {
                    cumulative += f64::from(r.prob);
                    cumulative as f32 > threshold
                })
                .map_or(n - 1, |i| split + i);
        }
        chunk = (chunk * 4).min(n);
    };
    *cand = ranked[first_kept..]
        .iter()
        .map(|r| (r.id, r.score))
        .collect();
}

/// Softmax over the candidates' scores: `exp(s - max) * (1 / sum)`, as torch computes it.
struct Softmax {
    max: f32,
    inv_sum: f32,
}

impl Softmax {
    fn new(cand: &[(u32, f32)]) -> Self {
        let max = cand
            .iter()
            .map(|&(_, s)| s)
            .fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = cand.iter().map(|&(_, s)| f64::from((s - max).exp())).sum();
        Self {
            max,
            inv_sum: (1.0 / sum) as f32,
        }
    }

    fn prob(&self, score: f32) -> f32 {
        (score - self.max).exp() * self.inv_sum
    }
}
