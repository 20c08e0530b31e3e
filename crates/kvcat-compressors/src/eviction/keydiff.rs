//! KeyDiff: keep the slots whose keys are least similar to the mean normalised key. Park et
//! al., 2025, "KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context LLM Inference
//! in Resource-Constrained Environments" (arXiv:2504.15364); kvpress `KeyDiffPress` (one-shot,
//! not block-wise).
//!
//! Shapes: keys `[b, kv_heads, slots, d]`; anchor = mean over visible slots of `k/‖k‖`
//! `[b, kv_heads, 1, d]`; scores `-cos(k, anchor)` `[b, kv_heads, slots]`.

use tch::{Kind, Tensor};

/// The mean of `k/‖k‖` over the visible slots (`keep` `[b, h, s]`, all when absent).
fn anchor(k: &Tensor, keep: Option<&Tensor>) -> Tensor {
    let kn = k / k.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12);
    match keep {
        Some(m) => {
            let w = m.to_kind(Kind::Float).unsqueeze(-1);
            (&kn * &w).sum_dim_intlist(2, true, Kind::Float)
                / w.sum_dim_intlist(2, true, Kind::Float).clamp_min(1.0)
        }
        None => kn.mean_dim(2, true, Kind::Float),
    }
}

crate::scorer!(
    /// The KeyDiff scorer (no parameters).
    KeyDiff,
    "keydiff",
    "keep the keys least similar to the mean key direction (Park et al. 2025; kvpress KeyDiffPress)",
    |input, layer| {
        let l = super::layer(input, layer)?;
        let k = l.k.to_kind(Kind::Float);
        let a = anchor(&k, l.keep.as_ref());
        // cosine similarity with eps 1e-8 on each norm, as torch's F.cosine_similarity
        let dot = (&k * &a).sum_dim_intlist(-1, false, Kind::Float);
        let denom = k.norm_scalaropt_dim(2, [-1], false).clamp_min(1e-8)
            * a.norm_scalaropt_dim(2, [-1], false).clamp_min(1e-8);
        Ok(-(dot / denom))
    }
);
