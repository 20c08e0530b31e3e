//! One example's compressibility profile: prefill the context, recompute the continuation
//! queries (as [`kvcat_core::probe`] does), and measure per layer and KV head the oracle and
//! compressor curves, effective ranks and attention entropy (see [`super::measures`]).
//!
//! Continuation queries are the post-RoPE queries of the tokens after the context (a task's
//! question and answer prefix, or a perplexity continuation), at their true positions
//! `t .. t + c`. Their attention is taken over the `t` context slots only (softmax over the
//! context, the part a compressor may shrink), so every measure is about the context cache.

use super::measures::{
    attention_entropy, effective_rank, kept_mass, kept_outputs, oracle_mask, outputs,
    positions_mask, relative_error,
};
use kvcat_core::model::{ForwardOptions, Logits};
use kvcat_core::{probe, Budget, CompressionInput, Compressor, Error, KvCache, Llama, Result};
use tch::{Kind, Tensor};

/// The method name of the oracle curve in samples and rows.
pub const ORACLE: &str = "oracle";

/// One measured value of one example.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub layer: usize,
    pub kv_head: i64,
    /// `kept_mass`, `output_rel_error`, `key_erank`, `value_erank` or `attn_entropy`.
    pub metric: &'static str,
    /// `oracle`, a compressor name, or empty for budget-free measures.
    pub method: String,
    /// The budget fraction of curve points.
    pub budget: Option<f64>,
    pub value: f64,
}

/// What to measure besides the oracle.
pub struct ProfileSpec<'a> {
    /// Budget fractions in (0, 1].
    pub budgets: &'a [f64],
    /// Named compressors whose kept sets are measured like the oracle's.
    pub compressors: &'a [(String, Box<dyn Compressor>)],
    pub seed: u64,
}

/// One layer's continuation attention `[h, g·c, t]`, values `[h, t, d]` and full outputs.
struct LayerView {
    queries: Tensor,
    attention: Tensor,
    values: Tensor,
    full: Tensor,
}

fn to_vec(x: &Tensor) -> Result<Vec<f64>> {
    Vec::<f64>::try_from(
        x.to_kind(Kind::Double)
            .to_device(tch::Device::Cpu)
            .view([-1]),
    )
    .map_err(|e| Error::invalid(format!("analyze: reading a tensor: {e}")))
}

fn push_heads(
    out: &mut Vec<Sample>,
    layer: usize,
    metric: &'static str,
    method: &str,
    budget: Option<f64>,
    values: &Tensor,
) -> Result<()> {
    for (h, v) in to_vec(values)?.into_iter().enumerate() {
        out.push(Sample {
            layer,
            kv_head: h as i64,
            metric,
            method: method.to_string(),
            budget,
            value: v,
        });
    }
    Ok(())
}

/// Groups a per-query-head tensor `[1, heads, c, s]` by KV head: `[kv_heads, g·c, s]`.
fn by_kv_head(model: &Llama, layer: usize, x: &Tensor) -> Tensor {
    let kv = model.layers[layer].self_attn.num_kv_heads;
    let s = x.size();
    x.get(0).contiguous().view([kv, -1, s[3]])
}

/// Continuation queries `[1, heads, c, d]` of every layer, rotated at positions `t .. t + c`.
fn continuation_queries(
    model: &Llama,
    cache: &KvCache,
    continuation: &Tensor,
) -> Result<Vec<Tensor>> {
    let mut c = cache.copy();
    let t = cache.seq_len;
    let out = model.forward_with(
        continuation,
        &mut c,
        &ForwardOptions {
            capture_hidden: true,
            logits: Logits::None,
            ..Default::default()
        },
    )?;
    let len = continuation.size()[1];
    (0..model.layers.len())
        .map(|l| probe::queries_at(model, l, &out.hidden[l], 0, len, t))
        .collect()
}

fn layer_views(model: &Llama, cache: &KvCache, continuation: &Tensor) -> Result<Vec<LayerView>> {
    let qs = continuation_queries(model, cache, continuation)?;
    qs.into_iter()
        .enumerate()
        .map(|(l, queries)| {
            let a = probe::attention(model, l, &queries, &cache.layers[l], None)?;
            let attention = by_kv_head(model, l, &a);
            let values = cache.layers[l].v.get(0).to_kind(Kind::Float);
            let full = outputs(&attention, &values);
            Ok(LayerView {
                queries,
                attention,
                values,
                full,
            })
        })
        .collect()
}

