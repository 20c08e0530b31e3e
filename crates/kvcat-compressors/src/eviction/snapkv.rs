//! SnapKV: score slots by the attention the last `window_size` context queries pay them,
//! smoothed by average pooling; the window itself is always kept.
//!
//! Li et al., 2024, "SnapKV: LLM Knows What You are Looking for Before Generation"
//! (arXiv:2404.14469). kvpress `SnapKVPress`.
//!
//! Shapes: window queries `[b, heads, w, d]` (recomputed from the prefill hidden states) over
//! keys `[b, kv_heads, slots, d]` → causal probabilities `[b, heads, w, slots]` → mean over the
//! window → zero on window slots, `avg_pool1d(kernel_size, pad kernel_size/2)` over slots →
//! mean over each KV head's query group → `[b, kv_heads, slots]`; window slots score max + 1.
//! The context must be longer than the window, and the budget must keep the whole window.

use super::{check_protected, hidden, layer, protect, ScorerParams};
use kvcat_core::{probe, CompressionInput, Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Parameters of `snapkv` (kvpress defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapKvParams {
    /// Number of final context queries that vote (and are kept).
    pub window_size: i64,
    /// Average-pooling kernel over slots (odd).
    pub kernel_size: i64,
}

impl Default for SnapKvParams {
    fn default() -> Self {
        SnapKvParams {
            window_size: 64,
            kernel_size: 5,
        }
    }
}

impl ScorerParams for SnapKvParams {
    fn check(&self) -> Result<()> {
        if self.window_size < 1 || self.kernel_size < 1 || self.kernel_size % 2 == 0 {
            return Err(Error::Params {
                kind: "compressor",
                name: "snapkv".into(),
                reason: format!(
                    "window_size must be ≥ 1 and kernel_size odd and ≥ 1, got {} and {}",
                    self.window_size, self.kernel_size
                ),
            });
        }
        Ok(())
    }
}

/// Mean attention `[b, heads, slots]` of the context queries at positions `t-w .. t` over the
/// layer's cache (causal by original position).
pub(crate) fn window_attention(
    name: &str,
    input: &CompressionInput,
    layer_idx: usize,
    w: i64,
) -> Result<Tensor> {
    let h = hidden(name, input, layer_idx)?;
    let t = h.size()[1];
    if t <= w {
        return Err(Error::invalid(format!(
            "`{name}`: the context ({t} tokens) must be longer than window_size = {w}"
        )));
    }
    let l = layer(input, layer_idx)?;
    let q = probe::queries(input.model, layer_idx, h, t - w, w)?;
    let qpos = Tensor::arange_start(t - w, t, (Kind::Int64, q.device()));
    let a = probe::attention(input.model, layer_idx, &q, l, Some(&qpos))?;
    Ok(a.mean_dim(2, false, Kind::Float))
}

crate::scorer!(
    /// The SnapKV scorer.
    SnapKv(SnapKvParams),
    "snapkv",
    "keep the slots the last window_size queries attend to, pooled (Li et al. 2024; kvpress SnapKVPress)",
    |s, input, layer_idx| {
        let (w, ks) = (s.params.window_size, s.params.kernel_size);
        let l = layer(input, layer_idx)?;
        check_protected("snapkv", input, l.slots(), w, "window_size")?;
        let t = input.cache.seq_len;
        let mean = window_attention("snapkv", input, layer_idx, w)?; // [b, heads, s]
        let window = l.positions.ge(t - w); // [b, kv, s]
        let in_window = input.model.layers[layer_idx].self_attn.expand_kv(&window);
        let mean = mean.masked_fill(&in_window, 0.0);
        let pooled = mean.avg_pool1d([ks], [1], [ks / 2], false, true);
        let scores = probe::mean_over_groups(input.model, layer_idx, &pooled)?;
        Ok(protect(&scores, &window))
    }
);
