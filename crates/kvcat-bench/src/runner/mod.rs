//! The bench runner: a TOML manifest crossing checkpoints (model × masking policy) with
//! compressors × budgets × tasks, run into a durable, resumable, shardable results directory.
//!
//! - [`manifest`]: schema, span-aware parsing, validation against the registries.
//! - [`jobs`], [`grid`]: the training jobs and checkpoints a manifest plans, and its
//!   content-hashed cells; [`job_config`]: a job's table as a [`crate::train::TrainConfig`].
//! - [`shard`]: deterministic balanced slices (`--shard i/n`, Slurm arrays).
//! - [`store`]: `manifest.toml`, `results.csv` and the `cells.done` journal, under the
//!   directory's writer lock.
//! - [`failures`]: `failed.csv`, the cells that failed and are retried on the next run.
//! - [`executor`]: the [`CellExecutor`] trait that trains a checkpoint and evaluates a cell,
//!   and its contexts; [`kvcat_executor`] is its implementation over `kvcat_bench::train`
//!   and `kvcat_bench::evaluate`.
//! - [`merge`]: joining shard directories.
//! - [`estimate`]: the `--dry-run` time estimate.

mod analysis;
pub mod estimate;
pub mod executor;
pub mod failures;
pub mod grid;
pub mod job_config;
pub mod jobs;
pub mod kvcat_executor;
mod lock;
pub mod manifest;
pub mod merge;
pub mod shard;
pub mod store;

/// The old name of [`jobs`].
#[deprecated(note = "renamed to `runner::jobs`")]
pub mod checkpoints {
    pub use super::jobs::*;
}

/// The old name of [`job_config`].
#[deprecated(note = "renamed to `runner::job_config`")]
pub mod training {
    pub use super::job_config::*;
}

/// The old name of [`crate::runner::kvcat_executor`].
#[deprecated(note = "renamed to `runner::kvcat_executor::KvcatExecutor`")]
pub mod real {
    /// The old name of [`crate::runner::kvcat_executor::KvcatExecutor`].
    pub type RealExecutor = super::kvcat_executor::KvcatExecutor;
}

/// The manifest's `device` and `dtype` enums, shared with [`crate::train::TrainConfig`].
pub use crate::runtime_spec;

pub use executor::{CellContext, CellExecutor, CellOutput};
pub use grid::{Cell, Grid};
pub use manifest::Manifest;
pub use shard::Shard;
pub use store::ResultStore;

use failures::FailureLog;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use jobs::{Init, Weights};
use kvcat_core::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How to run a manifest.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The results directory.
    pub out: PathBuf,
    /// The checkpoint cache (default `<out>/checkpoints`).
    pub checkpoints: PathBuf,
    /// Run only this slice of the grid.
    pub shard: Option<Shard>,
    /// Stop after running this many cells (already finished cells do not count).
    pub max_cells: Option<usize>,
    /// Train the checkpoints this shard needs, then stop.
    pub train_only: bool,
    /// Draw progress bars (they hide themselves when stderr is not a terminal).
    pub progress: bool,
}

