//! PyramidKV: per-layer budgets shaped like a pyramid (more slots in lower layers), with the
//! same total as a uniform budget; each layer keeps its inner scorer's top slots.
//!
//! Cai et al., 2024, "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information
//! Funneling" (arXiv:2406.02069). kvpress `PyramidKVPress` (whose inner scorer is SnapKV).
//!
//! Budget of layer `l` of `L` for `s` slots and fraction `b` (kvpress's formula):
//! `cap = w + s·b`, `min = (cap − w)/β`, `max = 2(cap − w) − min` (if `max ≥ s − w`, then
//! `max = s − w` and `min = 2(cap − w) − max`); when `s ≥ max ≥ min ≥ w` fails, every layer keeps
//! `round(s·b)`; otherwise layer `l` keeps `round(max − l·(max − min)/(L − 1))`.
//! Shapes: inner scores `[b, kv_heads, slots]` → top-k per KV head per layer.

use crate::topk::{check_scores, select_topk};
use kvcat_core::compressor::build_scorer;
use kvcat_core::{
    Budget, Compressed, CompressionInput, Compressor, Error, KvCache, Result, Scorer,
};
use serde::{Deserialize, Serialize};

/// Parameters of `pyramid` (kvpress defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PyramidParams {
    /// The registered scorer applied in every layer.
    pub inner: String,
    /// The inner scorer's parameters.
    pub inner_params: Option<toml::Value>,
    /// The window `w` of the budget formula.
    pub window_size: i64,
    /// Steepness `β ≥ 1` of the pyramid.
    pub beta: i64,
}

impl Default for PyramidParams {
    fn default() -> Self {
        PyramidParams {
            inner: "snapkv".into(),
            inner_params: Some(toml::Value::Table(toml::Table::new())),
            window_size: 64,
            beta: 20,
        }
    }
}

/// Per-layer pyramid budgets around an inner scorer `S`.
pub struct Pyramid<S: Scorer> {
    pub inner: S,
    pub window_size: i64,
    pub beta: i64,
}

impl<S: Scorer> Pyramid<S> {
    pub fn new(inner: S, window_size: i64, beta: i64) -> Result<Self> {
        if beta < 1 || window_size < 0 {
            return Err(Error::Params {
                kind: "compressor",
                name: "pyramid".into(),
                reason: format!(
                    "beta must be ≥ 1 and window_size ≥ 0, got {beta} and {window_size}"
                ),
            });
        }
        Ok(Pyramid {
            inner,
            window_size,
            beta,
        })
    }

    /// Slots kept by `layer` of `layers` for a cache of `slots` slots at kept fraction `b`.
    pub fn layer_budget(&self, layer: usize, layers: usize, slots: i64, b: f64) -> i64 {
        let (s, w, beta) = (slots as f64, self.window_size as f64, self.beta as f64);
        let cap = w + s * b;
        let mut min = (cap - w) / beta;
        let mut max = (cap - w) * 2.0 - min;
        if max >= s - w {
            max = s - w;
            min = (cap - w) * 2.0 - max;
        }
        let n = if !(s >= max && max >= min && min >= w) {
            (s * b).round()
        } else {
            let steps = if layers > 1 {
                (max - min) / (layers - 1) as f64
            } else {
                0.0
            };
            (max - layer as f64 * steps).round()
        };
        (n as i64).clamp(1, slots)
    }
}

impl<S: Scorer> Compressor for Pyramid<S> {
    fn name(&self) -> &'static str {
        "pyramid"
    }
    fn params(&self) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("inner".into(), self.inner.name().into());
        t.insert("inner_params".into(), self.inner.params().into());
        t.insert("window_size".into(), self.window_size.into());
        t.insert("beta".into(), self.beta.into());
        t
    }
    fn compress(&self, input: &CompressionInput) -> Result<Compressed> {
        let _g = tch::no_grad_guard();
        let layers = input.cache.layers.len();
        let mut out = KvCache {
            layers: vec![],
            seq_len: input.cache.seq_len,
        };
        for (i, layer) in input.cache.layers.iter().enumerate() {
            let slots = layer.slots();
            if input.budget.is_identity_for(slots) {
                out.layers.push(layer.copy());
                continue;
            }
            let b = input.budget.as_fraction(slots);
            let kept = self.layer_budget(i, layers, slots, b);
            if kept >= slots {
                out.layers.push(layer.copy());
                continue;
            }
            let per_layer = CompressionInput {
                budget: Budget::slots(kept)?,
                ..*input
            };
            let scores = self.inner.score(&per_layer, i)?;
            check_scores(self.inner.name(), i, &scores, layer)?;
            out.layers.push(select_topk(layer, &scores, kept));
        }
        Ok(Compressed {
            cache: out,
            extra: vec![],
        })
    }
}

/// Checks the parameters and builds the compressor with its inner scorer.
fn build(p: PyramidParams) -> Result<Pyramid<Box<dyn Scorer>>> {
    let inner_params = super::sub_table(&p.inner_params, "inner_params", "pyramid")?;
    let inner = build_scorer(&p.inner, &inner_params)?;
    Pyramid::new(inner, p.window_size, p.beta)
}

kvcat_core::register!(
    dyn Compressor,
    "pyramid",
    "pyramid-shaped per-layer budgets (more in lower layers) around an inner scorer (Cai et al. 2024; kvpress PyramidKVPress)",
    PyramidParams,
    |params| build(params)
);
