//! `scorer`: trains a model for the eviction compressor it will meet. At every batch, any
//! registered eviction [`Scorer`] (`knorm`, `snapkv`, a plugin's…) scores the teacher's prefix
//! and the policy keeps the slots the compressor of the same name would keep at evaluation.
//!
//! The motivation is KV-CAT's observation that how much masked training helps depends on the
//! compressor that follows it (Gelberg, Eitan et al., 2026, "Training Transformers for KV
//! Cache Compressibility"): training under the compressor's own rule is the matched case.
//!
//! # What the scorer sees
//! The unmasked no-gradient teacher pass over all `T` tokens is causal, so its first `P`
//! positions are exactly a prefill of the prefix. The scorer gets a
//! [`CompressionInput`] built from them, as `kvcat compress` builds it for a context of `P`
//! tokens:
//! - `cache`: per layer, keys and values `[b, kv_heads, P, d]` (post-RoPE), positions
//!   `0..P`, no keep mask or bias; `seq_len = P`;
//! - `hidden`: every layer's input hidden states `[b, P, hidden]` (and the final output);
//! - `context`: the prefix ids `[b, P]`; `question`: none, so query-aware scorers (SnapKV,
//!   TOVA, …) observe the prefix's own last tokens, as query-agnostic compression does;
//! - `budget`: `kept` slots; `seed`: the first `u64` of the step's policy generator.
//!
//! Scores `[b, kv_heads, P]` per layer go through [`kvcat_core::selection::topk_mask`], the
//! top-k the compressors' adapter uses, so on identical caches the kept sets are identical.
//! Everything is batched over `b` and runs without gradient. When `kept ≥ P` every slot is
//! kept without scoring, as compressors return the cache unchanged.
//!
//! A scorer with protected slots (SnapKV's window, StreamingLLM's sinks) refuses a budget
//! smaller than them, at evaluation and here alike: the error names the step's prefix and
//! budget, so the training `budget` or `split` can be raised.

