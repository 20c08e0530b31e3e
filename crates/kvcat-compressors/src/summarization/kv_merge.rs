//! `kv_merge`: keep the top-`t` slots of an eviction scorer, and fold every evicted slot into
//! its most similar kept slot instead of dropping it.
//!
//! In the family of CaM (Zhang et al. 2024, "CaM: Cache Merging for Memory-efficient LLMs
//! Inference") and D2O (Wan et al. 2024, "D2O: Dynamic Discriminative Operations"), which merge
//! evicted KV pairs into retained ones by key similarity.
//!
//! Per layer and KV head (shapes `[b, kv_heads, s, d]` → `[b, kv_heads, t, d]`):
//! 1. a registered scorer (`scorer`, default `observed_attention`) picks the `t` kept slots;
//! 2. each evicted slot `j` joins the kept slot `i*` with the highest cosine similarity of
//!    post-RoPE keys, `cos(K_j, K_i)`; a kept slot is its own group;
//! 3. **weighting**: a group's key and value are the means of its members weighted by their
//!    attention mass `a_j` = the attention slot `j` receives from the last `mass_window`
//!    context queries, summed over those queries and averaged over the KV head's query
//!    group (a group with zero total mass takes the plain mean);
//! 4. the group gets bias `β = ln |group|` (`bias = "count"`, proportional attention) or none;
//! 5. **positions**: the merged slot keeps the position of its kept slot.

use super::pool::{pool, window_mass, MergeBias};
use kvcat_core::compressor::{
    build_scorer, Compressed, CompressionInput, Compressor, CompressorDescriptor,
};
use kvcat_core::registry::{parse_params, to_table};
use kvcat_core::{Error, KvCache, Result, Scorer};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Parameters of `kv_merge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvMergeParams {
    /// The registered scorer that picks the kept slots.
    pub scorer: String,
    /// Its parameter table.
    pub scorer_params: toml::Table,
    /// Context queries (the last ones) whose attention mass weights the merge.
    pub mass_window: i64,
    /// Bias of a merged slot: `count` (`ln |group|`) or `none`.
    pub bias: MergeBias,
}

impl Default for KvMergeParams {
    fn default() -> Self {
        KvMergeParams {
            scorer: "observed_attention".into(),
            scorer_params: toml::Table::new(),
            mass_window: 64,
            bias: MergeBias::Count,
        }
    }
}

/// The `kv_merge` compressor.
pub struct KvMerge {
    pub params: KvMergeParams,
    scorer: Box<dyn Scorer>,
}

impl KvMerge {
    /// Validates `params` and builds the scorer from the registry.
    pub fn new(params: KvMergeParams) -> Result<Self> {
        if params.mass_window < 1 {
            return Err(Error::Params {
                kind: "compressor",
                name: "kv_merge".into(),
                reason: format!("mass_window must be ≥ 1, got {}", params.mass_window),
            });
        }
        let scorer = build_scorer(&params.scorer, &params.scorer_params)?;
        Ok(KvMerge { params, scorer })
    }
}

impl Compressor for KvMerge {
    fn name(&self) -> &'static str {
        "kv_merge"
    }
    fn params(&self) -> toml::Table {
        to_table(&self.params)
    }
    fn compress(&self, input: &CompressionInput) -> Result<Compressed> {
        let cache = input.cache;
        let Some(t) = input.kept_slots("kv_merge")? else {
            return Ok(Compressed::unchanged(cache));
        };
        let _g = tch::no_grad_guard();
        let mut layers = Vec::with_capacity(cache.layers.len());
        for (i, layer) in cache.layers.iter().enumerate() {
            let mut scores = self.scorer.score(input, i)?.to_kind(Kind::Float);
            if let Some(m) = &layer.keep {
                scores = scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY);
            }
            let kept = scores.topk(t, -1, true, true).1.sort(-1, false).0; // [b, h, t]
            let s = layer.k.size();
            let (b, h, d) = (s[0], s[1], s[3]);
            let kf = layer.k.to_kind(Kind::Float);
            let kn = &kf
                / kf.norm_scalaropt_dim(2, &[-1i64][..], true)
                    .clamp_min(1e-12);
            let kept_n = kn.gather(2, &kept.unsqueeze(-1).expand([b, h, t, d], false), false);
            let sim = kn.matmul(&kept_n.transpose(-2, -1)); // [b, h, s, t]
            let group = Tensor::arange(t, (Kind::Int64, kept.device()))
                .view([1, 1, t])
                .expand([b, h, t], false)
                .contiguous();
            let assign = sim.argmax(-1, false).scatter(2, &kept, &group);
            let mut mass = window_mass(input, i, self.params.mass_window)?;
            if let Some(m) = &layer.keep {
                mass *= m.to_kind(Kind::Float);
            }
            let positions = layer.positions.gather(2, &kept, false);
            layers.push(pool(layer, &assign, &mass, positions, t, self.params.bias)?);
        }
        Ok(Compressed {
            cache: KvCache {
                layers,
                seq_len: cache.seq_len,
            },
            extra: vec![],
        })
    }
}

fn build(table: &toml::Table) -> Result<Box<dyn Compressor>> {
    let params: KvMergeParams = parse_params("compressor", "kv_merge", table)?;
    Ok(Box::new(KvMerge::new(params)?))
}

inventory::submit! {
    CompressorDescriptor {
        name: "kv_merge",
        description: "fold evicted slots into their most similar kept slot (cosine on keys), weighted by attention mass",
        defaults: || to_table(&KvMergeParams::default()),
        build,
    }
}
