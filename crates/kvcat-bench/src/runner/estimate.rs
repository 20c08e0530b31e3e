//! The `--dry-run` time estimate, from short measurements on the manifest's device.
//!
//! For every `[[model]]`, a stand-in with its architecture is built (random weights for a
//! from-scratch model, the real weights for a file) and timed:
//!
//! - a training forward + backward over one sequence of up to 512 tokens (median of three),
//!   scaled linearly to a `batch_size × seq_len` micro-batch; a job costs
//!   `steps × grad_accum × passes` micro-batches, where `passes` counts the loss's gradient
//!   passes (masked, full) plus a third of one for a policy's no-grad teacher pass;
//! - one synthetic example per compressor (and one uncompressed, for the references) through
//!   the real evaluation loop at the largest compressed budget, standing for every budget and
//!   task: measured at the median task context length (at most 512 tokens, 8 generated
//!   tokens) and scaled linearly to each task's context length.
//!
//! Checkpoints already in the cache and finished cells cost nothing. Loading, tokenising and
//! data preparation are not counted, and linear scaling understates attention's quadratic
//! cost at long contexts: read the result as a lower bound within a factor of about two.

use super::checkpoints::Init;
use super::grid::{Cell, Grid};
use super::manifest::Manifest;
use super::training::{build_config, Source};
use crate::evaluate::{evaluate_budgets, EvalOptions, Prepared};
use kvcat_core::compressor::build_compressor;
use kvcat_core::device::{default_dtype, parse_dtype, DeviceChoice};
use kvcat_core::task::{build_task, Metric};
use kvcat_core::{Error, Model, Result};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// A rough wall-time estimate of a run.
#[derive(Debug, Clone, Default)]
pub struct Estimate {
    /// Seconds of training still to do (cached checkpoints cost nothing).
    pub train_seconds: f64,
    /// Seconds of evaluation for the cells still to run.
    pub eval_seconds: f64,
    /// How the estimate was made.
    pub basis: String,
}

/// The longest context measured directly; longer ones are scaled linearly.
const MEASURE_MAX_LEN: i64 = 512;

fn secs<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t0 = Instant::now();
    let out = f()?;
    Ok((out, t0.elapsed().as_secs_f64()))
}

fn random_ids(vocab: i64, len: i64, device: Device) -> Tensor {
    Tensor::randint(vocab, [1, len], (Kind::Int64, device))
}

/// Seconds of one training micro-batch of `batch × seq` tokens (forward + backward).
fn time_train_step(model: &Model, batch: i64, seq: i64) -> Result<f64> {
    let vocab = model.config.vocab_size;
    let ids = Tensor::randint(vocab, [batch, seq], (Kind::Int64, model.vs.device()));
    let step = || -> Result<()> {
        let mut cache = kvcat_core::KvCache::new();
        let logits = model.forward(&ids, &mut cache)?;
        let loss = logits
            .to_kind(Kind::Float)
            .view([-1, vocab])
            .cross_entropy_for_logits(&ids.view([-1]));
        loss.backward();
        for (_, v) in model.vs.variables() {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        Ok(())
    };
    step()?; // warm-up
    let mut t: Vec<f64> = (0..3)
        .map(|_| secs(step).map(|x| x.1))
        .collect::<Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[1])
}

/// A synthetic example shaped like `task`'s: context of `len` tokens, a short prompt, and
/// either generated tokens or a scored continuation.
fn synthetic(model: &Model, len: i64, gen: usize, continuation: Option<i64>) -> Prepared {
    let vocab = model.config.vocab_size;
    let device = model.vs.device();
    Prepared {
        id: "estimate".into(),
        context: random_ids(vocab, len, device),
        prompt: random_ids(vocab, 12, device),
        question: Some(random_ids(vocab, 8, device)),
        continuation: continuation.map(|c| random_ids(vocab, c, device)),
        answer: continuation.is_none().then(|| random_ids(vocab, 2, device)),
        answers: vec!["-".into()],
        metric: if continuation.is_some() {
            Metric::Perplexity
        } else {
            Metric::StringMatchAll
        },
        max_new_tokens: gen,
    }
}

fn int_param(t: &toml::Table, k: &str) -> Option<i64> {
    t.get(k).and_then(|v| v.as_integer())
}

/// Estimates the time to run `cells` of `grid`, training only jobs missing from
/// `checkpoints`.
pub fn estimate(m: &Manifest, grid: &Grid, cells: &[&Cell], checkpoints: &Path) -> Estimate {
    match measure(m, grid, cells, checkpoints) {
        Ok(e) => e,
        Err(e) => Estimate {
            basis: format!("no estimate: {e}"),
            ..Default::default()
        },
    }
}

