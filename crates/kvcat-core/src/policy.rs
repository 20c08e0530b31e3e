//! Train-time masking policies for KV-CAT continued pretraining (Gelberg, Eitan et al., 2026,
//! "Training Transformers for KV Cache Compressibility").
//!
//! For a training batch of `T` tokens split into a prefix of `P` tokens and a continuation,
//! a policy chooses, per layer and KV head, which prefix slots the continuation queries may
//! see. Prefix queries keep full causal attention, exactly as in prefill; continuation queries
//! see only the kept prefix slots plus the causal continuation — what a post-hoc compressor
//! will later do to them.

use crate::cache::KvCache;
use crate::config::LlamaConfig;
use crate::model::{ForwardOutput, Llama};
use crate::registry::Registration;
use crate::summary::SummaryLayout;
use crate::{Error, Result};
use rand::rngs::StdRng;
use tch::{nn, Kind, Tensor};

/// What a policy needs captured from the unmasked, no-gradient teacher pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyNeeds {
    pub queries: bool,
    pub attention: bool,
    pub hidden: bool,
}

/// Everything a policy sees when planning masks for one batch.
pub struct PolicyInput<'a> {
    pub model: &'a Llama,
    /// `[b, T]` token ids.
    pub tokens: &'a Tensor,
    /// Prefix length `P` (`0 < P < T`).
    pub prefix_len: i64,
    /// Prefix slots to keep per layer and KV head (`1 ≤ kept ≤ P`).
    pub kept: i64,
    /// The unmasked no-grad pass over all `T` tokens, with the captures from [`PolicyNeeds`].
    pub teacher: &'a ForwardOutput,
    /// Keys and values of that pass (`k`, `v` `[b, kv_heads, T, d]` per layer).
    pub cache: &'a KvCache,
}

/// A policy's decision for one batch.
#[derive(Debug)]
pub struct MaskPlan {
    /// Prefix length `P`.
    pub prefix_len: i64,
    /// Kept prefix slots per head.
    pub kept: i64,
    /// Per layer, `[b, kv_heads, P]` bool: prefix slots visible to continuation queries.
    pub keep: Vec<Tensor>,
    /// Per layer, optional differentiable additive bias `[b, kv_heads, P]` on the prefix logits
    /// of continuation queries (learned policies route gradient through it).
    pub soft_bias: Option<Vec<Tensor>>,
    /// Learned summary slots that stand in for the prefix (the `gist` policy): continuation
    /// queries then see the summary slots plus `layout.window` recent raw slots
    /// ([`crate::summary`]); `keep` marks that window, and `kept` counts both.
    pub summary: Option<SummaryPlan>,
}

/// Summary slots for one batch: the learned embeddings and how they cover the prefix.
#[derive(Debug)]
pub struct SummaryPlan {
    /// `[max_per_chunk, hidden]` (with gradient when learned).
    pub embeddings: Tensor,
    pub layout: SummaryLayout,
}

impl MaskPlan {
    /// The per-layer attention bias for a single forward over all `T` tokens:
    /// `[b, kv_heads, T, T]`, zero for prefix queries; for continuation queries, `-inf` on
    /// dropped prefix slots plus the soft bias on kept ones. Causality is added by attention.
    pub fn layer_bias(&self, total_len: i64, kind: Kind) -> Result<Vec<Tensor>> {
        let p = self.prefix_len;
        let c = total_len - p;
        if p <= 0 || c <= 0 {
            return Err(Error::invalid(format!(
                "split: prefix length {p} must lie strictly inside the sequence length {total_len}"
            )));
        }
        self.keep
            .iter()
            .enumerate()
            .map(|(i, keep)| {
                let s = keep.size();
                let (b, h, device) = (s[0], s[1], keep.device());
                let neg = Tensor::full([1], f64::NEG_INFINITY, (kind, device));
                let mut prefix = Tensor::zeros([1], (kind, device)).where_self(keep, &neg); // [b,h,P]
                if let Some(soft) = &self.soft_bias {
                    prefix = prefix + soft[i].to_kind(kind);
                }
                let cont_rows = Tensor::cat(
                    &[
                        prefix.unsqueeze(2).expand([b, h, c, p], false),
                        Tensor::zeros([b, h, c, c], (kind, device)),
                    ],
                    3,
                ); // [b,h,C,T]
                let prefix_rows = Tensor::zeros([b, h, p, total_len], (kind, device));
                Ok(Tensor::cat(&[prefix_rows, cont_rows], 2))
            })
            .collect()
    }
}

/// A train-time masking policy. Implementations live in `kvcat-policies` or plugin crates.
pub trait MaskingPolicy: Send {
    /// The registry name.
    fn name(&self) -> &'static str;
    /// Resolved parameters (defaults filled in).
    fn params(&self) -> toml::Table;
    /// Captures required from the teacher pass.
    fn needs(&self) -> PolicyNeeds {
        PolicyNeeds::default()
    }
    /// Declares learned parameters, if any, under `root` (its own `VarStore` group).
    fn init(&mut self, _root: &nn::Path, _cfg: &LlamaConfig) -> Result<()> {
        Ok(())
    }
    /// Chooses the keep masks for one batch.
    fn plan(&mut self, input: &PolicyInput, rng: &mut StdRng) -> Result<MaskPlan>;
    /// An optional extra loss term (e.g. a router's budget regulariser), from the last `plan`.
    fn regularizer(&self) -> Option<Tensor> {
        None
    }
}

/// A registered masking policy.
pub type PolicyDescriptor = Registration<dyn MaskingPolicy>;

crate::plugin_kind!(dyn MaskingPolicy, "policy");

/// Builds a registered policy by name from its parameter table.
pub fn build_policy(name: &str, params: &toml::Table) -> Result<Box<dyn MaskingPolicy>> {
    crate::registry::build(name, params)
}
