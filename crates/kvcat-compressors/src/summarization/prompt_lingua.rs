//! `prompt_lingua`: token-level summarization of the context *text* by self-information, then
//! a re-prefill of the kept tokens.
//!
//! After LLMLingua (Jiang et al. 2023, "LLMLingua: Compressing Prompts for Accelerated
//! Inference of Large Language Models"), token-level step, with the target model itself as the
//! small model: the self-information of context token `x_i` is `I_i = −ln p(x_i | x_<i)`
//! (from the prefill's own logits, computed in chunks). The `t = budget.kept(T)` tokens with the
//! highest `I_i` are kept (the first `keep_first` tokens always are), exactly `t` of them, and
//! re-prefilled into a fresh cache:
//! - `positions = "original"`: each kept token at its original position
//!   ([`Llama::forward_at`](kvcat_core::Llama::forward_at));
//! - `positions = "repacked"`: the kept tokens at contiguous positions `T−t .. T−1`, so that
//!   the question (positioned from `seq_len = T`) follows them directly, as if the shortened
//!   text had been the prompt (RoPE only sees relative positions).
//!
//! The question is never part of the cache and is never dropped: it is appended after
//! compression. In query-aware runs, `condition_on_question = true` computes `I_i` with the
//! question placed before the context (in the spirit of LongLLMLingua's question-aware
//! perplexity); the question itself is still not kept in the cache.

use kvcat_core::compressor::{Compressed, CompressionInput, Compressor, CompressorDescriptor};
use kvcat_core::model::{ForwardOptions, Logits};
use kvcat_core::registry::{parse_params, to_table};
use kvcat_core::{Error, KvCache, LayerCache, Llama, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{Kind, Tensor};

/// Where the kept tokens are re-prefilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    Original,
    Repacked,
}

/// Parameters of `prompt_lingua`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptLinguaParams {
    pub positions: Positions,
    /// Leading tokens always kept (the first token has no prediction).
    pub keep_first: i64,
    /// Condition the self-information on the question (query-aware runs only).
    pub condition_on_question: bool,
    /// Positions per chunk when computing log-probabilities (memory only).
    pub chunk: i64,
}

impl Default for PromptLinguaParams {
    fn default() -> Self {
        PromptLinguaParams {
            positions: Positions::Original,
            keep_first: 1,
            condition_on_question: false,
            chunk: 256,
        }
    }
}

/// The `prompt_lingua` compressor.
pub struct PromptLingua {
    pub params: PromptLinguaParams,
}

/// Self-information `−ln p(x_i | prefix, x_<i)` of every context token, `[b, T]` f32, from
/// final pre-norm hidden states `final_hidden` `[b, P + T, hidden]` of `prefix ++ context`
/// (`P = prefix_len`). Token 0 gets `+inf` when `P = 0` (nothing predicts it).
pub fn self_information(
    model: &Llama,
    final_hidden: &Tensor,
    context: &Tensor,
    prefix_len: i64,
    chunk: i64,
) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let (b, t) = (context.size()[0], context.size()[1]);
    let dev = final_hidden.device();
    let ctx = context.to_device(dev).to_kind(Kind::Int64);
    let mut parts = Vec::new();
    if prefix_len == 0 {
        parts.push(Tensor::full([b, 1], f64::INFINITY, (Kind::Float, dev)));
    }
    // token i (i ≥ first) is predicted by hidden position prefix_len + i − 1
    let first = if prefix_len == 0 { 1 } else { 0 };
    let mut i = first;
    while i < t {
        let n = chunk.max(1).min(t - i);
        let h = final_hidden.narrow(1, prefix_len + i - 1, n);
        let logp = model
            .lm_head(&model.norm.forward(&h))
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float);
        let tgt = ctx.narrow(1, i, n).unsqueeze(-1);
        parts.push(-logp.gather(-1, &tgt, false).squeeze_dim(-1));
        i += n;
    }
    Ok(Tensor::cat(&parts, 1))
}

