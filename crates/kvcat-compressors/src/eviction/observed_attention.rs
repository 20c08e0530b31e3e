//! Observed attention (H2O-style): score each slot by the average attention it received from
//! all context queries that could see it.
//!
//! Zhang et al., 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large
//! Language Models" (arXiv:2306.14048). kvpress `ObservedAttentionPress`.
//!
//! Shapes: all context queries `[b, heads, t, d]` (recomputed in blocks of `query_block`) over
//! keys `[b, kv_heads, slots, d]` → causal probabilities summed over queries `[b, heads, slots]`
//! → divided by the number of queries that see each slot (`t − position`) → mean over each KV
//! head's group `[b, kv_heads, slots]`.

use super::{hidden, layer, ScorerParams};
use kvcat_core::{probe, CompressionInput, Error, LayerCache, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Parameters of `observed_attention`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservedAttentionParams {
    /// Queries per block when recomputing attention (memory only; no effect on scores).
    pub query_block: i64,
}

impl Default for ObservedAttentionParams {
    fn default() -> Self {
        ObservedAttentionParams { query_block: 512 }
    }
}

impl ScorerParams for ObservedAttentionParams {
    fn check(&self) -> Result<()> {
        if self.query_block < 1 {
            return Err(Error::Params {
                kind: "compressor",
                name: "observed_attention".into(),
                reason: format!("query_block must be ≥ 1, got {}", self.query_block),
            });
        }
        Ok(())
    }
}

/// The causal attention every context query pays each slot of layer `l`, summed over the
/// queries: hidden states `h` `[b, t, hidden]` → `[b, heads, slots]`, computed in blocks of
/// `block` queries.
fn attention_received(
    input: &CompressionInput,
    layer_idx: usize,
    l: &LayerCache,
    h: &Tensor,
    block: i64,
) -> Result<Tensor> {
    let t = h.size()[1];
    let mut sum: Option<Tensor> = None;
    let mut start = 0;
    while start < t {
        let n = block.min(t - start);
        let q = probe::queries(input.model, layer_idx, h, start, n)?;
        let qpos = Tensor::arange_start(start, start + n, (Kind::Int64, q.device()));
        let a = probe::attention(input.model, layer_idx, &q, l, Some(&qpos))?.sum_dim_intlist(
            2,
            false,
            Kind::Float,
        );
        sum = Some(match sum {
            Some(s) => s + a,
            None => a,
        });
        start += n;
    }
    sum.ok_or_else(|| Error::invalid("observed_attention: empty context"))
}

crate::scorer!(
    /// The observed-attention scorer.
    ObservedAttention(ObservedAttentionParams),
    "observed_attention",
    "keep the slots with the highest average attention over the context (H2O, Zhang et al. 2023; kvpress ObservedAttentionPress)",
    |s, input, layer_idx| {
        let l = layer(input, layer_idx)?;
        let h = hidden("observed_attention", input, layer_idx)?;
        let t = h.size()[1];
        let sum = attention_received(input, layer_idx, l, h, s.params.query_block)?;
        let seen_by = (-l.positions.to_kind(Kind::Float) + t as f64).clamp_min(1.0);
        let attn = &input.model.layers[layer_idx].self_attn;
        let avg = sum / attn.expand_kv(&seen_by);
        probe::mean_over_groups(input.model, layer_idx, &avg)
    }
);
