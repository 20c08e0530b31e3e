//! The evaluation loop: prefill → compress → append the question → decode greedily → score.
//!
//! For each example the context (with BOS when the model has one) is prefilled once, capturing
//! every layer's input hidden states (`CompressionInput::hidden`). The cache is compressed with
//! a [`Compressor`] at each requested [`Budget`] (or not at all), the question and answer
//! prefix are appended at positions continuing from the *original* context length (the cache's
//! `seq_len`), and `max_new_tokens` are decoded greedily. Compression is query-agnostic unless
//! [`EvalOptions::query_aware`] passes the question ids to the compressor.
//!
//! Perplexity examples ([`Metric::Perplexity`]) instead score the NLL of their continuation
//! after the compressed context, and beside it the NLL after the uncompressed context on the
//! same window (`nll_full`), plus the paired difference (`nll_delta`).
//!
//! The runner calls [`prepare`] once per (model, task examples) and [`evaluate_budgets`] per
//! compressor; [`EvalResult::rows`] turns a result into CSV [`ResultRow`]s.

use crate::metrics::{mean_stderr, perplexity, score_text, MeanStderr};
use crate::results::{peak_memory_mb, peak_rss_mb, ResultRow, KVCAT_VERSION};
use kvcat_core::decode::{continuation_nll, greedy};
use kvcat_core::decode_compressing::{greedy_compressing, DecodeCompression, History, Schedule};
use kvcat_core::model::{ForwardOptions, Logits};
use kvcat_core::task::{Context, Example, Metric, Task};
use kvcat_core::{Budget, CompressionInput, Compressor, Error, KvCache, Llama, Result, Tokenizer};
use std::time::Instant;
use tch::Tensor;

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Let the compressor see the question ids.
    pub query_aware: bool,
    /// Prepend the model's BOS token (when it has one) to every context.
    pub add_bos: bool,
    /// Seed passed to stochastic compressors (mixed with the example index).
    pub seed: u64,
    /// Also compress during generation, after every this many generated tokens
    /// ([`kvcat_core::decode_compressing`]); adds the `decode_compressions` and
    /// `decode_kv_bytes_end` metrics.
    pub compress_every: Option<usize>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            query_aware: false,
            add_bos: true,
            seed: 0,
            compress_every: None,
        }
    }
}

/// An example tokenized for one model; tensors live on the model's device.
#[derive(Debug)]
pub struct Prepared {
    pub id: String,
    /// `[1, t]` context ids (BOS first when added).
    pub context: Tensor,
    /// `[1, q]` ids fed after compression: question + answer prefix (generation examples).
    pub prompt: Tensor,
    /// `[1, q']` question ids, given to query-aware compressors.
    pub question: Option<Tensor>,
    /// `[1, c]` continuation ids (perplexity examples).
    pub continuation: Option<Tensor>,
    pub answers: Vec<String>,
    pub metric: Metric,
    pub max_new_tokens: usize,
}

fn ids_tensor(ids: &[i64], model: &Llama) -> Tensor {
    Tensor::from_slice(ids)
        .view([1, ids.len() as i64])
        .to_device(model.device())
}

/// Errors when a task's target context length cannot fit the model's positions (checked
/// before generating examples).
pub fn check_task_fits(task: &dyn Task, model: &Llama) -> Result<()> {
    let max = model.config.max_position_embeddings;
    if let Some(len) = task.target_len() {
        if len as i64 > max {
            return Err(Error::invalid(format!(
                "task `{}`: target context length {len} tokens exceeds the model's {max} \
                 positions (max_position_embeddings)",
                task.name()
            )));
        }
    }
    Ok(())
}

/// Chat formats [`apply_chat_template`] knows.
pub const CHAT_TEMPLATES: [&str; 1] = ["chatml"];

/// Rewrites text examples into a chat format for instruction-tuned models (kvpress and RULER
/// evaluate those through their chat template). `chatml` (SmolLM2, Qwen): the context opens a
/// user turn (`<|im_start|>user\n…`), the question closes it and opens the assistant turn
/// (`…<|im_end|>\n<|im_start|>assistant\n`), which starts with the answer prefix. The
/// context/question split is kept, so compression still sees only the context. Token-id
/// contexts (perplexity windows) are left unchanged.
pub fn apply_chat_template(template: &str, examples: &mut [Example]) -> Result<()> {
    if template != "chatml" {
        return Err(Error::invalid(format!(
            "unknown chat template `{template}`; known: {}",
            CHAT_TEMPLATES.join(", ")
        )));
    }
    for e in examples.iter_mut() {
        if let Context::Text(t) = &mut e.context {
            *t = format!("<|im_start|>user\n{t}");
            e.question = format!("{}<|im_end|>\n<|im_start|>assistant\n", e.question);
            e.answer_prefix = e.answer_prefix.trim_start().to_string();
        }
    }
    Ok(())
}

