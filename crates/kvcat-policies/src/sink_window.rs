//! `sink_window`: keeps the first `sinks` prefix slots (attention sinks) plus the most recent
//! `kept − sinks` prefix slots, as StreamingLLM does at inference (Xiao et al., 2024,
//! "Efficient Streaming Language Models with Attention Sinks").

use crate::util::check_input;
use kvcat_core::registry::to_table;
use kvcat_core::{Error, MaskPlan, MaskingPolicy, PolicyInput, Result};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Parameters of `sink_window`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkWindowParams {
    /// Number of leading sink slots (fewer when the budget is smaller).
    pub sinks: i64,
}

impl Default for SinkWindowParams {
    fn default() -> Self {
        SinkWindowParams { sinks: 4 }
    }
}

/// Sinks plus a recent window.
pub struct SinkWindowPolicy {
    params: SinkWindowParams,
}

impl MaskingPolicy for SinkWindowPolicy {
    fn name(&self) -> &'static str {
        "sink_window"
    }
    fn params(&self) -> toml::Table {
        to_table(&self.params)
    }
    fn plan(&mut self, input: &PolicyInput, _rng: &mut StdRng) -> Result<MaskPlan> {
        let (b, _, p) = check_input(input)?;
        let cfg = &input.model.config;
        let device = input.model.device();
        let sinks = self.params.sinks.min(input.kept);
        let window = input.kept - sinks;
        let pos = Tensor::arange(p, (Kind::Int64, device));
        let row = pos.lt(sinks).logical_or(&pos.ge(p - window)); // [P]
        let mask = row
            .view([1, 1, p])
            .expand([b, cfg.num_key_value_heads, p], false)
            .contiguous();
        Ok(MaskPlan {
            prefix_len: p,
            kept: input.kept,
            keep: (0..cfg.num_hidden_layers)
                .map(|_| mask.shallow_clone())
                .collect(),
            soft_bias: None,
            summary: None,
        })
    }
}

/// Checks the parameters and builds the policy.
fn build(params: SinkWindowParams) -> Result<SinkWindowPolicy> {
    if params.sinks < 0 {
        return Err(Error::Params {
            kind: "policy",
            name: "sink_window".into(),
            reason: format!("field `sinks` must be >= 0, got {}", params.sinks),
        });
    }
    Ok(SinkWindowPolicy { params })
}

kvcat_core::register!(
    dyn MaskingPolicy,
    "sink_window",
    "attention sinks plus the most recent prefix slots (StreamingLLM)",
    SinkWindowParams,
    |params| build(params)
);