/// Indices `[b, t]` (ascending) of the `t` tokens with the highest `info` `[b, T]`, the first
/// `keep_first` always among them; ties go to the earlier token.
pub fn select(info: &Tensor, t: i64, keep_first: i64) -> Tensor {
    let tt = info.size()[1];
    let dev = info.device();
    let mut score = info.to_kind(Kind::Double).nan_to_num(0.0, None, None);
    // tie-break towards earlier tokens by a vanishing ramp, and protect the first tokens
    let ramp = Tensor::arange(tt, (Kind::Double, dev)) * (-1e-9);
    score = score.clamp_max(1e12) + ramp.unsqueeze(0);
    let protect = Tensor::arange(tt, (Kind::Int64, dev))
        .lt(keep_first.max(0))
        .unsqueeze(0);
    score = score.masked_fill(&protect, 1e15);
    score.topk(t, -1, true, true).1.sort(-1, false).0
}

impl PromptLingua {
    fn final_hidden(&self, input: &CompressionInput, prefix: Option<&Tensor>) -> Result<Tensor> {
        let n_layers = input.model.layers.len();
        if prefix.is_none() && input.hidden.len() == n_layers + 1 {
            return Ok(input.hidden[n_layers].shallow_clone());
        }
        let dev = input.model.device();
        let ctx = input.context.to_device(dev);
        let tokens = match prefix {
            Some(p) => Tensor::cat(&[p.to_device(dev), ctx], 1),
            None => ctx,
        };
        let mut c = KvCache::new();
        let out = input.model.forward_with(
            &tokens,
            &mut c,
            &ForwardOptions {
                capture_hidden: true,
                logits: Logits::None,
                ..Default::default()
            },
        )?;
        out.hidden
            .last()
            .map(|h| h.shallow_clone())
            .ok_or_else(|| Error::invalid("prompt_lingua: the forward captured no hidden states"))
    }
}

/// Concatenates per-row caches along the batch dimension.
fn cat_rows(rows: Vec<KvCache>, seq_len: i64) -> KvCache {
    let n_layers = rows.first().map_or(0, |r| r.layers.len());
    let layers = (0..n_layers)
        .map(|l| {
            let pick = |f: &dyn Fn(&LayerCache) -> &Tensor| -> Tensor {
                Tensor::cat(&rows.iter().map(|r| f(&r.layers[l])).collect::<Vec<_>>(), 0)
            };
            LayerCache {
                k: pick(&|c| &c.k),
                v: pick(&|c| &c.v),
                positions: pick(&|c| &c.positions),
                keep: None,
                bias: None,
            }
        })
        .collect();
    KvCache { layers, seq_len }
}

impl Compressor for PromptLingua {
    fn name(&self) -> &'static str {
        "prompt_lingua"
    }
    fn params(&self) -> toml::Table {
        to_table(&self.params)
    }
    fn compress(&self, input: &CompressionInput) -> Result<Compressed> {
        let start = Instant::now();
        let cache = input.cache;
        let slots = uncompressed_slots(input)?;
        if input.budget.is_identity_for(slots) {
            return Ok(Compressed::unchanged(cache));
        }
        let t = input.budget.kept(slots);
        let _g = tch::no_grad_guard();
        let prefix = input.question.filter(|_| self.params.condition_on_question);
        let final_hidden = self.final_hidden(input, prefix)?;
        let plen = prefix.map_or(0, |p| p.size()[1]);
        let info = self_information(
            input.model,
            &final_hidden,
            input.context,
            plen,
            self.params.chunk,
        )?;
        let kept = select(&info, t, self.params.keep_first); // [b, t]
        let out = self.prefill_kept(input, &kept, slots)?;
        Ok(Compressed {
            cache: out,
            extra: vec![
                ("compress_seconds".into(), start.elapsed().as_secs_f64()),
                ("mean_info_kept".into(), mean_info(&info, &kept, true)),
                ("mean_info_dropped".into(), mean_info(&info, &kept, false)),
            ],
        })
    }
}

