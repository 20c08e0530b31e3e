//! The evaluation loop: prefill → compress → append the question → decode greedily → score.
//!
//! For each example the context (with BOS when the model has one) is prefilled once, capturing
//! every layer's input hidden states (`CompressionInput::hidden`). The cache is compressed with
//! a [`Compressor`] at each requested [`Budget`] (or not at all), the question and answer
//! prefix are appended at positions continuing from the *original* context length (the cache's
//! `seq_len`), and `max_new_tokens` are decoded greedily. Compression is query-agnostic unless
//! [`EvalOptions::query_aware`] passes the question ids to the compressor.
//!
//! Generation examples are also scored by the teacher-forced likelihood of their first gold
//! answer after the prompt (`answer_nll`, mean nats per answer token, lower is better;
//! `answer_logprob`, the summed log-probability), a continuous metric that moves before
//! exact match does.
//!
//! Examples run [`EvalOptions::batch_size`] at a time (see [`batch`]): one padded prefill per
//! batch, every budget from it, and the batch decoded together; results equal batch size 1
//! within float tolerance.
//!
//! Perplexity examples ([`Metric::Perplexity`]) instead score the NLL of their continuation
//! after the compressed context, and beside it the NLL after the uncompressed context on the
//! same window (`nll_full`), plus the paired difference (`nll_delta`).
//!
//! The runner calls [`prepare`] once per (model, task examples) and [`evaluate_budgets`] per
//! compressor; [`EvalResult::rows`] turns a result into CSV [`ResultRow`]s.

mod batch;

use crate::metrics::{mean_stderr, perplexity, MeanStderr};
use crate::results::{peak_memory_mb, peak_rss_mb, ResultRow, KVCAT_VERSION};
use batch::{evaluate_batch, RowOutcome};
use kvcat_core::task::{Context, Example, Metric, Task};
use kvcat_core::{Budget, Compressor, Error, Llama, Result, Tokenizer};
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
    /// Examples per prefill and per decode step (≥ 1). Results do not depend on it beyond
    /// float rounding; larger batches use more memory.
    pub batch_size: usize,
}

/// The default [`EvalOptions::batch_size`].
pub const DEFAULT_BATCH_SIZE: usize = 8;

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            query_aware: false,
            add_bos: true,
            seed: 0,
            compress_every: None,
            batch_size: DEFAULT_BATCH_SIZE,
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
    /// `[1, a]` ids of the first gold answer as it follows the prompt, scored teacher-forced
    /// (generation examples with a non-empty gold answer).
    pub answer: Option<Tensor>,
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
            let answer = match perplexity {
                true => vec![],
                false => answer_ids(tok, e, &prompt)?,
            };
            let needed = if perplexity {
                ctx.len() + e.continuation.len()
            } else {
                ctx.len() + prompt.len() + e.max_new_tokens.max(answer.len())
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
                answer: (!answer.is_empty()).then(|| ids_tensor(&answer, model)),
                answers: e.answers.clone(),
                metric: e.metric,
                max_new_tokens: e.max_new_tokens,
            })
        })
        .collect()
}

/// The first gold answer's text as it follows the prompt (question + answer prefix), by the
/// one rule training rows use too ([`Example::answer_continuation`]): a space unless the prompt
/// ends in whitespace or the answer starts with it (`" The pass key is" + " 7"`,
/// `"\n king" + " love"`).
pub fn answer_text(e: &Example) -> Option<String> {
    e.answer_continuation().filter(|a| !a.trim().is_empty())
}

/// Token ids of the first gold answer as they follow `prompt` (empty when there is none).
/// The answer is tokenized together with the question and prefix and cut after the prompt's
/// tokens, so a byte-level BPE sees the same boundary as in running text; when the joint
/// tokenization does not start with the prompt's tokens, the answer is tokenized alone.
fn answer_ids(tok: &Tokenizer, e: &Example, prompt: &[i64]) -> Result<Vec<i64>> {
    let Some(answer) = answer_text(e) else {
        return Ok(vec![]);
    };
    let stem = format!("{}{}", e.question, e.answer_prefix);
    if !stem.is_empty() {
        let joint = tok.encode(&format!("{stem}{answer}"))?;
        if joint.len() > prompt.len() && joint.starts_with(prompt) {
            return Ok(joint[prompt.len()..].to_vec());
        }
    }
    tok.encode(&answer)
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
    /// Mean bytes really held for K and V ([`kvcat_core::KvCache::held_bytes`]): a
    /// head-varying cache counts its hidden padding slots and keep mask, not only kept slots.
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

    /// CSV rows: one per task metric, then one per compressor extra metric, each `cell`
    /// with this result's measured columns.
    pub fn rows(&self, cell: &CellInfo) -> Vec<ResultRow> {
        let budget = match self.budget {
            Some(b) => b.to_string(),
            None => "1".into(),
        };
        self.metrics
            .iter()
            .chain(&self.extra)
            .map(|m| ResultRow {
                budget: budget.clone(),
                budget_achieved: self.budget_achieved,
                kv_bytes: self.kv_bytes,
                n: m.n,
                metric: m.name.clone(),
                value: m.mean,
                stderr: m.stderr,
                compress_seconds: self.compress_seconds,
                peak_memory_mb: peak_memory_mb(&cell.device),
                kvcat_version: KVCAT_VERSION.to_string(),
                host_peak_rss_mb: peak_rss_mb(),
                ..cell.clone()
            })
            .collect()
    }
}

