//! Expected attention: score each slot by the attention that *future* queries are expected to
//! pay it, modelling queries as Gaussian and averaging RoPE over the next positions; the score
//! is rescaled by the value norm.
//!
//! Devoto et al., 2025, "Expected Attention: KV Cache Compression by Estimating Attention from
//! Future Queries Distribution" (arXiv:2510.00636). kvpress `ExpectedAttentionPress`.
//!
//! Shapes: pre-RoPE context queries after the sinks `[b, heads, t − n_sink, d]` → mean `μ`
//! `[b, heads, d]` and covariance `Σ` `[b, heads, d, d]` → rotated by the mean RoPE matrix `R̄`
//! over positions `t .. t + n_future_positions` → logits `k·R̄μ/√d + kᵀR̄ΣR̄ᵀk/(2d)` over the
//! non-sink slots, softmax → mean over each KV head's group → `× ‖v‖` → `[b, kv_heads, slots]`;
//! the first `n_sink` positions score max + 1.

use super::{check_protected, hidden, layer, protect, ScorerParams};
use kvcat_core::attention::rope_tables;
use kvcat_core::{probe, CompressionInput, Error, LayerCache, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Parameters of `expected_attention` (kvpress defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpectedAttentionParams {
    /// Future positions over which the RoPE rotation is averaged.
    pub n_future_positions: i64,
    /// Initial positions excluded from the statistics and always kept.
    pub n_sink: i64,
    /// Include the query covariance term.
    pub use_covariance: bool,
    /// Rescale scores by the value norm.
    pub use_vnorm: bool,
    /// Added to the scores before the value-norm rescaling.
    pub epsilon: f64,
}

impl Default for ExpectedAttentionParams {
    fn default() -> Self {
        ExpectedAttentionParams {
            n_future_positions: 512,
            n_sink: 4,
            use_covariance: true,
            use_vnorm: true,
            epsilon: 0.0,
        }
    }
}

impl ScorerParams for ExpectedAttentionParams {
    fn check(&self) -> Result<()> {
        if self.n_future_positions < 1 || self.n_sink < 0 {
            return Err(Error::Params {
                kind: "compressor",
                name: "expected_attention".into(),
                reason: format!(
                    "n_future_positions must be ≥ 1 and n_sink ≥ 0, got {} and {}",
                    self.n_future_positions, self.n_sink
                ),
            });
        }
        Ok(())
    }
}

/// The mean RoPE matrix `[d, d]` over `positions` `[n]`: `diag(mean cos) + diag(mean sin)·P`
/// where `P x = rotate_half(x)`.
fn mean_rope(positions: &Tensor, d: i64, theta: f64) -> Tensor {
    let (cos, sin) = rope_tables(positions, d, theta, Kind::Float);
    let (c, s) = (
        cos.mean_dim(0, false, Kind::Float),
        sin.mean_dim(0, false, Kind::Float),
    );
    let half = d / 2;
    let device = positions.device();
    let eye = Tensor::eye(half, (Kind::Float, device));
    let zero = Tensor::zeros([half, half], (Kind::Float, device));
    let p = Tensor::cat(
        &[
            Tensor::cat(&[&zero, &(-&eye)], 1),
            Tensor::cat(&[&eye, &zero], 1),
        ],
        0,
    );
    c.diag(0) + s.diag(0).matmul(&p)
}

/// The expected logits `k·R̄μ/√d (+ kᵀR̄ΣR̄ᵀk/(2d))` `[b, heads, slots]` of the future queries
/// over layer `l`'s keys, from the non-sink context queries of the hidden states `h`
/// `[b, t, hidden]`.
fn expected_logits(
    p: &ExpectedAttentionParams,
    input: &CompressionInput,
    layer_idx: usize,
    l: &LayerCache,
    h: &Tensor,
) -> Result<Tensor> {
    let t = h.size()[1];
    let model = input.model;
    let attn = &model.layers[layer_idx].self_attn;
    let d = attn.head_dim;
    // query statistics (f32)
    let q =
        probe::prerope_queries(model, layer_idx, h, p.n_sink, t - p.n_sink)?.to_kind(Kind::Float); // [b, H, n, d]
    let mu = q.mean_dim(2, true, Kind::Float); // [b, H, 1, d]
    let future = Tensor::arange_start(t, t + p.n_future_positions, (Kind::Int64, q.device()));
    let r = mean_rope(&future, d, model.config.rope_theta); // [d, d]
    let mu_r = mu.matmul(&r.tr()); // [b, H, 1, d]
    let keys = attn.expand_kv(&l.k).to_kind(Kind::Float); // [b, H, s, d]
    let mut logits = keys.matmul(&mu_r.transpose(-2, -1)).squeeze_dim(-1) / (d as f64).sqrt();
    if p.use_covariance {
        let c = &q - &mu;
        let cov = c.transpose(-2, -1).matmul(&c) / (t - p.n_sink) as f64; // [b, H, d, d]
        let cov_r = r.matmul(&cov).matmul(&r.tr());
        let quad = (keys.matmul(&cov_r) * &keys).sum_dim_intlist(-1, false, Kind::Float);
        logits += quad / d as f64 / 2.0;
    }
    Ok(logits)
}

crate::scorer!(
    /// The expected-attention scorer.
    ExpectedAttention(ExpectedAttentionParams),
    "expected_attention",
    "keep the slots future queries are expected to attend to, times ‖v‖ (Devoto et al. 2025; kvpress ExpectedAttentionPress)",
    |s, input, layer_idx| {
        let p = &s.params;
        let l = layer(input, layer_idx)?;
        check_protected("expected_attention", input, l.slots(), p.n_sink, "n_sink")?;
        let h = hidden("expected_attention", input, layer_idx)?;
        let t = h.size()[1];
        if t <= p.n_sink {
            return Err(Error::invalid(format!(
                "`expected_attention`: the context ({t} tokens) must be longer than n_sink = {}",
                p.n_sink
            )));
        }
        let logits = expected_logits(p, input, layer_idx, l, h)?;
        // softmax over visible non-sink slots
        let sinks = l.positions.lt(p.n_sink); // [b, kv, s]
        let mut hide = sinks.shallow_clone();
        if let Some(keep) = &l.keep {
            hide = hide.logical_or(&keep.logical_not());
        }
        let attn = &input.model.layers[layer_idx].self_attn;
        let logits = logits.masked_fill(&attn.expand_kv(&hide), f64::NEG_INFINITY);
        let probs = logits.softmax(-1, Kind::Float).nan_to_num(0.0, None, None);
        let mut scores = probe::mean_over_groups(input.model, layer_idx, &probs)?;
        if p.use_vnorm {
            let vn = l.v.to_kind(Kind::Float).norm_scalaropt_dim(2, [-1], false);
            scores = (scores + p.epsilon) * vn;
        }
        Ok(protect(&scores, &sinks))
    }
);