/// Tokenizes examples for `model`, checking that each fits the model's positions
/// (context + question + generated tokens, or context + continuation).
pub fn prepare(
    model: &Llama,
    tok: &Tokenizer,
    examples: &[Example],
    opts: &EvalOptions,
) -> Result<Vec<Prepared>> {
    let bos = if opts.add_bos {
        model.config.bos_token_id
    } else {
        None
    };
    let max = model.config.max_position_embeddings;
    examples
        .iter()
        .map(|e| {
            let mut ctx: Vec<i64> = bos.into_iter().collect();
            match &e.context {
                Context::Text(t) => ctx.extend(tok.encode(t)?),
                Context::Tokens(ids) => ctx.extend_from_slice(ids),
            }
            let question = if e.question.is_empty() {
                vec![]
            } else {
                tok.encode(&e.question)?
            };
            let mut prompt = tok.encode(&format!("{}{}", e.question, e.answer_prefix))?;
            let perplexity = e.metric == Metric::Perplexity;
            if perplexity && e.continuation.is_empty() {
                return Err(Error::invalid(format!(
                    "example `{}`: a perplexity example needs a non-empty continuation",
                    e.id
                )));
            }
            if !perplexity && prompt.is_empty() {
                // Greedy decoding needs one fed token: move the last context token over.
                let last = ctx
                    .pop()
                    .ok_or_else(|| Error::invalid(format!("example `{}`: empty context", e.id)))?;
                prompt.push(last);
            }
            if ctx.is_empty() {
                return Err(Error::invalid(format!("example `{}`: empty context", e.id)));
            }
            let needed = if perplexity {
                ctx.len() + e.continuation.len()
            } else {
                ctx.len() + prompt.len() + e.max_new_tokens
            } as i64;
            if needed > max {
                return Err(Error::invalid(format!(
                    "example `{}` needs {needed} positions (context {} tokens), beyond the \
                     model's {max} (max_position_embeddings); lower the task's context_len",
                    e.id,
                    ctx.len()
                )));
            }
            Ok(Prepared {
                id: e.id.clone(),
                context: ids_tensor(&ctx, model),
                prompt: ids_tensor(&prompt, model),
                question: (!question.is_empty()).then(|| ids_tensor(&question, model)),
                continuation: perplexity.then(|| ids_tensor(&e.continuation, model)),
                answers: e.answers.clone(),
                metric: e.metric,
                max_new_tokens: e.max_new_tokens,
            })
        })
        .collect()
}

/// One metric aggregated over examples.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    pub name: String,
    pub mean: f64,
    pub stderr: f64,
    pub n: usize,
}

/// One example's outcome.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub id: String,
    /// The decoded generation (empty for perplexity examples).
    pub text: String,
    pub answers: Vec<String>,
    /// `(metric, value)` for this example.
    pub scores: Vec<(String, f64)>,
}

/// The outcome of one (model, examples, compressor, budget) cell.
#[derive(Debug, Clone)]
pub struct EvalResult {
    /// The budget asked for (`None`: no compression).
    pub budget: Option<Budget>,
    /// Task metrics first, in the order they appeared; each mean ± standard error.
    pub metrics: Vec<MetricValue>,
    /// Mean kept fraction of the original slots (`KvCache::achieved_fraction`).
    pub budget_achieved: f64,
    /// Mean bytes of K and V kept.
    pub kv_bytes: f64,
    /// Mean seconds per compression call.
    pub compress_seconds: f64,
    /// The compressor's extra metrics, averaged over examples.
    pub extra: Vec<MetricValue>,
    pub predictions: Vec<Prediction>,
}

