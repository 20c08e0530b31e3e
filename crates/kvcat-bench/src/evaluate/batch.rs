//! One batch of examples through the evaluation loop: one padded prefill, every budget from
//! it, each budget's caches stacked and decoded together.
//!
//! Contexts are right-padded to the longest and prefilled in one causal forward (a real token
//! never sees the padding, which comes after it). Each row's cache, hidden states and context
//! are then cut back to that row's own length, so a compressor sees exactly the batch-1 input;
//! it runs per example (compressors may assume batch 1, and stochastic ones are seeded per
//! example). The compressed rows are stacked with [`KvCache::stack`] (shorter rows padded with
//! hidden slots), and the prompts, answers, continuations and greedy steps of all rows go
//! through the model together, each row positioned from its own original length.
//!
//! With [`EvalOptions::compress_every`] (and a compressor), each generation row is instead
//! decoded on its own by [`greedy_compressing`], which compresses the cache back to the
//! budget during generation; the prompt and `answer_nll` still go through the batch.

use super::{EvalOptions, Prepared};
use crate::metrics::score_text;
use kvcat_core::decode::{greedy_rows, prompt_rows, target_nll_rows, RaggedBatch};
use kvcat_core::decode_compressing::{greedy_compressing, DecodeCompression, History, Schedule};
use kvcat_core::model::{ForwardOptions, Logits};
use kvcat_core::{Budget, CompressionInput, Compressor, Error, KvCache, Llama, Result, Tokenizer};
use std::time::Instant;
use tch::{Device, Tensor};

/// What one example produced in one cell.
pub(super) struct RowOutcome {
    pub achieved: f64,
    /// Bytes of K/V (plus keep mask and bias) really held ([`KvCache::held_bytes`]).
    pub bytes: f64,
    pub seconds: f64,
    pub extra: Vec<(String, f64)>,
    pub scores: Vec<(String, f64)>,
    pub text: String,
}

/// The batched prefill of a batch's contexts.
struct Prefill {
    /// Each row's uncompressed cache, cut to its own length (batch 1).
    rows: Vec<KvCache>,
    /// Each row's per-layer input hidden states `[1, t_i, hidden]` (when captured).
    hidden: Vec<Vec<Tensor>>,
    /// `[b, vocab]` logits after each row's last context token (perplexity batches).
    last: Option<Tensor>,
}

impl Prefill {
    /// Prefills `batch`'s contexts right-padded; `hidden`: keep per-layer hidden states.
    fn run(model: &Llama, batch: &[&Prepared], hidden: bool, last: bool) -> Result<Self> {
        let _span = tracing::info_span!("prefill", rows = batch.len()).entered();
        let contexts: Vec<&Tensor> = batch.iter().map(|p| &p.context).collect();
        let padded = RaggedBatch::new(&contexts, model.device())?;
        let mut full = KvCache::new();
        let out = model.forward_with(
            &padded.ids,
            &mut full,
            &ForwardOptions {
                capture_hidden: hidden || last,
                logits: Logits::None,
                ..Default::default()
            },
        )?;
        let lens = &padded.lens;
        let rows = (0..batch.len())
            .map(|i| full.row(i as i64, lens[i]))
            .collect();
        let cut = |h: &Tensor, i: usize| h.narrow(0, i as i64, 1).narrow(1, 0, lens[i]);
        let hidden = match hidden {
            true => (0..batch.len())
                .map(|i| out.hidden.iter().map(|h| cut(h, i).contiguous()).collect())
                .collect(),
            false => vec![],
        };
        let last = match (last, out.hidden.last()) {
            (true, Some(h)) => {
                let at = (Tensor::from_slice(lens).to_device(h.device()) - 1).view([-1, 1, 1]);
                let x = h.gather(1, &at.expand([-1, 1, h.size()[2]], false), false);
                Some(model.lm_head(&model.norm.forward(&x)).squeeze_dim(1))
            }
            _ => None,
        };
        Ok(Prefill { rows, hidden, last })
    }
}