impl BenchOptions {
    /// Defaults for a results directory: checkpoints under it, no shard, progress on.
    pub fn new(out: impl Into<PathBuf>) -> BenchOptions {
        let out = out.into();
        BenchOptions {
            checkpoints: out.join("checkpoints"),
            out,
            shard: None,
            max_cells: None,
            train_only: false,
            progress: true,
        }
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct BenchSummary {
    pub run_id: String,
    pub grid_cells: usize,
    pub shard_cells: usize,
    /// Cells of this shard that were already finished.
    pub skipped: usize,
    /// Cells run now.
    pub ran: usize,
    /// Rows written now.
    pub rows: usize,
    /// Cells that failed, with their error.
    pub failed: Vec<(String, String)>,
    /// Cells that `failed.csv` listed as failed when this run started (all are retried).
    pub previously_failed: usize,
    /// Training jobs run now, and reused from the cache.
    pub trained: usize,
    pub reused: usize,
    /// Whether `max_cells` stopped the run early.
    pub stopped_early: bool,
    /// Profile directories the `[analyze]` step wrote now (`<out>/analyze/`).
    pub analyzed: usize,
    pub seconds: f64,
    pub out: PathBuf,
}

impl BenchSummary {
    /// Cells of this shard still missing.
    pub fn remaining(&self) -> usize {
        self.shard_cells - self.skipped - self.ran
    }
}

/// The cells of `grid` that `shard` covers (all of them without a shard).
pub fn shard_cells(grid: &Grid, shard: Option<Shard>) -> &[Cell] {
    match shard {
        Some(s) => &grid.cells[s.range(grid.cells.len())],
        None => &grid.cells,
    }
}

/// The run's cache of trained weights: which training jobs are done (and where their
/// weights lie under `root`), which failed, and how many were trained or reused.
struct CheckpointCache<'a> {
    grid: &'a Grid,
    root: PathBuf,
    done: Vec<Option<PathBuf>>,
    failed: Vec<Option<String>>,
    trained: usize,
    reused: usize,
}

impl<'a> CheckpointCache<'a> {
    /// An empty cache state for `grid`'s jobs, cached under `root`.
    fn new(grid: &'a Grid, root: &Path) -> CheckpointCache<'a> {
        CheckpointCache {
            grid,
            root: root.to_path_buf(),
            done: vec![None; grid.train_jobs.len()],
            failed: vec![None; grid.train_jobs.len()],
            trained: 0,
            reused: 0,
        }
    }

    /// The trained directory of job `j`, training it (and its parents) if it is not cached.
    fn ensure_job(
        &mut self,
        j: usize,
        exec: &mut dyn CellExecutor,
        bars: &MultiProgress,
        progress: bool,
    ) -> Result<PathBuf> {
        if let Some(known) = self.known(j) {
            return known;
        }
        match self.train_job(j, exec, bars, progress) {
            Ok(d) => {
                self.trained += 1;
                self.done[j] = Some(d.clone());
                Ok(d)
            }
            Err(e) => {
                let msg = format!("training {} failed: {e}", self.grid.train_jobs[j].label);
                self.failed[j] = Some(msg.clone());
                Err(Error::invalid(msg))
            }
        }
    }

    /// Job `j`'s outcome when already known: trained or failed earlier in this run, or its
    /// checkpoint found in the cache (counted as reused). `None`: it must be trained.
    fn known(&mut self, j: usize) -> Option<Result<PathBuf>> {
        if let Some(p) = &self.done[j] {
            return Some(Ok(p.clone()));
        }
        if let Some(e) = &self.failed[j] {
            return Some(Err(Error::invalid(e.clone())));
        }
        let job = &self.grid.train_jobs[j];
        let dir = self.root.join(&job.id);
        if !dir.is_dir() {
            return None;
        }
        tracing::info!("reusing checkpoint {} for {}", dir.display(), job.label);
        self.reused += 1;
        self.done[j] = Some(dir.clone());
        Some(Ok(dir))
    }

    /// Trains job `j` (its parent first) under the job's lock into a staging directory
    /// `<id>.partial`, then renames it to `<id>`. Another process that finished the job
    /// while this one waited for the lock is taken at its word.
    fn train_job(
        &mut self,
        j: usize,
        exec: &mut dyn CellExecutor,
        bars: &MultiProgress,
        progress: bool,
    ) -> Result<PathBuf> {
        let grid = self.grid;
        let job = &grid.train_jobs[j];
        let dir = self.root.join(&job.id);
        let init = match &job.init {
            Init::Scratch => None,
            Init::Path(p) => Some(PathBuf::from(p)),
            Init::Job(k) => Some(self.ensure_job(*k, exec, bars, progress)?),
        };
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let Some(_lock) = lock::JobLock::acquire(&self.root, &job.id, &dir, &job.label)? else {
            // Another process finished this checkpoint while we waited.
            return Ok(dir);
        };
        // A stable staging directory: an interrupted training resumes from its last
        // saved step on the next run.
        let tmp = self.root.join(format!("{}.partial", job.id));
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let _span = tracing::info_span!("train", job = %job.label).entered();
        let pb = training_bar(bars, progress, &job.label);
        Plain::new(progress).line(format!("training {} …", job.label));
        let t0 = Instant::now();
        let trained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            exec.train(job, init.as_deref(), &tmp, &pb)
        }))
        .unwrap_or_else(|p| Err(Error::invalid(format!("panicked: {}", panic_message(p)))));
        pb.finish_and_clear();
        bars.remove(&pb);
        trained?;
        job_config::write_job_record(job, &tmp)?;
        std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        let done = format!(
            "trained {} in {:.0}s → {}",
            job.label,
            t0.elapsed().as_secs_f64(),
            dir.display()
        );
        Plain::new(progress).line(&done);
        let _ = bars.println(done);
        Ok(dir)
    }

    /// The weights of checkpoint `c`.
    fn weights(
        &mut self,
        c: usize,
        exec: &mut dyn CellExecutor,
        bars: &MultiProgress,
        progress: bool,
    ) -> Result<PathBuf> {
        match &self.grid.checkpoints[c].weights {
            Weights::Path(p) => Ok(PathBuf::from(p)),
            Weights::Job(j) => self.ensure_job(*j, exec, bars, progress),
        }
    }
}

