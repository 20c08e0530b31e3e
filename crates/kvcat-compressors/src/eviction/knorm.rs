//! Key-norm eviction: keep the slots whose keys have the *smallest* L2 norm.
//!
//! Devoto et al., 2024, "A Simple and Effective L2 Norm-Based Strategy for KV Cache
//! Compression" (arXiv:2406.11430). kvpress `KnormPress`.
//!
//! Shapes: keys `[b, kv_heads, slots, d]` → scores `-‖k‖₂` `[b, kv_heads, slots]` (f32).

use kvcat_core::{CompressionInput, Result, Scorer};
use serde::{Deserialize, Serialize};
use tch::Kind;

/// No parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnormParams {}

/// The key-norm scorer.
pub struct Knorm;

impl Knorm {
    pub fn new(_p: KnormParams) -> Result<Self> {
        Ok(Knorm)
    }
}

impl Scorer for Knorm {
    fn name(&self) -> &'static str {
        "knorm"
    }
    fn params(&self) -> toml::Table {
        toml::Table::new()
    }
    fn score(&self, input: &CompressionInput, layer: usize) -> Result<tch::Tensor> {
        let k = super::layer(input, layer)?.k.to_kind(Kind::Float);
        Ok(-k.norm_scalaropt_dim(2, [-1], false))
    }
}

crate::register_scorer!(
    Knorm,
    KnormParams,
    "knorm",
    "keep the keys with the smallest L2 norm (Devoto et al. 2024; kvpress KnormPress)"
);
