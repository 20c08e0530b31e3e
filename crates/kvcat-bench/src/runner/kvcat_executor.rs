//! The executor over kvcat's own trainer ([`crate::train::train`]) and evaluation loop
//! ([`crate::evaluate`]).
//!
//! It keeps the current checkpoint loaded and its tokenized task examples cached, so the
//! runner's checkpoint-major cell order loads each model once. A group of budgets of one
//! compressor is evaluated with [`evaluate_budgets`], which prefills each example once.

use super::executor::{CellContext, CellExecutor, CellOutput};
use super::job_config::train_config;
use super::jobs::TrainJob;
use super::manifest::{AnalyzeSpec, Manifest};
use crate::analyze::profile::ProfileSpec;
use crate::analyze::profile_model;
use crate::analyze::table::ProfileRow;
use crate::evaluate::{
    check_task_fits, context_len, evaluate_budgets, prepare, CellInfo, EvalOptions, EvalResult,
    Prepared,
};
use crate::results::{join_notes, ExampleScore};
use crate::train::{train, StepLog, TrainRunOptions};
use indicatif::ProgressBar;
use kvcat_core::compressor::build_compressor;
use kvcat_core::device::{device_name, dtype_name};
use kvcat_core::loading::warn_once;
use kvcat_core::task::build_task;
use kvcat_core::{Error, Model, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind};

/// The [`CellExecutor`] over kvcat itself: trains with [`crate::train::train`] and evaluates
/// with [`crate::evaluate`].
pub struct KvcatExecutor {
    manifest: Manifest,
    device: Device,
    kind: Kind,
    /// Tokenized-data cache shared by all training jobs.
    data_cache: Option<PathBuf>,
    loaded: Option<(PathBuf, Model)>,
    /// Prepared examples of the loaded checkpoint, per task index.
    prepared: HashMap<usize, Vec<Prepared>>,
}

impl KvcatExecutor {
    /// An executor for `manifest`'s device and dtype (resolved now: asking for CUDA where
    /// there is none is an error).
    pub fn new(manifest: &Manifest) -> Result<KvcatExecutor> {
        let (device, kind) = crate::runtime_spec::resolve(manifest.device, manifest.dtype)?;
        Ok(KvcatExecutor {
            manifest: manifest.clone(),
            device,
            kind,
            data_cache: None,
            loaded: None,
            prepared: HashMap::new(),
        })
    }

    /// Shares tokenized training data between jobs in `dir` (default: beside checkpoints).
    pub fn with_data_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_cache = Some(dir.into());
        self
    }

    fn model(&mut self, weights: &Path) -> Result<&Model> {
        if self.loaded.as_ref().map(|(p, _)| p.as_path()) != Some(weights) {
            self.loaded = None;
            self.prepared.clear();
            let model = Model::load(weights, self.device, self.kind)?;
            if model.tokenizer.is_none() {
                return Err(Error::invalid(format!(
                    "{}: the model has no tokenizer (tokenizer.json or GGUF metadata)",
                    weights.display()
                )));
            }
            self.loaded = Some((weights.to_path_buf(), model));
        }
        Ok(&self.loaded.as_ref().expect("just loaded").1)
    }

    fn eval_group(&mut self, ctxs: &[CellContext]) -> Result<Vec<CellOutput>> {
        let first = &ctxs[0];
        let spec = first.task().clone();
        let opts = EvalOptions {
            query_aware: spec.query_aware,
            add_bos: true,
            seed: self.manifest.seed,
            compress_every: spec.compress_every,
            batch_size: self
                .manifest
                .eval_batch_size
                .unwrap_or(crate::evaluate::DEFAULT_BATCH_SIZE),
            ..Default::default()
        };
        self.model(first.weights)?;
        let (_, model) = self.loaded.as_ref().expect("loaded above");
        let tok = model.tokenizer.as_ref().expect("checked at load");
        if !self.prepared.contains_key(&first.cell.task) {
            let task = build_task(&spec.name, &spec.params)?;
            check_task_fits(task.as_ref(), model)?;
            let examples = task.examples(tok, spec.n, spec.seed)?;
            let prepared = prepare(model, tok, &examples, &opts)?;
            self.prepared.insert(first.cell.task, prepared);
        }
        let prepared = &self.prepared[&first.cell.task];
        let compressor = first
            .compressor()
            .map(|c| build_compressor(&c.name, &c.params))
            .transpose()?;
        let budgets: Vec<_> = ctxs.iter().map(|c| c.cell.budget).collect();
        crate::results::reset_device_peak(self.device);
        let results =
            evaluate_budgets(model, tok, prepared, compressor.as_deref(), &budgets, &opts)?;
        if results.len() != ctxs.len() {
            return Err(Error::invalid(format!(
                "evaluation returned {} results for {} cells",
                results.len(),
                ctxs.len()
            )));
        }
        let info = CellInfo {
            device: device_name(self.device),
            dtype: dtype_name(self.kind).to_string(),
            ..Default::default()
        };
        let lengths: Vec<i64> = prepared.iter().map(context_len).collect();
        Ok(results
            .iter()
            .zip(&budgets)
            .map(|(r, b)| {
                let mut notes = model.notes.clone();
                if compressor.is_some() {
                    notes.extend(b.cap_note(&lengths).map(|n| warn_once(&n)));
                }
                let notes = join_notes(notes.iter().map(String::as_str));
                let mut rows = r.rows(&info);
                for row in &mut rows {
                    row.notes = notes.clone();
                }
                CellOutput {
                    rows,
                    examples: example_scores(r),
                }
            })
            .collect())
    }
}