/// Evaluates one batch (all perplexity or all generation examples) in every cell;
/// `first_index` is the batch's first example index (for per-example seeds). Returns, per
/// cell, one outcome per example.
#[allow(clippy::too_many_arguments)]
pub(super) fn evaluate_batch(
    model: &Llama,
    tok: &Tokenizer,
    batch: &[&Prepared],
    first_index: usize,
    compressor: Option<&dyn Compressor>,
    cells: &[Option<Budget>],
    opts: &EvalOptions,
) -> Result<Vec<Vec<RowOutcome>>> {
    let perplexity = batch[0].continuation.is_some();
    let pre = Prefill::run(model, batch, compressor.is_some(), perplexity)?;
    let full_nll = match &pre.last {
        Some(last) => Some(continuation_nll(model, batch, &pre.rows, last)?),
        None => None,
    };
    let mut out = Vec::with_capacity(cells.len());
    for &budget in cells {
        let mut caches = Vec::with_capacity(batch.len());
        let mut outcomes = Vec::with_capacity(batch.len());
        for (i, ex) in batch.iter().enumerate() {
            let (cache, seconds, extra) = match (compressor, budget) {
                (Some(c), Some(b)) => {
                    let seed = opts.seed.wrapping_add((first_index + i) as u64);
                    compress_row(c, model, ex, &pre, i, b, seed, opts)?
                }
                _ => (pre.rows[i].copy(), 0.0, vec![]),
            };
            outcomes.push(RowOutcome {
                achieved: cache.achieved_fraction(),
                bytes: cache.held_bytes() as f64,
                seconds,
                extra,
                scores: vec![],
                text: String::new(),
            });
            caches.push(cache);
        }
        match (&pre.last, &full_nll) {
            (Some(last), Some(base)) => {
                let nll = match budget {
                    None => base.clone(),
                    Some(_) => continuation_nll(model, batch, &caches, last)?,
                };
                for (o, (nll, base)) in outcomes.iter_mut().zip(nll.iter().zip(base)) {
                    o.scores = perplexity_scores(*nll, *base);
                }
            }
            _ => {
                let during = match (opts.compress_every, compressor, budget) {
                    (Some(every), Some(c), Some(b)) => Some(DuringDecode {
                        compressor: c,
                        budget: b,
                        every,
                        hidden: &pre.hidden,
                        seed: |i: usize| opts.seed.wrapping_add((first_index + i) as u64),
                    }),
                    _ => None,
                };
                generate(model, tok, batch, &caches, &mut outcomes, during.as_ref())?
            }
        }
        out.push(outcomes);
    }
    Ok(out)
}

/// Compresses row `i` of the prefill; returns the cache, seconds and extra metrics.
#[allow(clippy::too_many_arguments)]
fn compress_row(
    c: &dyn Compressor,
    model: &Llama,
    ex: &Prepared,
    pre: &Prefill,
    i: usize,
    budget: Budget,
    seed: u64,
    opts: &EvalOptions,
) -> Result<(KvCache, f64, Vec<(String, f64)>)> {
    let input = CompressionInput {
        model,
        cache: &pre.rows[i],
        context: &ex.context,
        hidden: &pre.hidden[i],
        question: if opts.query_aware {
            ex.question.as_ref()
        } else {
            None
        },
        budget,
        seed,
    };
    // CUDA runs asynchronously: without a sync, compression work would be billed to
    // whatever synchronizes next (decoding).
    sync(model.device());
    let t0 = Instant::now();
    let compressed = {
        let _span = tracing::info_span!("compress", method = c.name(), budget = %budget).entered();
        c.compress(&input)?
    };
    sync(model.device());
    Ok((
        compressed.cache,
        t0.elapsed().as_secs_f64(),
        compressed.extra,
    ))
}

/// Waits for queued kernels on a CUDA device (no-op on CPU).
fn sync(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// Mean NLL per continuation token of each row, after each row's cache in `caches`.
fn continuation_nll(
    model: &Llama,
    batch: &[&Prepared],
    caches: &[KvCache],
    last: &Tensor,
) -> Result<Vec<f64>> {
    let mut cache = KvCache::stack(caches)?;
    let starts: Vec<i64> = caches.iter().map(|c| c.seq_len).collect();
    let conts: Vec<&Tensor> = batch
        .iter()
        .map(|p| p.continuation.as_ref().expect("perplexity batch"))
        .collect();
    let targets = RaggedBatch::new(&conts, model.device())?;
    let sums = target_nll_rows(model, &mut cache, last, &targets, &starts)?;
    Ok(sums
        .iter()
        .zip(&targets.lens)
        .map(|(s, &n)| s / n as f64)
        .collect())
}

fn perplexity_scores(nll: f64, base: f64) -> Vec<(String, f64)> {
    vec![
        ("nll".to_string(), nll),
        ("ppl".to_string(), nll.exp()),
        ("nll_full".to_string(), base),
        ("ppl_full".to_string(), base.exp()),
        ("nll_delta".to_string(), nll - base),
    ]
}

/// Compression during generation ([`EvalOptions::compress_every`]) for one cell.
struct DuringDecode<'a, F: Fn(usize) -> u64> {
    compressor: &'a dyn Compressor,
    budget: Budget,
    every: usize,
    /// Each row's prefill hidden states (the compressor's history).
    hidden: &'a [Vec<Tensor>],
    /// Row `i`'s compressor seed.
    seed: F,
}

