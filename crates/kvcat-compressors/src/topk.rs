//! The generic top-k adapter: any [`Scorer`] becomes a [`Compressor`] (after kvpress's
//! `ScorerPress`), plus the slot-selection helpers wrappers share.
//!
//! Per layer and KV head, the `kept = budget.kept(slots)` highest-scoring visible slots are
//! kept, gathered in ascending slot (hence position) order. The selection is
//! [`kvcat_core::selection`], the same one the train-time `scorer` policy uses, so a model
//! trained for a scorer meets exactly the slots it was trained on. A budget that keeps every slot
//! returns the cache unchanged, without scoring.

use kvcat_core::cache::{KvCache, LayerCache};
use kvcat_core::selection::topk_slots;
use kvcat_core::{Compressed, CompressionInput, Compressor, Error, Result, Scorer};
use tch::{Kind, Tensor};

/// Turns a scorer into a compressor: scores `[b, kv_heads, slots]` → top-k per KV head.
pub struct ScorerCompressor<S: Scorer> {
    pub scorer: S,
}

impl<S: Scorer> ScorerCompressor<S> {
    pub fn new(scorer: S) -> Self {
        ScorerCompressor { scorer }
    }
}

impl<S: Scorer> Compressor for ScorerCompressor<S> {
    fn name(&self) -> &'static str {
        self.scorer.name()
    }
    fn params(&self) -> toml::Table {
        self.scorer.params()
    }
    fn compress(&self, input: &CompressionInput) -> Result<Compressed> {
        let _g = tch::no_grad_guard();
        let cache = input.cache;
        let mut out = KvCache {
            layers: Vec::with_capacity(cache.layers.len()),
            seq_len: cache.seq_len,
        };
        for (i, layer) in cache.layers.iter().enumerate() {
            let slots = layer.slots();
            let kept = input.budget.kept(slots);
            if kept >= slots {
                out.layers.push(layer.copy());
                continue;
            }
            let scores = self.scorer.score(input, i)?;
            check_scores(self.scorer.name(), i, &scores, layer)?;
            out.layers.push(select_topk(layer, &scores, kept));
        }
        Ok(Compressed {
            cache: out,
            extra: vec![],
        })
    }
}

/// Checks that a scorer returned `[b, kv_heads, slots]` for `layer`.
pub fn check_scores(
    name: &str,
    layer_idx: usize,
    scores: &Tensor,
    layer: &LayerCache,
) -> Result<()> {
    let want = layer.positions.size();
    if scores.size() != want {
        return Err(Error::invalid(format!(
            "scorer `{name}` returned scores of shape {:?} for layer {layer_idx}, expected {want:?} \
             ([batch, kv_heads, slots])",
            scores.size()
        )));
    }
    Ok(())
}

/// Scores `[b, h, s]` as f32 with hidden slots (keep mask `false`) set to `-inf`.
pub fn visible_scores(layer: &LayerCache, scores: &Tensor) -> Tensor {
    let s = scores.to_kind(Kind::Float);
    match &layer.keep {
        Some(keep) => s.masked_fill(&keep.logical_not(), f64::NEG_INFINITY),
        None => s,
    }
}

/// Keeps the `kept` highest-scoring visible slots per `[b, h]`, in ascending slot order,
/// through the selection train-time policies share ([`kvcat_core::selection::topk_slots`]:
/// ties go to the earlier slot). `scores`: `[b, h, s]`; returns a layer of `kept` slots.
pub fn select_topk(layer: &LayerCache, scores: &Tensor, kept: i64) -> LayerCache {
    let s = visible_scores(layer, scores);
    layer.gather(&topk_slots(&s, kept))
}

/// Keeps the slots where `mask` (`[b, h, s]` bool) is true; heads may keep different counts.
/// The result has `max kept` slots per head: each head's kept slots in ascending order, then
/// padding slots marked hidden in the keep mask.
pub fn select_mask(layer: &LayerCache, mask: &Tensor) -> LayerCache {
    let mask = match &layer.keep {
        Some(k) => mask.logical_and(k),
        None => mask.shallow_clone(),
    };
    let slots = layer.slots();
    let width = mask
        .sum_dim_intlist(-1, false, Kind::Int64)
        .max()
        .int64_value(&[])
        .max(1);
    let ar = Tensor::arange(slots, (Kind::Int64, mask.device())).view([1, 1, slots]);
    // kept slots sort first (by index), then the others (by index).
    let key = ar.where_self(&mask, &(&ar + slots));
    let (_, order) = key.sort(-1, false);
    let idx = order.narrow(-1, 0, width);
    let mut out = layer.gather(&idx);
    out.keep = Some(mask.gather(2, &idx, false));
    if out
        .keep
        .as_ref()
        .is_some_and(|k| k.all().int64_value(&[]) != 0)
    {
        out.keep = None;
    }
    out
}
