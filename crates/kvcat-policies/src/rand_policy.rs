//! `rand` (RAND): keeps a uniformly random subset of `kept` prefix slots, drawn independently
//! per layer and KV head (optionally shared), from the trainer's per-step generator so runs
//! are reproducible and resumable.

use crate::util::{check_input, topk_mask};
use kvcat_core::registry::to_table;
use kvcat_core::{MaskPlan, MaskingPolicy, PolicyInput, Result};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Parameters of `rand`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RandParams {
    /// Use one random subset for every layer (default: independent per layer).
    pub share_layers: bool,
    /// Use one random subset for every KV head of a layer (default: independent per head).
    pub share_heads: bool,
}

/// RAND: uniformly random kept slots.
pub struct RandPolicy {
    params: RandParams,
}

impl MaskingPolicy for RandPolicy {
    fn name(&self) -> &'static str {
        "rand"
    }
    fn params(&self) -> toml::Table {
        to_table(&self.params)
    }
    fn plan(&mut self, input: &PolicyInput, rng: &mut StdRng) -> Result<MaskPlan> {
        let (b, _, p) = check_input(input)?;
        let cfg = &input.model.config;
        let h = cfg.num_key_value_heads;
        let device = input.model.device();
        let mut draw = |heads: i64| -> Tensor {
            let v: Vec<f32> = (0..b * heads * p).map(|_| rng.random::<f32>()).collect();
            let t = Tensor::from_slice(&v).view([b, heads, p]);
            if heads == h {
                t
            } else {
                t.expand([b, h, p], false).contiguous()
            }
        };
        let heads = if self.params.share_heads { 1 } else { h };
        let mut keep = Vec::with_capacity(cfg.num_hidden_layers as usize);
        let shared = self
            .params
            .share_layers
            .then(|| topk_mask(&draw(heads), input.kept));
        for _ in 0..cfg.num_hidden_layers {
            let m = match &shared {
                Some(m) => m.shallow_clone(),
                None => topk_mask(&draw(heads), input.kept),
            };
            keep.push(m.to_device(device));
        }
        Ok(MaskPlan {
            prefix_len: p,
            kept: input.kept,
            keep,
            soft_bias: None,
            summary: None,
        })
    }
}

/// Checks the parameters and builds the policy.
fn build(params: RandParams) -> Result<RandPolicy> {
    Ok(RandPolicy { params })
}

kvcat_core::register!(
    dyn MaskingPolicy,
    "rand",
    "RAND: a uniformly random subset of prefix slots per layer and KV head",
    RandParams,
    |params| build(params)
);