impl PromptLingua {
    /// Prefills each row's kept tokens `kept` `[b, t]` alone, at their original positions
    /// or repacked to the last `t` of `slots`, and joins the rows' caches.
    fn prefill_kept(&self, input: &CompressionInput, kept: &Tensor, slots: i64) -> Result<KvCache> {
        let (b, t) = (kept.size()[0], kept.size()[1]);
        let dev = input.model.device();
        let ctx = input.context.to_device(dev).to_kind(Kind::Int64);
        let kept_ids = ctx.gather(1, &kept.to_device(dev), false);
        let mut rows = Vec::with_capacity(b as usize);
        for r in 0..b {
            let ids = kept_ids.narrow(0, r, 1);
            let pos = match self.params.positions {
                Positions::Original => kept.get(r),
                Positions::Repacked => Tensor::arange_start(slots - t, slots, (Kind::Int64, dev)),
            };
            let mut c = KvCache::new();
            input.model.forward_at(
                &ids,
                &pos,
                &mut c,
                &ForwardOptions {
                    logits: Logits::None,
                    ..Default::default()
                },
            )?;
            rows.push(c);
        }
        Ok(cat_rows(rows, input.cache.seq_len))
    }
}

/// The slots of the input's cache, which must be the uncompressed prefill of its context
/// `[b, slots]` (no keep mask or bias): prompt_lingua re-prefills the text.
fn uncompressed_slots(input: &CompressionInput) -> Result<i64> {
    let Some(l0) = input.cache.layers.first() else {
        return Err(Error::invalid("prompt_lingua: the cache is empty"));
    };
    let slots = l0.slots();
    let cs = input.context.size();
    if cs.len() != 2 || cs[1] != slots || l0.keep.is_some() || l0.bias.is_some() {
        return Err(Error::invalid(format!(
            "prompt_lingua re-prefills the text, so it needs the uncompressed prefill: the \
             context has shape {cs:?}, the cache {slots} slots{}",
            if l0.keep.is_some() || l0.bias.is_some() {
                " with a keep mask or bias"
            } else {
                ""
            }
        )));
    }
    Ok(slots)
}

/// The mean finite self-information `info` `[b, T]` of the kept tokens `kept` `[b, t]`
/// (`of_kept`), or of the dropped ones; 0 when there are none.
fn mean_info(info: &Tensor, kept: &Tensor, of_kept: bool) -> f64 {
    let m = Tensor::zeros_like(info)
        .to_kind(Kind::Bool)
        .scatter_value(1, kept, 1)
        .logical_xor_(&Tensor::from(!of_kept));
    let finite = info.isfinite().logical_and(&m);
    let n = finite.sum(Kind::Int64).int64_value(&[]);
    if n == 0 {
        0.0
    } else {
        info.masked_select(&finite)
            .sum(Kind::Double)
            .double_value(&[])
            / n as f64
    }
}

fn build(table: &toml::Table) -> Result<Box<dyn Compressor>> {
    let params: PromptLinguaParams = parse_params("compressor", "prompt_lingua", table)?;
    if params.keep_first < 0 || params.chunk < 1 {
        return Err(Error::Params {
            kind: "compressor",
            name: "prompt_lingua".into(),
            reason: format!(
                "keep_first must be ≥ 0 and chunk ≥ 1, got {} and {}",
                params.keep_first, params.chunk
            ),
        });
    }
    Ok(Box::new(PromptLingua { params }))
}

inventory::submit! {
    CompressorDescriptor {
        name: "prompt_lingua",
        description: "LLMLingua-style token pruning by self-information under the model, then re-prefill (original or repacked positions)",
        defaults: || to_table(&PromptLinguaParams::default()),
        build,
    }
}