impl EvalResult {
    /// The value of a metric by name.
    pub fn metric(&self, name: &str) -> Option<&MetricValue> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// CSV rows: one per task metric, then one per compressor extra metric.
    pub fn rows(&self, cell: &CellInfo) -> Vec<ResultRow> {
        let budget = match self.budget {
            Some(b) => b.to_string(),
            None => "1".into(),
        };
        self.metrics
            .iter()
            .chain(&self.extra)
            .map(|m| ResultRow {
                run_id: cell.run_id.clone(),
                cell_id: cell.cell_id.clone(),
                model: cell.model.clone(),
                policy: cell.policy.clone(),
                policy_params: cell.policy_params.clone(),
                compressor: cell.compressor.clone(),
                compressor_params: cell.compressor_params.clone(),
                budget: budget.clone(),
                budget_achieved: self.budget_achieved,
                kv_bytes: self.kv_bytes,
                task: cell.task.clone(),
                task_params: cell.task_params.clone(),
                query_aware: cell.query_aware,
                n: m.n,
                metric: m.name.clone(),
                value: m.mean,
                stderr: m.stderr,
                compress_seconds: self.compress_seconds,
                peak_memory_mb: peak_memory_mb(&cell.device),
                device: cell.device.clone(),
                dtype: cell.dtype.clone(),
                seed: cell.seed,
                git_rev: cell.git_rev.clone(),
                kvcat_version: KVCAT_VERSION.to_string(),
                host_peak_rss_mb: peak_rss_mb(),
                notes: String::new(),
            })
            .collect()
    }
}

/// The descriptive columns of a cell's result rows.
#[derive(Debug, Clone, Default)]
pub struct CellInfo {
    pub run_id: String,
    pub cell_id: String,
    pub model: String,
    pub policy: String,
    pub policy_params: String,
    pub compressor: String,
    pub compressor_params: String,
    pub task: String,
    pub task_params: String,
    pub query_aware: bool,
    pub device: String,
    pub dtype: String,
    pub seed: u64,
    pub git_rev: String,
}

/// Per-metric samples in first-seen order.
#[derive(Default)]
struct Samples(Vec<(String, Vec<f64>)>);

impl Samples {
    fn push(&mut self, name: &str, v: f64) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, xs)) => xs.push(v),
            None => self.0.push((name.to_string(), vec![v])),
        }
    }
    fn values(&self) -> Vec<MetricValue> {
        let mut out = Vec::new();
        for (name, xs) in &self.0 {
            let m = if name == "ppl" || name == "ppl_full" {
                // PPL = exp(mean NLL), from the matching NLL samples.
                let src = if name == "ppl" { "nll" } else { "nll_full" };
                let nll = self.0.iter().find(|(n, _)| n == src).map(|(_, v)| v);
                perplexity(nll.map(|v| v.as_slice()).unwrap_or(&[]))
            } else {
                mean_stderr(xs)
            };
            let MeanStderr { mean, stderr, n } = m;
            out.push(MetricValue {
                name: name.clone(),
                mean,
                stderr,
                n,
            });
        }
        out
    }
}

struct Accum {
    budget: Option<Budget>,
    samples: Samples,
    extra: Samples,
    achieved: Vec<f64>,
    bytes: Vec<f64>,
    seconds: Vec<f64>,
    predictions: Vec<Prediction>,
}

/// Evaluates `examples` with `compressor` at one `budget` (`None` compressor: uncompressed).
pub fn evaluate(
    model: &Llama,
    tok: &Tokenizer,
    examples: &[Prepared],
    compressor: Option<&dyn Compressor>,
    budget: Budget,
    opts: &EvalOptions,
) -> Result<EvalResult> {
    let mut out = evaluate_budgets(model, tok, examples, compressor, &[budget], opts)?;
    out.pop()
        .ok_or_else(|| Error::invalid("evaluation produced no result"))
}

