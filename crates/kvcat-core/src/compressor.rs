//! Post-hoc KV-cache compressors and eviction scorers.
//!
//! A [`Compressor`] maps a prefilled cache to a smaller one at a [`Budget`]. Eviction methods
//! only write a [`Scorer`] (`[b, kv_heads, slots]` scores, higher = keep); one generic top-k
//! adapter in `kvcat-compressors` turns any scorer into a compressor (after kvpress's
//! `ScorerPress`). Scorers take batched keys and queries and need no gradient, so they also
//! serve as train-time policies: the `scorer` policy in `kvcat-policies` scores the teacher's
//! prefix with any registered scorer and keeps the same slots through the same top-k
//! ([`crate::selection`]).

use crate::budget::Budget;
use crate::cache::KvCache;
use crate::model::Llama;
use crate::registry::Registration;
use crate::Result;
use tch::Tensor;

/// Everything a compressor sees.
pub struct CompressionInput<'a> {
    pub model: &'a Llama,
    /// The prefilled, uncompressed cache of the context (`seq_len` = context length).
    pub cache: &'a KvCache,
    /// Context ids `[b, t]`.
    pub context: &'a Tensor,
    /// Each layer's input hidden states from the prefill, `[b, t, hidden]` (index `L` is the
    /// final output), for scorers that recompute queries or attention.
    pub hidden: &'a [Tensor],
    /// Question ids `[b, q]` when compression is query-aware, else `None`.
    pub question: Option<&'a Tensor>,
    pub budget: Budget,
    /// Seed for stochastic methods.
    pub seed: u64,
}

/// A compressor's result: the new cache plus named extra metrics (fit error, fit seconds…).
#[derive(Debug)]
pub struct Compressed {
    pub cache: KvCache,
    pub extra: Vec<(String, f64)>,
}

impl CompressionInput<'_> {
    /// Slots to keep per head, or `None` when the budget keeps every slot (then return
    /// [`Compressed::unchanged`]). An empty cache is an error naming `compressor`.
    pub fn kept_slots(&self, compressor: &str) -> Result<Option<i64>> {
        let Some(l0) = self.cache.layers.first() else {
            return Err(crate::Error::invalid(format!(
                "{compressor}: the cache is empty"
            )));
        };
        let slots = l0.slots();
        Ok((!self.budget.is_identity_for(slots)).then(|| self.budget.kept(slots)))
    }
}

impl Compressed {
    /// The cache unchanged, as every compressor returns when the budget keeps every slot.
    pub fn unchanged(cache: &KvCache) -> Self {
        Compressed {
            cache: cache.copy(),
            extra: vec![],
        }
    }
}

/// A post-hoc KV-cache compressor.
pub trait Compressor: Send + Sync {
    /// The registry name.
    fn name(&self) -> &'static str;
    /// Resolved parameters (defaults filled in).
    fn params(&self) -> toml::Table;
    /// Compresses `input.cache` to `input.budget`. A budget that keeps every slot must return
    /// the cache unchanged.
    fn compress(&self, input: &CompressionInput) -> Result<Compressed>;
}

/// Per-slot importance for eviction. Returns `[b, kv_heads, slots]` for `layer`; higher is kept.
pub trait Scorer: Send + Sync {
    fn name(&self) -> &'static str;
    fn params(&self) -> toml::Table;
    fn score(&self, input: &CompressionInput, layer: usize) -> Result<Tensor>;
}

/// A registered compressor.
pub type CompressorDescriptor = Registration<dyn Compressor>;

crate::plugin_kind!(dyn Compressor, "compressor");

/// Builds a registered compressor by name from its parameter table.
pub fn build_compressor(name: &str, params: &toml::Table) -> Result<Box<dyn Compressor>> {
    crate::registry::build(name, params)
}

/// A boxed scorer is a scorer, so typed wrappers (`AdaKv<S: Scorer>`) also hold scorers chosen
/// at run time from the scorer registry.
impl<S: Scorer + ?Sized> Scorer for Box<S> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn params(&self) -> toml::Table {
        (**self).params()
    }
    fn score(&self, input: &CompressionInput, layer: usize) -> Result<Tensor> {
        (**self).score(input, layer)
    }
}

/// A registered eviction scorer (what wrappers such as `adakv` or `pyramid` name as `inner`,
/// and what a train-time policy may reuse).
pub type ScorerDescriptor = Registration<dyn Scorer>;

crate::plugin_kind!(dyn Scorer, "scorer");

/// Builds a registered scorer by name from its parameter table.
pub fn build_scorer(name: &str, params: &toml::Table) -> Result<Box<dyn Scorer>> {
    crate::registry::build(name, params)
}
