//! Example plugin `value_norm`: a scorer (so `adakv`, `pyramid` and the `scorer` policy take
//! it) keeping the largest values, `[b, kv_heads, slots, d]` → `‖v‖₂^power` `[b, kv_heads, slots]`.
use kvcat_compressors::eviction::{layer, ScorerParams};
use kvcat_core::{Error, Result};
/// Parameters: serde data; unknown keys are refused, missing keys take defaults.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValueNormParams {
    pub power: f64,
}
impl Default for ValueNormParams {
    fn default() -> Self {
        ValueNormParams { power: 1.0 }
    }
}
impl ScorerParams for ValueNormParams {
    fn check(&self) -> Result<()> {
        let why = format!(
            "value_norm: `power` must be finite and non-zero, got {}",
            self.power
        );
        let ok = self.power != 0.0 && self.power.is_finite();
        ok.then_some(()).ok_or(Error::invalid(why))
    }
}
kvcat_compressors::scorer!(
    ValueNorm(ValueNormParams),
    "value_norm",
    "example plugin: keep the slots whose values have the largest L2 norm",
    |s, input, l| {
        let v = layer(input, l)?.v.to_kind(tch::Kind::Float);
        Ok(v.norm_scalaropt_dim(2, [-1], false)
            .pow_tensor_scalar(s.params.power))
    }
);
