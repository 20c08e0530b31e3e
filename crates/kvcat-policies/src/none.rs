//! `none`: keeps every prefix slot. Training with it is plain continued pretraining on the
//! same data and steps — the baseline every masked policy is compared against.

use crate::util::{check_input, full_mask};
use kvcat_core::registry::to_table;
use kvcat_core::{MaskPlan, MaskingPolicy, PolicyInput, Result};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// `none` takes no parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoneParams {}

/// The no-masking baseline. The plan's `kept` is the whole prefix, whatever budget was asked.
pub struct NonePolicy;

impl MaskingPolicy for NonePolicy {
    fn name(&self) -> &'static str {
        "none"
    }
    fn params(&self) -> toml::Table {
        to_table(&NoneParams::default())
    }
    fn plan(&mut self, input: &PolicyInput, _rng: &mut StdRng) -> Result<MaskPlan> {
        let (b, _, p) = check_input(input)?;
        let cfg = &input.model.config;
        let keep = (0..cfg.num_hidden_layers)
            .map(|_| full_mask(b, cfg.num_key_value_heads, p, input.model.device()))
            .collect();
        Ok(MaskPlan {
            prefix_len: p,
            kept: p,
            keep,
            soft_bias: None,
            summary: None,
        })
    }
}

/// Checks the parameters and builds the policy.
fn build(_params: NoneParams) -> Result<NonePolicy> {
    Ok(NonePolicy)
}

kvcat_core::register!(
    dyn MaskingPolicy,
    "none",
    "no masking: plain continued pretraining (the baseline)",
    NoneParams,
    |params| build(params)
);