/// The descriptive columns of a cell's result rows, as a template row: its identity columns
/// (run, cell, model, policy, compressor, task, their parameters, `query_aware`, device,
/// dtype, seed, git revision, notes) are copied into every row, and [`EvalResult::rows`]
/// fills in the measured ones.
pub type CellInfo = ResultRow;

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

impl Accum {
    fn new(budget: Option<Budget>) -> Self {
        Accum {
            budget,
            samples: Samples::default(),
            extra: Samples::default(),
            achieved: vec![],
            bytes: vec![],
            seconds: vec![],
            predictions: vec![],
        }
    }

    fn push(&mut self, ex: &Prepared, row: RowOutcome) {
        self.achieved.push(row.achieved);
        self.bytes.push(row.bytes);
        self.seconds.push(row.seconds);
        for (k, v) in &row.extra {
            self.extra.push(k, *v);
        }
        for (k, v) in &row.scores {
            self.samples.push(k, *v);
        }
        self.predictions.push(Prediction {
            id: ex.id.clone(),
            text: row.text,
            answers: ex.answers.clone(),
            scores: row.scores,
        });
    }

    fn finish(self) -> EvalResult {
        let mean = |xs: &[f64]| {
            if xs.is_empty() {
                f64::NAN
            } else {
                xs.iter().sum::<f64>() / xs.len() as f64
            }
        };
        EvalResult {
            budget: self.budget,
            metrics: self.samples.values(),
            budget_achieved: mean(&self.achieved),
            kv_bytes: mean(&self.bytes),
            compress_seconds: mean(&self.seconds),
            extra: self.extra.values(),
            predictions: self.predictions,
        }
    }
}

/// Evaluates `examples` with `compressor` at one `budget` (`None` compressor: uncompressed):
/// the benchmark's task metrics for one example set. (Held-out loss during training is
/// [`crate::train::heldout_loss`].)
pub fn evaluate_examples(
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

/// The old name of [`evaluate_examples`].
#[deprecated(note = "renamed to `evaluate_examples`")]
pub fn evaluate(
    model: &Llama,
    tok: &Tokenizer,
    examples: &[Prepared],
    compressor: Option<&dyn Compressor>,
    budget: Budget,
    opts: &EvalOptions,
) -> Result<EvalResult> {
    evaluate_examples(model, tok, examples, compressor, budget, opts)
}

/// Evaluates `examples` at several budgets, prefilling each example once; returns one result
/// per budget, in order. With no compressor, the uncompressed result is computed once and
/// returned for every budget (its `budget` is `None`). Examples run in batches of
/// [`EvalOptions::batch_size`] consecutive examples of the same kind (perplexity or
/// generation).
pub fn evaluate_budgets(
    model: &Llama,
    tok: &Tokenizer,
    examples: &[Prepared],
    compressor: Option<&dyn Compressor>,
    budgets: &[Budget],
    opts: &EvalOptions,
) -> Result<Vec<EvalResult>> {
    if opts.batch_size == 0 {
        return Err(Error::invalid(
            "evaluation `batch_size` must be at least 1, got 0",
        ));
    }
    let _g = tch::no_grad_guard();
    let cells: Vec<Option<Budget>> = match compressor {
        Some(_) => budgets.iter().copied().map(Some).collect(),
        None if budgets.is_empty() => vec![],
        None => vec![None],
    };
    let mut acc: Vec<Accum> = cells.iter().map(|&b| Accum::new(b)).collect();
    if !cells.is_empty() {
        for (first, batch) in batches(examples, opts.batch_size) {
            let outcomes = evaluate_batch(model, tok, &batch, first, compressor, &cells, opts)?;
            for (a, rows) in acc.iter_mut().zip(outcomes) {
                for (ex, row) in batch.iter().zip(rows) {
                    a.push(ex, row);
                }
            }
        }
    }
    let results: Vec<EvalResult> = acc.into_iter().map(Accum::finish).collect();
    match (compressor, results.first()) {
        (None, Some(r)) => Ok(vec![r.clone(); budgets.len()]),
        _ => Ok(results),
    }
}

/// Consecutive runs of at most `size` examples of one kind (perplexity or generation), each
/// with the index of its first example.
fn batches(examples: &[Prepared], size: usize) -> Vec<(usize, Vec<&Prepared>)> {
    let mut out: Vec<(usize, Vec<&Prepared>)> = vec![];
    for (i, ex) in examples.iter().enumerate() {
        let kind = ex.continuation.is_some();
        match out.last_mut() {
            Some((_, b)) if b.len() < size && b[0].continuation.is_some() == kind => b.push(ex),
            _ => out.push((i, vec![ex])),
        }
    }
    out
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