/// Feeds every row's prompt, scores the gold answer teacher-forced (`answer_nll`, mean nats
/// per answer token; `answer_logprob`, summed log-probability), then decodes greedily and
/// scores the text with the example's metric. With `during`, each row is decoded alone from
/// its own cache, compressing during generation.
fn generate<F: Fn(usize) -> u64>(
    model: &Llama,
    tok: &Tokenizer,
    batch: &[&Prepared],
    caches: &[KvCache],
    outcomes: &mut [RowOutcome],
    during: Option<&DuringDecode<F>>,
) -> Result<()> {
    let mut cache = KvCache::stack(caches)?;
    let starts: Vec<i64> = caches.iter().map(|c| c.seq_len).collect();
    let prompts: Vec<&Tensor> = batch.iter().map(|p| &p.prompt).collect();
    let prompts = RaggedBatch::new(&prompts, model.device())?;
    let last = prompt_rows(model, &mut cache, &prompts, &starts)?;
    let after: Vec<i64> = starts
        .iter()
        .zip(&prompts.lens)
        .map(|(s, l)| s + l)
        .collect();
    let answer_nll = answer_nll(model, batch, &mut cache, &last, &after)?;
    let max_new: Vec<usize> = batch.iter().map(|p| p.max_new_tokens).collect();
    let stop = &model.config.eos_token_ids;
    let _span = tracing::info_span!("decode", rows = batch.len()).entered();
    let ids = match during {
        None => greedy_rows(model, &mut cache, &last, &after, &max_new, stop)?,
        Some(d) => {
            drop(cache);
            let mut ids = Vec::with_capacity(batch.len());
            for (row, ex) in batch.iter().enumerate() {
                let comp = DecodeCompression {
                    compressor: d.compressor,
                    budget: d.budget,
                    schedule: Schedule {
                        every: Some(d.every),
                        max_slots: None,
                    },
                    seed: (d.seed)(row),
                };
                let mut cache = caches[row].copy();
                let mut hist = History::new(&ex.context, &d.hidden[row]);
                let out = greedy_compressing(
                    model,
                    &mut cache,
                    &mut hist,
                    &ex.prompt,
                    ex.max_new_tokens,
                    stop,
                    &comp,
                )?;
                let o = &mut outcomes[row];
                o.extra
                    .push(("decode_compressions".to_string(), out.compressions as f64));
                o.extra
                    .push(("decode_kv_bytes_end".to_string(), out.kv_bytes_end as f64));
                ids.push(out.ids);
            }
            ids
        }
    };
    for (row, ex) in batch.iter().enumerate() {
        let text = tok.decode(&ids[row])?;
        let v = score_text(ex.metric, &text, &ex.answers)
            .ok_or_else(|| Error::invalid(format!("example `{}`: no text metric", ex.id)))?;
        let o = &mut outcomes[row];
        o.scores.push((ex.metric.name().to_string(), v));
        if let Some((sum, n)) = answer_nll[row] {
            o.scores.push(("answer_nll".to_string(), sum / n as f64));
            o.scores.push(("answer_logprob".to_string(), -sum));
        }
        o.text = text;
    }
    Ok(())
}

/// Each row's summed answer NLL and answer token count (`None` for rows without a gold
/// answer); the cache is left after the prompts.
fn answer_nll(
    model: &Llama,
    batch: &[&Prepared],
    cache: &mut KvCache,
    last: &Tensor,
    starts: &[i64],
) -> Result<Vec<Option<(f64, i64)>>> {
    let Some(filler) = batch.iter().find_map(|p| p.answer.as_ref()) else {
        return Ok(vec![None; batch.len()]);
    };
    // Rows without an answer ride along on another row's answer; their sums are dropped.
    let answers: Vec<&Tensor> = batch
        .iter()
        .map(|p| p.answer.as_ref().unwrap_or(filler))
        .collect();
    let targets = RaggedBatch::new(&answers, model.device())?;
    let sums = target_nll_rows(model, cache, last, &targets, starts)?;
    Ok(batch
        .iter()
        .zip(sums.iter().zip(&targets.lens))
        .map(|(p, (&s, &n))| p.answer.as_ref().map(|_| (s, n)))
        .collect())
}