/// Progress lines for logs: when stderr is not a terminal (Slurm, CI, pipes) the bars hide
/// themselves, so plain lines with counts and an ETA are printed instead.
struct Plain {
    on: bool,
    start: Instant,
}

fn process_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl Plain {
    fn new(progress: bool) -> Plain {
        use std::io::IsTerminal;
        Plain {
            on: progress && !std::io::stderr().is_terminal(),
            start: process_start(),
        }
    }
    fn line(&self, msg: impl std::fmt::Display) {
        if self.on {
            eprintln!("[{:>7.1}s] {msg}", self.start.elapsed().as_secs_f64());
        }
    }
    fn cells(&self, done: usize, total: usize, label: &str) {
        if self.on {
            let el = self.start.elapsed().as_secs_f64();
            let eta = if done > 0 {
                el / done as f64 * (total - done) as f64
            } else {
                f64::NAN
            };
            self.line(format!("cells {done}/{total} (ETA {eta:.0}s): {label}"));
        }
    }
}

/// A training progress bar for job `label` (hidden without `progress`).
fn training_bar(bars: &MultiProgress, progress: bool, label: &str) -> ProgressBar {
    let pb = if progress {
        bars.add(ProgressBar::new(0))
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(train_style());
    pb.set_prefix(format!("train {label}"));
    pb
}

fn train_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:.bold} [{bar:30.yellow/white}] {pos}/{len} steps {per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

fn cell_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} cells {elapsed_precise} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// A short label of a cell, for progress and errors.
pub fn cell_label(m: &Manifest, grid: &Grid, cell: &Cell) -> String {
    let ck = &grid.checkpoints[cell.checkpoint];
    let comp = cell
        .compressor
        .map(|k| m.compressor[k].name.as_str())
        .unwrap_or(manifest::REFERENCE_COMPRESSOR);
    let seed = ck
        .train_seed
        .map(|s| format!("/seed{s}"))
        .unwrap_or_default();
    format!(
        "{}/{}{seed} {} {}@{}",
        ck.model, ck.policy, m.task[cell.task].name, comp, cell.budget
    )
}

/// Runs (the shard of) a manifest into `opts.out`: trains or reuses every checkpoint the
/// shard needs, evaluates every unfinished cell in grid order, and appends each finished
/// cell durably. A failed cell (an error, or a panic inside the executor such as libtorch's
/// CUDA out-of-memory) is reported, recorded in `failed.csv` with its message, and left
/// unfinished: the sweep goes on, and a re-run retries it.
pub fn run_bench(
    m: &Manifest,
    opts: &BenchOptions,
    exec: &mut dyn CellExecutor,
) -> Result<BenchSummary> {
    let t0 = Instant::now();
    let grid = Grid::expand(m)?;
    let mut run = BenchRun::open(m, opts, &grid)?;
    let todo = run.todo();
    run.summary.skipped = run.summary.shard_cells - todo.len();
    let mut ckpts = CheckpointCache::new(&grid, &opts.checkpoints);
    if opts.train_only {
        run.train_needed(&todo, &mut ckpts, exec);
    } else {
        run.evaluate_cells(&todo, &mut ckpts, exec)?;
        if let Some(spec) = m.analyze.as_ref().filter(|_| !run.summary.stopped_early) {
            run.summary.analyzed = analysis::analyze_checkpoints(
                m,
                spec,
                &opts.out,
                &mut ckpts,
                exec,
                &run.bars,
                opts.progress,
            )?;
        }
    }
    run.failures.compact(|id| run.store.is_done(id))?;
    run.summary.trained = ckpts.trained;
    run.summary.reused = ckpts.reused;
    run.summary.seconds = t0.elapsed().as_secs_f64();
    Ok(run.summary)
}

/// One run of a manifest's shard: its stores, progress output and tally.
struct BenchRun<'g> {
    m: &'g Manifest,
    opts: &'g BenchOptions,
    grid: &'g Grid,
    run_id: String,
    git_rev: String,
    store: ResultStore,
    failures: FailureLog,
    summary: BenchSummary,
    bars: MultiProgress,
    plain: Plain,
    /// Checkpoints whose unavailability was already said (once each, not once per cell).
    announced: std::collections::HashSet<usize>,
}

