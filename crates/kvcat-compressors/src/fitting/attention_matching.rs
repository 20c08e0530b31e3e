//! `attention_matching`: closed-form KV compaction after Zweiger et al. 2026, "Fast KV
//! Compaction via Attention Matching".
//!
//! Per layer and KV head, [`compact_head`](super::compact::compact_head) keeps `t` of the
//! original keys (highest RMS attention over reference queries, or OMP), fits a per-slot bias
//! `β = ln w` by NNLS so the attention *mass* matches, and refits the values by least squares
//! so the attention *outputs* match. The result is an ordinary [`LayerCache`] of `t` slots per
//! head `[b, kv_heads, t, d]` whose `bias` holds β.
//!
//! Reference queries come from a "repeat the context" pass ([`RepeatProbe`](super::reference::RepeatProbe)), optionally plus
//! the context's own prefill queries and (query-aware runs) the question's queries. With
//! `layer_by_layer = true` the repeat pass runs through each layer's *compacted* cache before
//! reaching the next layer, so later layers are fitted to the queries they will really see.
//!
//! Not to be confused with the train-time *policy* of the same registry name
//! (`kvcat_policies::attention_matching`), which applies only this paper's key-selection step,
//! as a mask, so that a model is trained for this compressor.

use super::compact::{compact_head, CompactOptions, KeySelection};
use super::compact_batch::compact_heads;
use super::nnls::Method;
use super::reference::{fit_layers, ReferenceSource};
use super::{layer_offset, pad_heads};
use kvcat_core::compressor::{Compressed, CompressionInput, Compressor, CompressorDescriptor};
use kvcat_core::registry::{parse_params, to_table};
use kvcat_core::{Error, KvCache, LayerCache, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{Kind, Tensor};

/// How kept keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Highest root-mean-square attention over the reference queries.
    Rms,
    /// Orthogonal matching pursuit on the mass system.
    Omp,
}

/// Which NNLS solver fits β.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NnlsSolver {
    /// Lawson–Hanson up to `nnls_exact_max` kept slots, projected gradient above.
    Auto,
    LawsonHanson,
    ProjectedGradient,
}

/// Parameters of `attention_matching`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionMatchingParams {
    /// Key selection: `rms` or `omp`.
    pub selection: Selection,
    /// Keys added per OMP step; 0 means `ceil(t / 16)`.
    pub omp_batch: usize,
    /// Token ids of the instruction between the context and its repeat (e.g. the tokenized
    /// "Repeat the previous context."); empty repeats the context directly.
    pub instruction_ids: Vec<i64>,
    /// Also use the context's own prefill queries as reference queries (they see all keys).
    /// On by default: on SmolLM2 it cut the held-out error by a third at budget 0.25
    /// (docs/benchmarks/fitting.md).
    pub self_queries: bool,
    /// In query-aware runs, also use the question's queries.
    pub question_queries: bool,
    /// Reference queries per KV head (evenly thinned); 0 keeps all.
    pub max_queries: i64,
    /// Fit layer `l + 1` to queries computed through the compacted layers `≤ l`.
    pub layer_by_layer: bool,
    /// Relative ridge of the value least squares (towards the original values). Small ridges
    /// overfit the reference queries (docs/benchmarks/fitting.md).
    pub ridge: f64,
    pub nnls: NnlsSolver,
    pub nnls_exact_max: usize,
    pub nnls_max_iter: usize,
    /// Ablation switches: fit β (else 0), fit values (else the originals).
    pub fit_bias: bool,
    pub fit_values: bool,
}

impl Default for AttentionMatchingParams {
    fn default() -> Self {
        AttentionMatchingParams {
            selection: Selection::Rms,
            omp_batch: 0,
            instruction_ids: vec![],
            self_queries: true,
            question_queries: true,
            max_queries: 1024,
            layer_by_layer: true,
            ridge: 1e-2,
            nnls: NnlsSolver::Auto,
            nnls_exact_max: 96,
            nnls_max_iter: 500,
            fit_bias: true,
            fit_values: true,
        }
    }
}

impl AttentionMatchingParams {
    fn compact_options(&self, t: i64) -> CompactOptions {
        let batch = if self.omp_batch == 0 {
            (t as usize).div_ceil(16)
        } else {
            self.omp_batch
        };
        CompactOptions {
            selection: match self.selection {
                Selection::Rms => KeySelection::RmsAttention,
                Selection::Omp => KeySelection::Omp { batch },
            },
            nnls: match self.nnls {
                NnlsSolver::Auto => Method::Auto {
                    exact_max: self.nnls_exact_max,
                },
                NnlsSolver::LawsonHanson => Method::LawsonHanson,
                NnlsSolver::ProjectedGradient => Method::ProjectedGradient,
            },
            nnls_max_iter: self.nnls_max_iter,
            ridge: self.ridge,
            weight_floor: 1e-12,
            fit_values: self.fit_values,
            fit_bias: self.fit_bias,
        }
    }
}

/// The `attention_matching` compressor.
pub struct AttentionMatching {
    pub params: AttentionMatchingParams,
}

impl AttentionMatchingParams {
    fn reference_source(&self) -> ReferenceSource<'_> {
        ReferenceSource {
            instruction_ids: &self.instruction_ids,
            question_queries: self.question_queries,
            self_queries: self.self_queries,
            max_queries: self.max_queries,
            layer_by_layer: self.layer_by_layer,
        }
    }
}