fn measure(m: &Manifest, grid: &Grid, cells: &[&Cell], checkpoints: &Path) -> Result<Estimate> {
    let device = m.device.parse::<DeviceChoice>()?.resolve()?;
    let kind = parse_dtype(&m.dtype)?.unwrap_or(default_dtype(device));
    let mut est = Estimate::default();
    let model_index = |name: &str| m.model.iter().position(|x| x.name == name);
    for (mi, spec) in m.model.iter().enumerate() {
        let jobs: Vec<usize> = (0..grid.train_jobs.len())
            .filter(|&j| {
                let label = &grid.train_jobs[j].label;
                label.split('/').next() == Some(spec.name.as_str())
                    && !checkpoints.join(&grid.train_jobs[j].id).is_dir()
            })
            .collect();
        let my_cells: Vec<&&Cell> = cells
            .iter()
            .filter(|c| model_index(&grid.checkpoints[c.checkpoint].model) == Some(mi))
            .collect();
        if jobs.is_empty() && my_cells.is_empty() {
            continue;
        }
        let model = match (&spec.path, &spec.pretrain) {
            (Some(p), _) => Model::load(Path::new(p), device, kind)?,
            (None, Some(table)) => {
                let cfg = build_config(m, &spec.name, table, None, Source::Scratch)?;
                let lc = cfg
                    .model
                    .config
                    .ok_or_else(|| Error::invalid("no model.config"))?;
                Model::from_config(&lc, device, kind)?
            }
            _ => continue,
        };
        let mut step_cache: HashMap<(i64, i64), f64> = HashMap::new();
        for &j in &jobs {
            let job = &grid.train_jobs[j];
            let source = match &job.init {
                Init::Scratch => Source::Scratch,
                Init::Path(p) => Source::Path(Path::new(p)),
                Init::Job(_) => Source::Pending,
            };
            let cfg = build_config(m, &job.label, &job.table, job.policy.as_ref(), source)?;
            // Measured on one sequence of at most 512 tokens, scaled linearly.
            let seq = cfg.seq_len.min(MEASURE_MAX_LEN);
            let t = match step_cache.get(&(1, seq)) {
                Some(t) => *t,
                None => {
                    let t = time_train_step(&model, 1, seq)?;
                    step_cache.insert((1, seq), t);
                    t
                }
            } * cfg.batch_size as f64
                * (cfg.seq_len as f64 / seq as f64);
            let l = &cfg.loss;
            let mut passes =
                (l.w_mask > 0.0 || l.w_kd > 0.0) as u32 as f64 + (l.w_full > 0.0) as u32 as f64;
            if cfg.policy.name != "none" {
                passes += 1.0 / 3.0;
            }
            est.train_seconds += cfg.steps as f64 * cfg.grad_accum as f64 * passes.max(1.0) * t;
        }
        // Evaluation: one synthetic example per compressor (and the reference) at one
        // context length, scaled linearly to each task's context length.
        let budgets = m.compressed_budgets();
        let ctx_len = |ti: usize| -> Result<i64> {
            let t = &m.task[ti];
            let len = build_task(&t.name, &t.params)?
                .target_len()
                .map(|l| l as i64)
                .unwrap_or(512);
            Ok((len - int_param(&t.params, "continuation_len").unwrap_or(0)).max(16))
        };
        let mut lens = my_cells
            .iter()
            .map(|c| ctx_len(c.task))
            .collect::<Result<Vec<_>>>()?;
        lens.sort_unstable();
        let measured_len = lens
            .get(lens.len() / 2)
            .copied()
            .unwrap_or(256)
            .min(MEASURE_MAX_LEN);
        let mut cost: HashMap<Option<usize>, f64> = HashMap::new();
        let mut task_len: HashMap<usize, i64> = HashMap::new();
        let _g = tch::no_grad_guard();
        for cell in &my_cells {
            if let std::collections::hash_map::Entry::Vacant(v) = task_len.entry(cell.task) {
                v.insert(ctx_len(cell.task)?);
            }
            if cost.contains_key(&cell.compressor) {
                continue;
            }
            let ex = [synthetic(&model, measured_len, 8, None)];
            let opts = EvalOptions {
                query_aware: false,
                add_bos: false,
                seed: m.seed,
                compress_every: None,
                ..Default::default()
            };
            let compressor = cell
                .compressor
                .map(|k| build_compressor(&m.compressor[k].name, &m.compressor[k].params))
                .transpose()?;
            // The largest compressed budget (usually the costliest) stands for all.
            let largest = budgets
                .iter()
                .copied()
                .max_by(|a, b| a.as_fraction(1 << 20).total_cmp(&b.as_fraction(1 << 20)));
            let bs: Vec<_> = match (&compressor, largest) {
                (Some(_), Some(b)) => vec![b],
                _ => vec![kvcat_core::Budget::full()],
            };
            let fallback;
            let tok = match &model.tokenizer {
                Some(t) => t,
                None => {
                    fallback = fallback_tokenizer();
                    &fallback
                }
            };
            let run = || evaluate_budgets(&model, tok, &ex, compressor.as_deref(), &bs, &opts);
            let (_, first) = secs(run)?;
            // Cheap measurements are repeated (median of three) to damp noise.
            let s = if first < 2.0 {
                let mut t = vec![first, secs(run)?.1, secs(run)?.1];
                t.sort_by(f64::total_cmp);
                t[1]
            } else {
                first
            };
            cost.insert(cell.compressor, s);
        }
        for cell in &my_cells {
            let scale = task_len[&cell.task] as f64 / measured_len as f64;
            est.eval_seconds += cost[&cell.compressor] * scale * m.task[cell.task].n as f64;
        }
    }
    est.basis = format!(
        "measured on {}: one training micro-batch per shape, one synthetic example per compressor, scaled to each task's length; data preparation and loading not counted",
        kvcat_core::device::device_name(device)
    );
    Ok(est)
}

/// An empty tokenizer for random-weight stand-ins: the estimate decodes generated ids (unknown
/// ids decode to nothing) but never scores them.
fn fallback_tokenizer() -> kvcat_core::Tokenizer {
    kvcat_core::Tokenizer::new(tokenizers::Tokenizer::new(
        tokenizers::models::bpe::BPE::default(),
    ))
}