/// Evaluates `examples` at several budgets, prefilling each example once; returns one result
/// per budget, in order. With no compressor, the uncompressed result is computed once and
/// returned for every budget (its `budget` is `None`).
pub fn evaluate_budgets(
    model: &Llama,
    tok: &Tokenizer,
    examples: &[Prepared],
    compressor: Option<&dyn Compressor>,
    budgets: &[Budget],
    opts: &EvalOptions,
) -> Result<Vec<EvalResult>> {
    let _g = tch::no_grad_guard();
    let cells: Vec<Option<Budget>> = match compressor {
        Some(_) => budgets.iter().copied().map(Some).collect(),
        None if budgets.is_empty() => vec![],
        None => vec![None],
    };
    let mut acc: Vec<Accum> = cells
        .iter()
        .map(|&budget| Accum {
            budget,
            samples: Samples::default(),
            extra: Samples::default(),
            achieved: vec![],
            bytes: vec![],
            seconds: vec![],
            predictions: vec![],
        })
        .collect();
    let stop = model.config.eos_token_ids.clone();
    for (idx, ex) in examples.iter().enumerate() {
        let perplexity = ex.continuation.is_some();
        let mut full = KvCache::new();
        let out = model.forward_with(
            &ex.context,
            &mut full,
            &ForwardOptions {
                capture_hidden: compressor.is_some(),
                logits: if perplexity {
                    Logits::Last
                } else {
                    Logits::None
                },
                ..Default::default()
            },
        )?;
        let last_logits = out.logits.as_ref().map(|l| l.select(1, 0)); // [1, vocab]
        let full_nll = match (&ex.continuation, &last_logits) {
            (Some(cont), Some(last)) => {
                let mut c = full.copy();
                let (nll, count) = continuation_nll(model, &mut c, last, cont)?;
                Some(nll / count as f64)
            }
            _ => None,
        };
        for a in acc.iter_mut() {
            let (mut cache, secs, extra) = match (compressor, a.budget) {
                (Some(c), Some(budget)) => {
                    let input = CompressionInput {
                        model,
                        cache: &full,
                        context: &ex.context,
                        hidden: &out.hidden,
                        question: if opts.query_aware {
                            ex.question.as_ref()
                        } else {
                            None
                        },
                        budget,
                        seed: opts.seed.wrapping_add(idx as u64),
                    };
                    let t0 = Instant::now();
                    let compressed = c.compress(&input)?;
                    let secs = t0.elapsed().as_secs_f64();
                    (compressed.cache, secs, compressed.extra)
                }
                _ => (full.copy(), 0.0, vec![]),
            };
            a.achieved.push(cache.achieved_fraction());
            a.bytes.push(cache.kept_bytes() as f64);
            a.seconds.push(secs);
            for (k, v) in &extra {
                a.extra.push(k, *v);
            }
            let mut scores = Vec::new();
            let text = match (&ex.continuation, &last_logits, full_nll) {
                (Some(cont), Some(last), Some(base)) => {
                    let nll = if a.budget.is_none() {
                        base
                    } else {
                        let (nll, count) = continuation_nll(model, &mut cache, last, cont)?;
                        nll / count as f64
                    };
                    scores.push(("nll".to_string(), nll));
                    scores.push(("ppl".to_string(), nll.exp()));
                    scores.push(("nll_full".to_string(), base));
                    scores.push(("ppl_full".to_string(), base.exp()));
                    scores.push(("nll_delta".to_string(), nll - base));
                    String::new()
                }
                _ => {
                    let ids = match (opts.compress_every, compressor, a.budget) {
                        (Some(every), Some(c), Some(budget)) => {
                            let comp = DecodeCompression {
                                compressor: c,
                                budget,
                                schedule: Schedule {
                                    every: Some(every),
                                    max_slots: None,
                                },
                                seed: opts.seed.wrapping_add(idx as u64),
                            };
                            let mut hist = History::new(&ex.context, &out.hidden);
                            let d = greedy_compressing(
                                model,
                                &mut cache,
                                &mut hist,
                                &ex.prompt,
                                ex.max_new_tokens,
                                &stop,
                                &comp,
                            )?;
                            a.extra.push("decode_compressions", d.compressions as f64);
                            a.extra.push("decode_kv_bytes_end", d.kv_bytes_end as f64);
                            d.ids
                        }
                        _ => greedy(model, &mut cache, &ex.prompt, ex.max_new_tokens, &stop)?,
                    };
                    let text = tok.decode(&ids)?;
                    let v = score_text(ex.metric, &text, &ex.answers).ok_or_else(|| {
                        Error::invalid(format!("example `{}`: no text metric", ex.id))
                    })?;
                    scores.push((ex.metric.name().to_string(), v));
                    text
                }
            };
            for (k, v) in &scores {
                a.samples.push(k, *v);
            }
            a.predictions.push(Prediction {
                id: ex.id.clone(),
                text,
                answers: ex.answers.clone(),
                scores,
            });
        }
    }
    let mean = |xs: &[f64]| {
        if xs.is_empty() {
            f64::NAN
        } else {
            xs.iter().sum::<f64>() / xs.len() as f64
        }
    };
    let results: Vec<EvalResult> = acc
        .into_iter()
        .map(|a| EvalResult {
            budget: a.budget,
            metrics: a.samples.values(),
            budget_achieved: mean(&a.achieved),
            kv_bytes: mean(&a.bytes),
            compress_seconds: mean(&a.seconds),
            extra: a.extra.values(),
            predictions: a.predictions,
        })
        .collect();
    match (compressor, results.first()) {
        (None, Some(r)) => Ok(vec![r.clone(); budgets.len()]),
        _ => Ok(results),
    }
}

/// The token length of a prepared context (with BOS), for reports.
pub fn context_len(p: &Prepared) -> i64 {
    p.context.size()[1]
}

/// Mean context length of prepared examples.
pub fn mean_context_len(ps: &[Prepared]) -> f64 {
    if ps.is_empty() {
        return 0.0;
    }
    ps.iter().map(context_len).sum::<i64>() as f64 / ps.len() as f64
}
