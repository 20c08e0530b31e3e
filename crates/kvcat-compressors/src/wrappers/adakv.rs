//! AdaKV: head-adaptive budgets inside a layer. The layer keeps `kv_heads · kept` slots in
//! total, chosen by the inner scorer across all its KV heads at once, with a safeguard: every
//! head keeps at least `max(1, floor(kept · alpha_safeguard))` of its own best slots.
//!
//! Feng et al., 2024, "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for
//! Efficient LLM Inference" (arXiv:2407.11550). kvpress `AdaKVPress`.
//!
//! Shapes: inner scores `[b, kv_heads, slots]` → safeguarded slots set to +max → top
//! `kv_heads · kept` over the flattened `[b, kv_heads · slots]` → keep mask `[b, kv_heads, slots]`.
//! Heads then hold different counts: the cache is gathered to the largest count per head and
//! the rest is hidden by the keep mask, which attention honours.

use crate::topk::{check_scores, select_mask, visible_scores};
use kvcat_core::compressor::build_scorer;
use kvcat_core::{Compressed, CompressionInput, Compressor, Error, KvCache, Result, Scorer};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Parameters of `adakv` (kvpress defaults; inner SnapKV as in the paper).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaKvParams {
    /// The registered scorer whose scores are allocated across heads.
    pub inner: String,
    /// The inner scorer's parameters.
    pub inner_params: Option<toml::Value>,
    /// Minimum fraction of the per-head budget each head keeps.
    pub alpha_safeguard: f64,
}

impl Default for AdaKvParams {
    fn default() -> Self {
        AdaKvParams {
            inner: "snapkv".into(),
            inner_params: Some(toml::Value::Table(toml::Table::new())),
            alpha_safeguard: 0.2,
        }
    }
}

/// Head-adaptive allocation around an inner scorer `S`.
pub struct AdaKv<S: Scorer> {
    pub inner: S,
    pub alpha_safeguard: f64,
}

impl<S: Scorer> AdaKv<S> {
    pub fn new(inner: S, alpha_safeguard: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&alpha_safeguard) {
            return Err(Error::Params {
                kind: "compressor",
                name: "adakv".into(),
                reason: format!("alpha_safeguard must lie in [0, 1], got {alpha_safeguard}"),
            });
        }
        Ok(AdaKv {
            inner,
            alpha_safeguard,
        })
    }

    /// The keep mask `[b, kv_heads, slots]` for scores `[b, kv_heads, slots]` and a per-head
    /// budget `kept`.
    pub fn allocate(&self, scores: &Tensor, kept: i64) -> Tensor {
        let s = scores.size();
        let (b, h, n) = (s[0], s[1], s[2]);
        let mut scores = scores.shallow_clone();
        let n_safe = if self.alpha_safeguard > 0.0 {
            ((kept as f64 * self.alpha_safeguard).floor() as i64).max(1)
        } else {
            0
        };
        if n_safe > 0 {
            let (_, top) = scores.topk(n_safe, -1, true, false);
            scores = scores.scatter_value(-1, &top, f32::MAX as f64);
        }
        let (_, idx) = scores.view([b, h * n]).topk(h * kept, -1, true, false);
        Tensor::zeros([b, h * n], (Kind::Bool, scores.device()))
            .scatter_value(-1, &idx, 1)
            .view([b, h, n])
    }
}

impl<S: Scorer> Compressor for AdaKv<S> {
    fn name(&self) -> &'static str {
        "adakv"
    }
    fn params(&self) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("inner".into(), self.inner.name().into());
        t.insert("inner_params".into(), self.inner.params().into());
        t.insert("alpha_safeguard".into(), self.alpha_safeguard.into());
        t
    }
    fn compress(&self, input: &CompressionInput) -> Result<Compressed> {
        let _g = tch::no_grad_guard();
        let mut out = KvCache {
            layers: vec![],
            seq_len: input.cache.seq_len,
        };
        for (i, layer) in input.cache.layers.iter().enumerate() {
            let slots = layer.slots();
            let kept = input.budget.kept(slots);
            if kept >= slots {
                out.layers.push(layer.copy());
                continue;
            }
            let scores = self.inner.score(input, i)?;
            check_scores(self.inner.name(), i, &scores, layer)?;
            let mask = self.allocate(&visible_scores(layer, &scores), kept);
            out.layers.push(select_mask(layer, &mask));
        }
        Ok(Compressed {
            cache: out,
            extra: vec![],
        })
    }
}

/// Checks the parameters and builds the compressor with its inner scorer.
fn build(p: AdaKvParams) -> Result<AdaKv<Box<dyn Scorer>>> {
    let inner_params = super::sub_table(&p.inner_params, "inner_params", "adakv")?;
    let inner = build_scorer(&p.inner, &inner_params)?;
    AdaKv::new(inner, p.alpha_safeguard)
}

kvcat_core::register!(
    dyn Compressor,
    "adakv",
    "head-adaptive budgets within a layer around an inner scorer, with a per-head safeguard (Feng et al. 2024; kvpress AdaKVPress)",
    AdaKvParams,
    |params| build(params)
);