impl<'g> BenchRun<'g> {
    /// Opens the results directory (its store and failure log) for `grid`'s shard.
    fn open(m: &'g Manifest, opts: &'g BenchOptions, grid: &'g Grid) -> Result<BenchRun<'g>> {
        let run_id = m.run_id()?;
        let store = ResultStore::open(&opts.out, m)?;
        let (failures, previously_failed) = FailureLog::open(&opts.out, |id| store.is_done(id))?;
        let summary = BenchSummary {
            previously_failed: previously_failed.len(),
            run_id: run_id.clone(),
            grid_cells: grid.cells.len(),
            shard_cells: shard_cells(grid, opts.shard).len(),
            out: opts.out.clone(),
            ..Default::default()
        };
        let bars = MultiProgress::with_draw_target(if opts.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Ok(BenchRun {
            m,
            opts,
            grid,
            run_id,
            git_rev: git_rev().to_string(),
            store,
            failures,
            summary,
            bars,
            plain: Plain::new(opts.progress),
            announced: Default::default(),
        })
    }

    /// The shard's cells not yet finished, in grid order.
    fn todo(&self) -> Vec<&'g Cell> {
        shard_cells(self.grid, self.opts.shard)
            .iter()
            .filter(|c| !self.store.is_done(&c.id))
            .collect()
    }

    /// `--train-only`: trains (or reuses) the checkpoints `todo` needs; a failed one is
    /// recorded in the summary under the checkpoint's id.
    fn train_needed(
        &mut self,
        todo: &[&Cell],
        ckpts: &mut CheckpointCache,
        exec: &mut dyn CellExecutor,
    ) {
        let mut needed: Vec<usize> = todo.iter().map(|c| c.checkpoint).collect();
        needed.dedup();
        for c in needed {
            if let Err(e) = ckpts.weights(c, exec, &self.bars, self.opts.progress) {
                let id = self.grid.checkpoints[c].id.clone();
                self.summary.failed.push((id, e.to_string()));
            }
        }
    }

    /// Evaluates `todo` group by group (consecutive cells of one checkpoint, task and
    /// compressor), up to `max_cells`.
    fn evaluate_cells(
        &mut self,
        todo: &[&Cell],
        ckpts: &mut CheckpointCache,
        exec: &mut dyn CellExecutor,
    ) -> Result<()> {
        let pb = self.bars.add(ProgressBar::new(todo.len() as u64));
        pb.set_style(cell_style());
        pb.set_prefix(self.m.name.clone());
        pb.enable_steady_tick(Duration::from_millis(500));
        let mut rest = todo;
        while !rest.is_empty() {
            let Some(allowance) = self.allowance() else {
                self.summary.stopped_early = true;
                break;
            };
            let group = next_group(rest, allowance);
            rest = &rest[group.len()..];
            let label = cell_label(self.m, self.grid, group[0]);
            pb.set_message(if group.len() > 1 {
                format!("{label} (+{} budgets)", group.len() - 1)
            } else {
                label
            });
            self.run_group(group, ckpts, exec, &pb)?;
            self.plain.cells(
                self.summary.ran + self.summary.failed.len(),
                todo.len(),
                &cell_label(self.m, self.grid, group[group.len() - 1]),
            );
        }
        pb.finish_and_clear();
        Ok(())
    }

    /// How many more cells `max_cells` allows (`None`: none, stop).
    fn allowance(&self) -> Option<usize> {
        let attempted = self.summary.ran + self.summary.failed.len();
        match self.opts.max_cells {
            Some(k) if attempted >= k => None,
            Some(k) => Some(k - attempted),
            None => Some(usize::MAX),
        }
    }

    /// Evaluates one group of cells on their checkpoint (trained or reused now) and records
    /// each cell's outcome.
    fn run_group(
        &mut self,
        group: &[&Cell],
        ckpts: &mut CheckpointCache,
        exec: &mut dyn CellExecutor,
        pb: &ProgressBar,
    ) -> Result<()> {
        let first = group[0];
        let weights = ckpts.weights(first.checkpoint, exec, &self.bars, self.opts.progress);
        let outcomes = match &weights {
            Err(e) => self.unavailable(first.checkpoint, group.len(), e),
            Ok(w) => self.evaluate_group(group, w, exec),
        };
        for (cell, outcome) in group.iter().zip(outcomes) {
            self.record(cell, outcome, weights.is_ok())?;
            pb.inc(1);
        }
        Ok(())
    }

    /// Every cell's error when checkpoint `c` could not be had (said once per checkpoint).
    fn unavailable(&mut self, c: usize, cells: usize, e: &Error) -> Vec<Result<CellOutput>> {
        let ck = &self.grid.checkpoints[c];
        if self.announced.insert(c) {
            say(
                &self.bars,
                &self.plain,
                &format!("{e}; its cells are marked failed"),
            );
        }
        let msg = format!("checkpoint {}/{} unavailable: {e}", ck.model, ck.policy);
        (0..cells)
            .map(|_| Err(Error::invalid(msg.clone())))
            .collect()
    }

    /// Evaluates a group of cells on the checkpoint at `weights`, inside a `cell` span.
    fn evaluate_group(
        &self,
        group: &[&Cell],
        weights: &Path,
        exec: &mut dyn CellExecutor,
    ) -> Vec<Result<CellOutput>> {
        let _span = tracing::info_span!(
            "cell",
            id = %group[0].id,
            label = %cell_label(self.m, self.grid, group[0]),
            budgets = group.len()
        )
        .entered();
        let ctxs: Vec<CellContext> = group
            .iter()
            .map(|cell| CellContext {
                manifest: self.m,
                run_id: &self.run_id,
                cell,
                checkpoint: &self.grid.checkpoints[cell.checkpoint],
                weights,
                git_rev: &self.git_rev,
            })
            .collect();
        evaluate_contexts(exec, &ctxs)
    }

    /// Appends a finished cell durably, or reports and records a failed one (`say_failure`:
    /// also print it; an unavailable checkpoint was already said).
    fn record(
        &mut self,
        cell: &Cell,
        outcome: Result<CellOutput>,
        say_failure: bool,
    ) -> Result<()> {
        let label = cell_label(self.m, self.grid, cell);
        match outcome {
            Ok(out) => {
                self.store.append_cell(&cell.id, &out.rows, &out.examples)?;
                self.summary.ran += 1;
                self.summary.rows += out.rows.len();
            }
            Err(e) => {
                if say_failure {
                    let msg = format!("cell {} ({label}) failed: {e}", cell.id);
                    say(&self.bars, &self.plain, &msg);
                }
                self.failures.record(&cell.id, &label, &e.to_string())?;
                self.summary
                    .failed
                    .push((cell.id.clone(), format!("{label}: {e}")));
            }
        }
        Ok(())
    }
}

/// The next group at the head of `todo`: its first cell and the cells after it of the same
/// checkpoint, task and compressor (other budgets), at most `allowance` (at least one).
fn next_group<'t, 'g>(todo: &'t [&'g Cell], allowance: usize) -> &'t [&'g Cell] {
    let first = todo[0];
    let n = todo
        .iter()
        .take(allowance.max(1))
        .take_while(|c| {
            c.checkpoint == first.checkpoint
                && c.task == first.task
                && c.compressor == first.compressor
        })
        .count();
    &todo[..n]
}

