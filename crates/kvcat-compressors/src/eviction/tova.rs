//! TOVA: score slots by the attention of the last context query, averaged over all query
//! heads; the last slot is always kept.
//!
//! Oren et al., 2024, "Transformers are Multi-State RNNs" (arXiv:2401.06104). kvpress
//! `TOVAPress`.
//!
//! Shapes: last query `[b, heads, 1, d]` over keys `[b, kv_heads, slots, d]` → probabilities
//! `[b, heads, slots]` → mean over *all* heads `[b, slots]` → repeated per KV head
//! `[b, kv_heads, slots]`; the last position scores max + 1.

use super::{layer, protect};
use kvcat_core::{CompressionInput, Result, Scorer};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// No parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TovaParams {}

/// The TOVA scorer.
pub struct Tova;

impl Tova {
    pub fn new(_p: TovaParams) -> Result<Self> {
        Ok(Tova)
    }
}

impl Scorer for Tova {
    fn name(&self) -> &'static str {
        "tova"
    }
    fn params(&self) -> toml::Table {
        toml::Table::new()
    }
    fn score(&self, input: &CompressionInput, layer_idx: usize) -> Result<Tensor> {
        let l = layer(input, layer_idx)?;
        let t = input.cache.seq_len;
        let a = super::snapkv::window_attention("tova", input, layer_idx, 1)?; // [b, heads, s]
        let last = l.positions.ge(t - 1);
        let kvh = l.k.size()[1];
        let scores = a
            .mean_dim(1, true, Kind::Float)
            .expand([-1, kvh, -1], false)
            .contiguous();
        let scores = scores.masked_fill(&last, 0.0);
        Ok(protect(&scores, &last))
    }
}

crate::register_scorer!(
    Tova,
    TovaParams,
    "tova",
    "keep the slots the last query attends to, averaged over heads (Oren et al. 2024; kvpress TOVAPress)"
);