/// Every example's `(metric, value)` scores of one evaluation, in long format (the runner
/// stamps the cell id).
fn example_scores(result: &EvalResult) -> Vec<ExampleScore> {
    result
        .predictions
        .iter()
        .flat_map(|p| {
            p.scores.iter().map(|(metric, value)| ExampleScore {
                cell_id: String::new(),
                example: p.id.clone(),
                metric: metric.clone(),
                value: *value,
            })
        })
        .collect()
}

/// Follows the trainer's `metrics.jsonl` to drive a progress bar (the trainer's own bar is
/// off so that it does not fight the runner's bars).
fn follow_metrics(
    path: PathBuf,
    pb: ProgressBar,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Some(last) = text
                    .lines()
                    .rev()
                    .find_map(|l| serde_json::from_str::<StepLog>(l).ok())
                {
                    pb.set_position(last.step as u64);
                    pb.set_message(format!(
                        "loss {:.3} | {:.0} tok/s",
                        last.loss, last.tokens_per_second
                    ));
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    })
}

impl CellExecutor for KvcatExecutor {
    fn train(
        &mut self,
        job: &TrainJob,
        init: Option<&Path>,
        out_dir: &Path,
        progress: &ProgressBar,
    ) -> Result<()> {
        let cache = self
            .data_cache
            .clone()
            .or_else(|| out_dir.parent().map(|p| p.join("data-cache")))
            .unwrap_or_else(|| PathBuf::from("data-cache"));
        let cfg = train_config(&self.manifest, job, init, &cache)?;
        progress.set_length(cfg.steps as u64);
        // Training may use the memory the loaded model holds.
        self.loaded = None;
        self.prepared.clear();
        let stop = Arc::new(AtomicBool::new(false));
        let follower = follow_metrics(
            out_dir.join("metrics.jsonl"),
            progress.clone(),
            stop.clone(),
        );
        let opts = TrainRunOptions {
            progress: false,
            resume: true,
            stop_after: None,
        };
        let result = train(&cfg, out_dir, &opts);
        stop.store(true, Ordering::Relaxed);
        let _ = follower.join();
        let summary = result?;
        if summary.interrupted {
            return Err(Error::invalid(format!(
                "training {} stopped early",
                job.label
            )));
        }
        tracing::info!(
            "trained {}: {} steps, {:.0} tok/s, held-out NLL {:?} → {:?}",
            job.label,
            summary.steps,
            summary.tokens_per_second,
            summary.init_eval.map(|e| e.full_nll),
            summary.final_eval.map(|e| e.full_nll)
        );
        Ok(())
    }

    fn evaluate(&mut self, ctx: &CellContext) -> Result<CellOutput> {
        let mut rows = self.eval_group(std::slice::from_ref(ctx))?;
        rows.pop().ok_or_else(|| Error::invalid("no result"))
    }

    fn evaluate_group(&mut self, ctxs: &[CellContext]) -> Vec<Result<CellOutput>> {
        match self.eval_group(ctxs) {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(e) => {
                let msg = e.to_string();
                ctxs.iter()
                    .map(|_| Err(Error::invalid(msg.clone())))
                    .collect()
            }
        }
    }

    fn analyze(
        &mut self,
        m: &Manifest,
        spec: &AnalyzeSpec,
        name: &str,
        weights: &Path,
    ) -> Result<Vec<ProfileRow>> {
        let task = m
            .task
            .iter()
            .find(|t| t.name == spec.task)
            .ok_or_else(|| Error::invalid(format!("analyze: no [[task]] `{}`", spec.task)))?;
        let comps =
            spec.compressors
                .iter()
                .map(|n| {
                    let c = m.compressor.iter().find(|c| &c.name == n).ok_or_else(|| {
                        Error::invalid(format!("analyze: no [[compressor]] `{n}`"))
                    })?;
                    Ok((n.clone(), build_compressor(&c.name, &c.params)?))
                })
                .collect::<Result<Vec<_>>>()?;
        let model = self.model(weights)?;
        let tok = model.tokenizer.as_ref().expect("checked at load");
        let built = build_task(&task.name, &task.params)?;
        check_task_fits(built.as_ref(), model)?;
        let examples = built.examples(tok, spec.n, task.seed)?;
        let opts = EvalOptions {
            add_bos: true,
            seed: m.seed,
            ..Default::default()
        };
        let prepared = prepare(model, tok, &examples, &opts)?;
        let profile = ProfileSpec {
            budgets: &spec.budgets,
            compressors: &comps,
            seed: m.seed,
        };
        profile_model(model, name, &prepared, &profile)
    }
}
