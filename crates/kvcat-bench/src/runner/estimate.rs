//! The `--dry-run` time estimate, from short measurements on the manifest's device.
//!
//! For every `[[model]]`, a stand-in with its architecture is built (random weights for a
//! from-scratch model, the real weights for a file) and timed the way `kvcat perf` times
//! (warm-up, then the median of three, device synchronised):
//!
//! - one real training step per job shape — the job's policy and loss weights through
//!   [`batch_loss`](crate::train::loss::batch_loss), backward, clipping and AdamW — on a
//!   `batch_size × seq_len` micro-batch with the mid-range prefix; a job costs
//!   `steps × grad_accum` of them;
//! - one synthetic example per compressor (and one uncompressed, for the references) through
//!   the real evaluation loop at the largest compressed budget, standing for every budget and
//!   task, at the median task context length (8 generated tokens), scaled linearly to each
//!   task's context length.
//!
//! On a GPU both are measured at the real shapes. On the CPU, where that would take minutes,
//! lengths are capped at 512 tokens and training at one sequence, then scaled linearly, which
//! understates attention's quadratic cost at long contexts (read it as a lower bound).
//! Checkpoints already in the cache and finished cells cost nothing; loading, tokenising and
//! data preparation are not counted.

use super::grid::{Cell, Grid};
use super::job_config::{build_config, Source};
use super::jobs::Init;
use super::manifest::{Manifest, ModelSpec};
use crate::evaluate::{evaluate_budgets, EvalOptions, Prepared};
use crate::perf::{train_step_seconds, TrainShape};
use crate::train::config::TrainConfig;
use kvcat_core::compressor::build_compressor;
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

/// On the CPU, the longest context measured directly; longer ones are scaled linearly.
const CPU_MEASURE_MAX_LEN: i64 = 512;

/// The longest context measured directly on `device` (unlimited on a GPU).
fn measure_max_len(device: Device) -> i64 {
    match device {
        Device::Cpu => CPU_MEASURE_MAX_LEN,
        _ => i64::MAX,
    }
}

fn secs<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t0 = Instant::now();
    let out = f()?;
    Ok((out, t0.elapsed().as_secs_f64()))
}

fn random_ids(vocab: i64, len: i64, device: Device) -> Tensor {
    Tensor::randint(vocab, [1, len], (Kind::Int64, device))
}