fn budget_of(b: f64) -> Result<Budget> {
    Budget::fraction(b)
}

/// Oracle curves, effective ranks and entropy of every layer.
fn oracle_samples(
    cache: &KvCache,
    views: &[LayerView],
    budgets: &[f64],
    out: &mut Vec<Sample>,
) -> Result<()> {
    let t = cache.seq_len;
    for (l, view) in views.iter().enumerate() {
        let keys = cache.layers[l].k.get(0);
        push_heads(out, l, "key_erank", "", None, &effective_rank(&keys))?;
        push_heads(
            out,
            l,
            "value_erank",
            "",
            None,
            &effective_rank(&view.values),
        )?;
        push_heads(
            out,
            l,
            "attn_entropy",
            "",
            None,
            &attention_entropy(&view.attention),
        )?;
        for &b in budgets {
            let mask = oracle_mask(&view.attention, budget_of(b)?.kept(t));
            push_heads(
                out,
                l,
                "kept_mass",
                ORACLE,
                Some(b),
                &kept_mass(&view.attention, &mask),
            )?;
            let err = relative_error(
                &kept_outputs(&view.attention, &view.values, &mask),
                &view.full,
            );
            push_heads(out, l, "output_rel_error", ORACLE, Some(b), &err)?;
        }
    }
    Ok(())
}

/// One compressor's curve points at budget `b`: output error over its compressed cache, and the
/// full-cache mass of the positions it still shows.
fn compressor_samples(
    model: &Llama,
    name: &str,
    compressed: &KvCache,
    t: i64,
    views: &[LayerView],
    b: f64,
    out: &mut Vec<Sample>,
) -> Result<()> {
    for (l, view) in views.iter().enumerate() {
        let lc = &compressed.layers[l];
        let a = probe::attention(model, l, &view.queries, lc, None)?;
        let approx = outputs(&by_kv_head(model, l, &a), &lc.v.get(0));
        push_heads(
            out,
            l,
            "output_rel_error",
            name,
            Some(b),
            &relative_error(&approx, &view.full),
        )?;
        let pos = lc.positions.get(0);
        let visible = match &lc.keep {
            Some(k) => k.get(0),
            None => pos.ones_like().to_kind(Kind::Bool),
        };
        let mask = positions_mask(&pos, &visible, t);
        push_heads(
            out,
            l,
            "kept_mass",
            name,
            Some(b),
            &kept_mass(&view.attention, &mask),
        )?;
    }
    Ok(())
}

/// Profiles one example: `context` `[1, t]`, `continuation` `[1, c]` (both on the model's
/// device). Returns one [`Sample`] per layer, KV head and measure.
pub fn profile_example(
    model: &Llama,
    context: &Tensor,
    continuation: &Tensor,
    spec: &ProfileSpec,
) -> Result<Vec<Sample>> {
    let _g = tch::no_grad_guard();
    if context.size()[0] != 1 || continuation.size()[0] != 1 || continuation.size()[1] < 1 {
        return Err(Error::invalid(format!(
            "analyze: expected context [1, t] and a non-empty continuation [1, c], got {:?} and {:?}",
            context.size(),
            continuation.size()
        )));
    }
    let (cache, hidden) = probe::prefill_for_compression(model, context)?;
    let views = layer_views(model, &cache, continuation)?;
    let mut out = Vec::new();
    oracle_samples(&cache, &views, spec.budgets, &mut out)?;
    for (name, comp) in spec.compressors {
        for &b in spec.budgets {
            let input = CompressionInput {
                model,
                cache: &cache,
                context,
                hidden: &hidden,
                question: None,
                budget: budget_of(b)?,
                seed: spec.seed,
            };
            let compressed = comp.compress(&input).map_err(|e| {
                Error::invalid(format!("analyze: compressor `{name}` at budget {b}: {e}"))
            })?;
            compressor_samples(
                model,
                name,
                &compressed.cache,
                cache.seq_len,
                &views,
                b,
                &mut out,
            )?;
        }
    }
    Ok(out)
}
