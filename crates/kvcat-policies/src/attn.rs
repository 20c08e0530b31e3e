//! `attn` (ATTN): per layer and KV head, keeps the prefix slots that receive the most
//! attention mass from the continuation queries in the unmasked, no-gradient teacher pass.
//!
//! Score of prefix slot `j` for KV head `h`: `Σ_{g ∈ group(h)} Σ_{i ≥ P} softmax_i(q_i·K/√d)[j]`
//! over the continuation queries `i` (all of them, or the first `query_window`). This is the
//! train-time twin of H2O-style accumulated-attention eviction with the continuation as the
//! observation window.

use crate::util::{check_input, continuation_attention, sum_groups, teacher_queries, topk_mask};
use kvcat_core::registry::to_table;
use kvcat_core::{Error, MaskPlan, MaskingPolicy, PolicyInput, PolicyNeeds, Result};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tch::Kind;

/// Parameters of `attn`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttnParams {
    /// Use only the first `query_window` continuation queries as observers (0: all of them).
    pub query_window: i64,
}

/// ATTN: the highest attention mass from the continuation queries.
pub struct AttnPolicy {
    params: AttnParams,
}

impl MaskingPolicy for AttnPolicy {
    fn name(&self) -> &'static str {
        "attn"
    }
    fn params(&self) -> toml::Table {
        to_table(&self.params)
    }
    fn needs(&self) -> PolicyNeeds {
        PolicyNeeds {
            queries: true,
            ..Default::default()
        }
    }
    fn plan(&mut self, input: &PolicyInput, _rng: &mut StdRng) -> Result<MaskPlan> {
        let (_, t, p) = check_input(input)?;
        let _g = tch::no_grad_guard();
        let cfg = &input.model.config;
        let c = t - p;
        let window = match self.params.query_window {
            w if w > 0 => w.min(c),
            _ => c,
        };
        let mut keep = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for layer in 0..cfg.num_hidden_layers as usize {
            let q = teacher_queries(input, layer, "attn")?;
            let k = &input
                .cache
                .layers
                .get(layer)
                .ok_or_else(|| Error::invalid(format!("attn: teacher cache lacks layer {layer}")))?
                .k;
            let probs = continuation_attention(q, k, p); // [b, H, C, T]
            let mass =
                probs
                    .narrow(2, 0, window)
                    .narrow(3, 0, p)
                    .sum_dim_intlist(2, false, Kind::Float); // [b, H, P]
            let scores = sum_groups(&mass, cfg.num_key_value_heads);
            keep.push(topk_mask(&scores, input.kept));
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
fn build(params: AttnParams) -> Result<AttnPolicy> {
    if params.query_window < 0 {
        return Err(Error::Params {
            kind: "policy",
            name: "attn".into(),
            reason: format!(
                "field `query_window` must be >= 0, got {}",
                params.query_window
            ),
        });
    }
    Ok(AttnPolicy { params })
}

kvcat_core::register!(
    dyn MaskingPolicy,
    "attn",
    "ATTN: keep the prefix slots with the most attention from the continuation queries",
    AttnParams,
    |params| build(params)
);