/// Seconds of one training step of `cfg`'s micro-batch (policy, loss, shape), measured at
/// the real shape on a GPU and at one sequence of at most 512 tokens on the CPU, scaled
/// linearly.
fn time_train_step(model: &Model, cfg: &TrainConfig) -> Result<f64> {
    let cpu = model.device() == Device::Cpu;
    let len = cfg.seq_len.min(measure_max_len(model.device()));
    let batch = if cpu { 1 } else { cfg.batch_size };
    let (lo, hi) = cfg.split.range(cfg.seq_len);
    let prefix = (((lo + hi) / 2) * len / cfg.seq_len).clamp(1, len - 1);
    let shape = TrainShape {
        policy: &cfg.policy.name,
        policy_params: &cfg.policy.params,
        loss: &cfg.loss,
        batch,
        len,
        prefix,
        kept: (prefix / 4).max(1),
    };
    let secs = train_step_seconds(model, &shape, 1, 3)?;
    Ok(secs * (cfg.batch_size as f64 / batch as f64) * (cfg.seq_len as f64 / len as f64))
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

/// Measures model by model: the training jobs not yet cached, then the cells, each model
/// on a stand-in with its architecture.
fn measure(m: &Manifest, grid: &Grid, cells: &[&Cell], checkpoints: &Path) -> Result<Estimate> {
    let (device, kind) = crate::runtime_spec::resolve(m.device, m.dtype)?;
    let mut est = Estimate::default();
    let mut caveat = String::new();
    let model_index = |name: &str| m.model.iter().position(|x| x.name == name);
    for (mi, spec) in m.model.iter().enumerate() {
        let jobs: Vec<usize> = (0..grid.train_jobs.len())
            .filter(|&j| {
                let label = &grid.train_jobs[j].label;
                label.split('/').next() == Some(spec.name.as_str())
                    && !checkpoints.join(&grid.train_jobs[j].id).is_dir()
            })
            .collect();
        let my_cells: Vec<&Cell> = cells
            .iter()
            .copied()
            .filter(|c| model_index(&grid.checkpoints[c.checkpoint].model) == Some(mi))
            .collect();
        if jobs.is_empty() && my_cells.is_empty() {
            continue;
        }
        let Some(model) = stand_in(m, spec, device, kind)? else {
            continue;
        };
        est.train_seconds += train_seconds(m, grid, &jobs, &model)?;
        let (eval_seconds, unmeasured) = eval_seconds(m, &my_cells, &model)?;
        est.eval_seconds += eval_seconds;
        if !unmeasured.is_empty() {
            caveat = format!(
                "; counted at the uncompressed cost, since they cannot run on a random stand-in: {}",
                unmeasured.join(", ")
            );
        }
    }
    est.basis = format!(
        "measured on {}: one training step per policy and shape, one synthetic example per compressor at the median context length (capped at {CPU_MEASURE_MAX_LEN} tokens on the CPU), scaled to each task's length; data preparation and loading not counted{caveat}",
        kvcat_core::device::device_name(device),
    );
    Ok(est)
}

/// The model `spec` names: its real weights for a file, random weights of its architecture
/// for a from-scratch model (`None` when it is neither).
fn stand_in(m: &Manifest, spec: &ModelSpec, device: Device, kind: Kind) -> Result<Option<Model>> {
    Ok(Some(match (&spec.path, &spec.pretrain) {
        (Some(p), _) => Model::load(Path::new(p), device, kind)?,
        (None, Some(table)) => {
            let cfg = build_config(m, &spec.name, table, None, Source::Scratch)?;
            let lc = cfg
                .model
                .config
                .ok_or_else(|| Error::invalid("no model.config"))?;
            Model::from_config(&lc, device, kind)?
        }
        _ => return Ok(None),
    }))
}

/// Seconds of training `jobs` on `model`: `steps × grad_accum` measured steps each, one
/// measurement per policy and shape.
fn train_seconds(m: &Manifest, grid: &Grid, jobs: &[usize], model: &Model) -> Result<f64> {
    let mut step_cache: HashMap<(String, i64, i64), f64> = HashMap::new();
    let mut total = 0.0;
    for &j in jobs {
        let job = &grid.train_jobs[j];
        let source = match &job.init {
            Init::Scratch => Source::Scratch,
            Init::Path(p) => Source::Path(Path::new(p)),
            Init::Job(_) => Source::Pending,
        };
        let cfg = build_config(m, &job.label, &job.table, job.policy.as_ref(), source)?;
        let key = (cfg.policy.name.clone(), cfg.batch_size, cfg.seq_len);
        let t = match step_cache.get(&key) {
            Some(t) => *t,
            None => {
                let t = time_train_step(model, &cfg)?;
                step_cache.insert(key, t);
                t
            }
        };
        total += cfg.steps as f64 * cfg.grad_accum as f64 * t;
    }
    Ok(total)
}

/// The context length of task `ti`'s examples (its target length less any scored
/// continuation; 512 when the task does not say), at least 16.
fn task_context_len(m: &Manifest, ti: usize) -> Result<i64> {
    let t = &m.task[ti];
    let len = build_task(&t.name, &t.params)?
        .target_len()
        .map(|l| l as i64)
        .unwrap_or(512);
    Ok((len - int_param(&t.params, "continuation_len").unwrap_or(0)).max(16))
}

/// Seconds of evaluating `cells` on `model`: one synthetic example per compressor (and the
/// reference) at the median context length, scaled linearly to each task's context length
/// and example count. Also returns the compressors that could not run on the stand-in.
fn eval_seconds(m: &Manifest, cells: &[&Cell], model: &Model) -> Result<(f64, Vec<String>)> {
    let mut lens = cells
        .iter()
        .map(|c| task_context_len(m, c.task))
        .collect::<Result<Vec<_>>>()?;
    lens.sort_unstable();
    let measured_len = lens
        .get(lens.len() / 2)
        .copied()
        .unwrap_or(256)
        .min(measure_max_len(model.device()));
    let mut cost: HashMap<Option<usize>, f64> = HashMap::new();
    let mut unmeasured: Vec<String> = Vec::new();
    let mut task_len: HashMap<usize, i64> = HashMap::new();
    let _g = tch::no_grad_guard();
    for cell in cells {
        if let std::collections::hash_map::Entry::Vacant(v) = task_len.entry(cell.task) {
            v.insert(task_context_len(m, cell.task)?);
        }
        if let std::collections::hash_map::Entry::Vacant(v) = cost.entry(cell.compressor) {
            v.insert(example_seconds(
                m,
                model,
                cell.compressor,
                measured_len,
                &mut unmeasured,
            )?);
        }
    }
    let total = cells
        .iter()
        .map(|cell| {
            let scale = task_len[&cell.task] as f64 / measured_len as f64;
            cost[&cell.compressor] * scale * m.task[cell.task].n as f64
        })
        .sum();
    Ok((total, unmeasured))
}

/// Seconds of one synthetic `len`-token example through the evaluation loop with
/// `[[compressor]]` entry `compressor` (`None`: uncompressed) at the largest compressed
/// budget; the median of three when cheap. A compressor that needs a trained checkpoint
/// (`gist` reads learned summary slots) cannot run on the random stand-in: it is timed
/// uncompressed and named in `unmeasured`.
fn example_seconds(
    m: &Manifest,
    model: &Model,
    compressor: Option<usize>,
    len: i64,
    unmeasured: &mut Vec<String>,
) -> Result<f64> {
    let ex = [synthetic(model, len, 8, None)];
    let opts = EvalOptions {
        query_aware: false,
        add_bos: false,
        seed: m.seed,
        compress_every: None,
        ..Default::default()
    };
    let compressor = compressor
        .map(|k| build_compressor(&m.compressor[k].name, &m.compressor[k].params))
        .transpose()?;
    // The largest compressed budget (usually the costliest) stands for all.
    let largest = m
        .compressed_budgets()
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
    let full = [kvcat_core::Budget::full()];
    let (mut comp, mut bs) = (compressor.as_deref(), &bs[..]);
    let first = match secs(|| evaluate_budgets(model, tok, &ex, comp, bs, &opts)) {
        Ok((_, s)) => s,
        Err(e) if comp.is_some() => {
            let name = comp.map(|c| c.name()).unwrap_or_default();
            unmeasured.push(format!("`{name}` ({e})"));
            (comp, bs) = (None, &full[..]);
            secs(|| evaluate_budgets(model, tok, &ex, comp, bs, &opts))?.1
        }
        Err(e) => return Err(e),
    };
    let run = || evaluate_budgets(model, tok, &ex, comp, bs, &opts);
    // Cheap measurements are repeated (median of three) to damp noise.
    Ok(if first < 2.0 {
        let mut t = [first, secs(run)?.1, secs(run)?.1];
        t.sort_by(f64::total_cmp);
        t[1]
    } else {
        first
    })
}

/// An empty tokenizer for random-weight stand-ins: the estimate decodes generated ids (unknown
/// ids decode to nothing) but never scores them.
fn fallback_tokenizer() -> kvcat_core::Tokenizer {
    kvcat_core::Tokenizer::new(tokenizers::Tokenizer::new(
        tokenizers::models::bpe::BPE::default(),
    ))
}