/// Prints a line once, above the bars (terminal) or as a plain log line (otherwise).
fn say(bars: &MultiProgress, plain: &Plain, msg: &str) {
    let _ = bars.println(msg);
    plain.line(msg);
    tracing::error!("{msg}");
}

/// The text of a panic payload.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => match p.downcast::<&str>() {
            Ok(s) => s.to_string(),
            Err(_) => "unknown panic".into(),
        },
    }
}

/// Evaluates a group of cells, one outcome per cell, with identity columns stamped. A panic
/// inside the executor (tch turns libtorch exceptions such as CUDA out-of-memory into panics)
/// becomes every cell's error instead of ending the sweep.
fn evaluate_contexts(exec: &mut dyn CellExecutor, ctxs: &[CellContext]) -> Vec<Result<CellOutput>> {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exec.evaluate_group(ctxs)));
    let mut outs = match run {
        Ok(outs) => outs,
        Err(payload) => {
            let msg = format!("panicked: {}", panic_message(payload));
            ctxs.iter()
                .map(|_| Err(Error::invalid(msg.clone())))
                .collect()
        }
    };
    outs.resize_with(ctxs.len(), || {
        Err(Error::invalid("the executor returned no outcome"))
    });
    outs.into_iter()
        .zip(ctxs)
        .map(|(o, ctx)| {
            let mut out = o?;
            if out.rows.is_empty() {
                return Err(Error::invalid("the evaluation produced no rows"));
            }
            for r in &mut out.rows {
                ctx.stamp(r);
            }
            for e in &mut out.examples {
                e.cell_id = ctx.cell.id.clone();
            }
            Ok(out)
        })
        .collect()
}

/// The revision kvcat was built from (embedded by `build.rs`), which every row records.
pub fn git_rev() -> &'static str {
    env!("KVCAT_BUILD_REV")
}

/// The default checkpoint cache of a results directory.
pub fn default_checkpoints(out: &Path) -> PathBuf {
    out.join("checkpoints")
}