impl AttentionMatching {
    /// Compacts one layer given its per-KV-head reference queries `[b, kv_heads, n, d]`.
    /// Returns the new layer and the (output, mass) relative errors averaged over heads.
    /// RMS selection fits all heads at once on the cache's device
    /// ([`compact_heads`](super::compact_batch::compact_heads)); OMP is greedy and runs head
    /// by head.
    pub fn compact_layer(
        &self,
        layer: &LayerCache,
        refs: &Tensor,
        t: i64,
    ) -> Result<(LayerCache, f64, f64)> {
        let opts = self.params.compact_options(t);
        match opts.selection {
            KeySelection::RmsAttention => compact_layer_batched(layer, refs, t, &opts),
            KeySelection::Omp { .. } => compact_layer_per_head(layer, refs, t, &opts),
        }
    }
}

/// All heads of `layer` at once (RMS selection). See [`AttentionMatching::compact_layer`].
fn compact_layer_batched(
    layer: &LayerCache,
    refs: &Tensor,
    t: i64,
    opts: &CompactOptions,
) -> Result<(LayerCache, f64, f64)> {
    let s = layer.k.size();
    let (b, h, slots, d) = (s[0], s[1], s[2], s[3]);
    let heads = b * h;
    let flat = |x: &Tensor| x.reshape([heads, -1, d]);
    let offset = layer_offset(layer).map(|o| o.reshape([heads, slots]));
    let fit = compact_heads(
        &flat(refs),
        &flat(&layer.k),
        &flat(&layer.v),
        offset.as_ref(),
        t.min(slots),
        opts,
    )?;
    let t = fit.index.size()[1];
    let positions = layer
        .positions
        .reshape([heads, slots])
        .gather(1, &fit.index, false);
    let kind = layer.k.kind();
    let new = LayerCache {
        k: fit.k.view([b, h, t, d]).to_kind(kind),
        v: fit.v.view([b, h, t, d]).to_kind(kind),
        positions: positions.view([b, h, t]),
        // hidden slots can only have been picked when the original layer hid some
        keep: offset.is_some().then(|| fit.visible.view([b, h, t])),
        bias: Some(fit.bias.view([b, h, t]).to_kind(Kind::Float)),
    };
    let err = fit.rel_output_error.mean(Kind::Double).double_value(&[]);
    let mass = fit.rel_mass_error.mean(Kind::Double).double_value(&[]);
    Ok((new, err, mass))
}

/// Head by head (OMP selection), then padded to `t` slots.
fn compact_layer_per_head(
    layer: &LayerCache,
    refs: &Tensor,
    t: i64,
    opts: &CompactOptions,
) -> Result<(LayerCache, f64, f64)> {
    let s = layer.k.size();
    let (b, h) = (s[0], s[1]);
    let offset = layer_offset(layer);
    let mut fits = Vec::with_capacity((b * h) as usize);
    let (mut err, mut mass) = (0.0, 0.0);
    for bi in 0..b {
        for hi in 0..h {
            let off = offset.as_ref().map(|o| o.get(bi).get(hi));
            let fit = compact_head(
                &refs.get(bi).get(hi),
                &layer.k.get(bi).get(hi),
                &layer.v.get(bi).get(hi),
                off.as_ref(),
                t,
                opts,
            )?;
            err += fit.rel_output_error;
            mass += fit.rel_mass_error;
            fits.push(fit);
        }
    }
    let n = (b * h) as f64;
    Ok((pad_heads(layer, &fits, t)?, err / n, mass / n))
}

impl Compressor for AttentionMatching {
    fn name(&self) -> &'static str {
        "attention_matching"
    }
    fn params(&self) -> toml::Table {
        to_table(&self.params)
    }
    fn compress(&self, input: &CompressionInput) -> Result<Compressed> {
        let start = Instant::now();
        let cache = input.cache;
        let Some(t) = input.kept_slots("attention_matching")? else {
            return Ok(Compressed::unchanged(cache));
        };
        let _g = tch::no_grad_guard();
        let (mut err, mut mass) = (0.0, 0.0);
        let layers = fit_layers(input, &self.params.reference_source(), |_, layer, refs| {
            let (new, e, m) = self.compact_layer(layer, refs, t)?;
            err += e;
            mass += m;
            Ok(new)
        })?;
        let n_layers = cache.layers.len() as f64;
        let secs = start.elapsed().as_secs_f64();
        Ok(Compressed {
            cache: KvCache {
                layers,
                seq_len: cache.seq_len,
            },
            extra: vec![
                ("fit_seconds".into(), secs),
                ("fit_seconds_per_layer".into(), secs / n_layers),
                ("fit_rel_output_error".into(), err / n_layers),
                ("fit_rel_mass_error".into(), mass / n_layers),
            ],
        })
    }
}

fn build(table: &toml::Table) -> Result<Box<dyn Compressor>> {
    let params: AttentionMatchingParams = parse_params("compressor", "attention_matching", table)?;
    if params.max_queries < 0 || params.ridge.is_nan() || params.ridge < 0.0 {
        return Err(Error::Params {
            kind: "compressor",
            name: "attention_matching".into(),
            reason: "max_queries must be ≥ 0 and ridge ≥ 0".into(),
        });
    }
    Ok(Box::new(AttentionMatching { params }))
}

inventory::submit! {
    CompressorDescriptor {
        name: "attention_matching",
        description: "closed-form KV compaction: key subset, NNLS mass bias β, LS values (Zweiger et al. 2026)",
        defaults: || to_table(&AttentionMatchingParams::default()),
        build,
    }
}
