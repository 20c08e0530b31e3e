//! An example plugin crate for kvcat: one eviction method, `value_norm`, registered with
//! `inventory::submit!`. Linking this crate into a binary (`use my_compressor as _;`) is all it
//! takes for `kvcat list`, `kvcat compress`, `kvcat eval` and `kvcat bench` to know it.
//!
//! `value_norm` keeps, per layer and KV head, the slots whose *values* have the largest L2 norm
//! (a value with a small norm changes the attention output little whatever its weight).
//! Shapes: values `[b, kv_heads, slots, d]` → scores `‖v‖₂` `[b, kv_heads, slots]`.

use kvcat_compressors::topk::ScorerCompressor;
use kvcat_core::registry::{parse_params, to_table};
use kvcat_core::{CompressionInput, Compressor, CompressorDescriptor, Error, Result, Scorer};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Parameters: plain serde data; unknown keys are rejected, missing keys take defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValueNormParams {
    /// Exponent applied to the norm (monotone, so only ≤ 0 changes the ranking).
    pub power: f64,
}

impl Default for ValueNormParams {
    fn default() -> Self {
        ValueNormParams { power: 1.0 }
    }
}

/// The scorer. The generic top-k adapter turns it into a compressor.
pub struct ValueNorm {
    params: ValueNormParams,
}

impl Scorer for ValueNorm {
    fn name(&self) -> &'static str {
        "value_norm"
    }
    fn params(&self) -> toml::Table {
        to_table(&self.params)
    }
    fn score(&self, input: &CompressionInput, layer: usize) -> Result<Tensor> {
        let l = input
            .cache
            .layers
            .get(layer)
            .ok_or_else(|| Error::invalid(format!("no layer {layer}")))?;
        let norm = l.v.to_kind(Kind::Float).norm_scalaropt_dim(2, [-1], false);
        Ok(norm.pow_tensor_scalar(self.params.power))
    }
}

fn build(table: &toml::Table) -> Result<Box<dyn Compressor>> {
    let params: ValueNormParams = parse_params("compressor", "value_norm", table)?;
    if params.power == 0.0 || !params.power.is_finite() {
        return Err(Error::Params {
            kind: "compressor",
            name: "value_norm".into(),
            reason: format!("power must be finite and non-zero, got {}", params.power),
        });
    }
    Ok(Box::new(ScorerCompressor::new(ValueNorm { params })))
}

inventory::submit! {
    CompressorDescriptor {
        name: "value_norm",
        description: "example plugin: keep the slots whose values have the largest L2 norm",
        defaults: || to_table(&ValueNormParams::default()),
        build,
    }
}
