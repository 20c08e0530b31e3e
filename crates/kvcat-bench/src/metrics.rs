//! Task metrics and their aggregation over examples.
//!
//! - `string_match_all` / `string_match_part`: RULER's (Hsieh et al. 2024, "RULER: What's the
//!   Real Context Size of Your Long-Context Language Models?") case-insensitive substring
//!   matches: the fraction of gold answers present in the prediction, or whether any is.
//!   RULER reports them ×100; kvcat keeps fractions in [0, 1].
//! - `exact_match` / `token_f1`: SQuAD's (Rajpurkar et al. 2016) scores after normalisation
//!   (lower case, no punctuation, no articles `a|an|the`, single spaces), max over gold answers.
//! - NLL / PPL for continuations (per-token nats; PPL = exp(mean NLL)).

use kvcat_core::task::Metric;
use std::collections::HashMap;

/// RULER `string_match_all` for one prediction: fraction of `golds` contained in `pred`.
pub fn string_match_all(pred: &str, golds: &[String]) -> f64 {
    if golds.is_empty() {
        return 0.0;
    }
    let p = pred.to_lowercase();
    let hits = golds
        .iter()
        .filter(|g| p.contains(&g.to_lowercase()))
        .count();
    hits as f64 / golds.len() as f64
}

/// RULER `string_match_part` for one prediction: 1 if any of `golds` is contained in `pred`.
pub fn string_match_part(pred: &str, golds: &[String]) -> f64 {
    let p = pred.to_lowercase();
    if golds.iter().any(|g| p.contains(&g.to_lowercase())) {
        1.0
    } else {
        0.0
    }
}

/// SQuAD answer normalisation: lower case, punctuation removed, articles removed, whitespace
/// collapsed.
pub fn normalize_answer(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// SQuAD exact match: 1 if the normalised prediction equals any normalised gold answer.
pub fn exact_match(pred: &str, golds: &[String]) -> f64 {
    let p = normalize_answer(pred);
    if golds.iter().any(|g| normalize_answer(g) == p) {
        1.0
    } else {
        0.0
    }
}

/// SQuAD token F1 between one prediction and one gold answer.
pub fn token_f1_one(pred: &str, gold: &str) -> f64 {
    let p = normalize_answer(pred);
    let g = normalize_answer(gold);
    let pt: Vec<&str> = p.split_whitespace().collect();
    let gt: Vec<&str> = g.split_whitespace().collect();
    if pt.is_empty() || gt.is_empty() {
        return if pt.is_empty() && gt.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for w in &gt {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0i64;
    for w in &pt {
        if let Some(c) = counts.get_mut(w) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / pt.len() as f64;
    let recall = common as f64 / gt.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// SQuAD token F1: max over gold answers.
pub fn token_f1(pred: &str, golds: &[String]) -> f64 {
    golds
        .iter()
        .map(|g| token_f1_one(pred, g))
        .fold(0.0, f64::max)
}

/// Scores one generated answer with a text metric. `None` for [`Metric::Perplexity`], which is
/// not a text metric.
pub fn score_text(metric: Metric, pred: &str, golds: &[String]) -> Option<f64> {
    match metric {
        Metric::StringMatchAll => Some(string_match_all(pred, golds)),
        Metric::StringMatchPart => Some(string_match_part(pred, golds)),
        Metric::ExactMatch => Some(exact_match(pred, golds)),
        Metric::TokenF1 => Some(token_f1(pred, golds)),
        Metric::Perplexity => None,
    }
}

/// Mean and standard error of the mean of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanStderr {
    pub mean: f64,
    /// `sd / sqrt(n)` with the unbiased (n − 1) standard deviation; 0 when `n < 2`.
    pub stderr: f64,
    pub n: usize,
}

/// Mean and standard error of `xs` (NaN mean for an empty sample).
pub fn mean_stderr(xs: &[f64]) -> MeanStderr {
    let n = xs.len();
    if n == 0 {
        return MeanStderr {
            mean: f64::NAN,
            stderr: 0.0,
            n,
        };
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let stderr = if n < 2 {
        0.0
    } else {
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (var / n as f64).sqrt()
    };
    MeanStderr { mean, stderr, n }
}

/// Perplexity from per-example mean NLLs: `exp(mean)`, with the delta-method standard error
/// `exp(mean) · stderr(nll)`.
pub fn perplexity(nlls: &[f64]) -> MeanStderr {
    let m = mean_stderr(nlls);
    let ppl = m.mean.exp();
    MeanStderr {
        mean: ppl,
        stderr: ppl * m.stderr,
        n: m.n,
    }
}