use crate::util::check_input;
use kvcat_core::compressor::build_scorer;
use kvcat_core::registry::to_table;
use kvcat_core::selection::topk_mask;
use kvcat_core::{
    Budget, CompressionInput, Error, KvCache, LayerCache, MaskPlan, MaskingPolicy, PolicyInput,
    PolicyNeeds, Result, Scorer,
};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Parameters of `scorer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScorerPolicyParams {
    /// A registered eviction scorer (`kvcat list --kind scorer`).
    pub scorer: String,
    /// The scorer's own parameters (resolved with its defaults).
    pub params: toml::Table,
}

impl Default for ScorerPolicyParams {
    fn default() -> Self {
        ScorerPolicyParams {
            scorer: "knorm".into(),
            params: toml::Table::new(),
        }
    }
}

/// Keeps the slots a registered scorer ranks highest on the teacher's prefix.
pub struct ScorerPolicy {
    params: ScorerPolicyParams,
    scorer: Box<dyn Scorer>,
}

/// The parts of a [`CompressionInput`] for the prefix of a teacher pass: what a prefill of
/// the first `P` tokens holds, as views into the teacher's tensors.
pub struct PrefixPrefill {
    /// `[b, kv_heads, P, d]` keys and values per layer, positions `[b, kv_heads, P]`.
    pub cache: KvCache,
    /// Prefix ids `[b, P]`.
    pub context: Tensor,
    /// Hidden states `[b, P, hidden]`: each layer's input, then the final output.
    pub hidden: Vec<Tensor>,
}

impl PrefixPrefill {
    /// Narrows the teacher pass of `input` to its first `p` tokens. Needs the teacher's
    /// captured hidden states (`PolicyNeeds::hidden`).
    pub fn from_teacher(input: &PolicyInput, p: i64) -> Result<PrefixPrefill> {
        let n_layers = input.model.config.num_hidden_layers as usize;
        if input.teacher.hidden.len() < n_layers || input.cache.layers.len() < n_layers {
            return Err(Error::invalid(format!(
                "policy `scorer` needs the teacher's cache and captured hidden states of all \
                 {n_layers} layers, got {} cache layers and {} hidden states",
                input.cache.layers.len(),
                input.teacher.hidden.len()
            )));
        }
        let layers = input.cache.layers[..n_layers]
            .iter()
            .map(|l| LayerCache {
                k: l.k.narrow(2, 0, p).detach(),
                v: l.v.narrow(2, 0, p).detach(),
                positions: l.positions.narrow(2, 0, p),
                keep: None,
                bias: None,
            })
            .collect();
        Ok(PrefixPrefill {
            cache: KvCache { layers, seq_len: p },
            context: input.tokens.narrow(1, 0, p),
            hidden: input
                .teacher
                .hidden
                .iter()
                .map(|h| h.narrow(1, 0, p).detach())
                .collect(),
        })
    }
}

impl ScorerPolicy {
    /// The keep mask `[b, kv_heads, P]` of one layer.
    fn layer_mask(&self, input: &CompressionInput, layer: usize, kept: i64) -> Result<Tensor> {
        let scores = self
            .scorer
            .score(input, layer)
            .map_err(|e| self.explain(e, kept))?;
        let want = input.cache.layers[layer].positions.size();
        if scores.size() != want {
            return Err(Error::invalid(format!(
                "policy `scorer`: scorer `{}` returned scores of shape {:?} for layer {layer}, \
                 expected {want:?} ([batch, kv_heads, slots])",
                self.params.scorer,
                scores.size()
            )));
        }
        Ok(topk_mask(&scores.to_kind(Kind::Float), kept))
    }

    /// Adds the policy, the step's prefix and budget, and the training fields to change to a
    /// scorer's error.
    fn explain(&self, e: Error, kept: i64) -> Error {
        let who = format!("policy `scorer` (scorer `{}`)", self.params.scorer);
        match e {
            Error::Budget { value, reason } => Error::Budget {
                value: format!("{kept} kept slots ({value})"),
                reason: format!(
                    "{who}: {reason}; for training, raise `budget.min` or `split.min_prefix`"
                ),
            },
            other => Error::invalid(format!("{who}: {other}")),
        }
    }
}

impl MaskingPolicy for ScorerPolicy {
    fn name(&self) -> &'static str {
        "scorer"
    }
    fn params(&self) -> toml::Table {
        to_table(&self.params)
    }
    fn needs(&self) -> PolicyNeeds {
        PolicyNeeds {
            hidden: true,
            ..Default::default()
        }
    }
    fn plan(&mut self, input: &PolicyInput, rng: &mut StdRng) -> Result<MaskPlan> {
        let (b, _, p) = check_input(input)?;
        let _g = tch::no_grad_guard();
        let seed: u64 = rng.random();
        let cfg = &input.model.config;
        let (n_layers, kv) = (cfg.num_hidden_layers as usize, cfg.num_key_value_heads);
        let keep: Vec<Tensor> = if input.kept >= p {
            let all = Tensor::ones([b, kv, p], (Kind::Bool, input.model.device()));
            (0..n_layers).map(|_| all.shallow_clone()).collect()
        } else {
            let prefix = PrefixPrefill::from_teacher(input, p)?;
            let comp = CompressionInput {
                model: input.model,
                cache: &prefix.cache,
                context: &prefix.context,
                hidden: &prefix.hidden,
                question: None,
                budget: Budget::slots(input.kept)?,
                seed,
            };
            (0..n_layers)
                .map(|l| self.layer_mask(&comp, l, input.kept))
                .collect::<Result<Vec<_>>>()?
        };
        Ok(MaskPlan {
            prefix_len: p,
            kept: input.kept,
            keep,
            soft_bias: None,
            summary: None,
        })
    }
}

/// Builds the policy: the scorer name must be registered, and its parameters must build it.
/// Checks the parameters and builds the policy.
fn build(params: ScorerPolicyParams) -> Result<ScorerPolicy> {
    let scorer = build_scorer(&params.scorer, &params.params).map_err(|e| {
        let reason = match e {
            Error::UnknownName { name, known, .. } => format!(
                "field `scorer`: unknown scorer `{name}`; known scorers: {}",
                if known.is_empty() {
                    "(none linked: link kvcat-compressors or a plugin crate)".to_string()
                } else {
                    known.join(", ")
                }
            ),
            other => format!("field `params` (of scorer `{}`): {other}", params.scorer),
        };
        Error::Params {
            kind: "policy",
            name: "scorer".into(),
            reason,
        }
    })?;
    let params = ScorerPolicyParams {
        params: scorer.params(),
        scorer: params.scorer,
    };
    Ok(ScorerPolicy { params, scorer })
}

kvcat_core::register!(
    dyn MaskingPolicy,
    "scorer",
    "train for an eviction compressor: keep the prefix slots a registered scorer (params.scorer, e.g. knorm, snapkv) keeps, with the compressors' own top-k",
    ScorerPolicyParams,
    |params| build(params)
);
