//! KeyDiff: keep the slots whose keys are least similar to the mean normalised key.
//!
//! Park et al., 2025, "KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context LLM
//! Inference in Resource-Constrained Environments" (arXiv:2504.15364). kvpress `KeyDiffPress`
//! (one-shot, not block-wise).
//!
//! Shapes: keys `[b, kv_heads, slots, d]`; anchor = mean over visible slots of `k/‖k‖`
//! `[b, kv_heads, 1, d]`; scores `-cos(k, anchor)` `[b, kv_heads, slots]`.

use kvcat_core::{CompressionInput, Result, Scorer};
use serde::{Deserialize, Serialize};
use tch::Kind;

/// No parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyDiffParams {}

/// The KeyDiff scorer.
pub struct KeyDiff;

impl KeyDiff {
    pub fn new(_p: KeyDiffParams) -> Result<Self> {
        Ok(KeyDiff)
    }
}

fn normalize(x: &tch::Tensor) -> tch::Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12)
}

impl Scorer for KeyDiff {
    fn name(&self) -> &'static str {
        "keydiff"
    }
    fn params(&self) -> toml::Table {
        toml::Table::new()
    }
    fn score(&self, input: &CompressionInput, layer: usize) -> Result<tch::Tensor> {
        let l = super::layer(input, layer)?;
        let k = l.k.to_kind(Kind::Float);
        let kn = normalize(&k);
        let anchor = match &l.keep {
            Some(m) => {
                let w = m.to_kind(Kind::Float).unsqueeze(-1);
                (&kn * &w).sum_dim_intlist(2, true, Kind::Float)
                    / w.sum_dim_intlist(2, true, Kind::Float).clamp_min(1.0)
            }
            None => kn.mean_dim(2, true, Kind::Float),
        };
        // cosine similarity with eps 1e-8 on each norm, as torch's F.cosine_similarity
        let dot = (&k * &anchor).sum_dim_intlist(-1, false, Kind::Float);
        let denom = k.norm_scalaropt_dim(2, [-1], false).clamp_min(1e-8)
            * anchor.norm_scalaropt_dim(2, [-1], false).clamp_min(1e-8);
        Ok(-(dot / denom))
    }
}

crate::register_scorer!(
    KeyDiff,
    KeyDiffParams,
    "keydiff",
    "keep the keys least similar to the mean key direction (Park et al. 2025; kvpress KeyDiffPress)"
);
