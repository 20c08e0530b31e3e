//! The bench runner: a TOML manifest crossing checkpoints (model × masking policy) with
//! compressors × budgets × tasks, run into a durable, resumable, shardable results directory.
//!
//! - [`manifest`]: schema, span-aware parsing, validation against the registries.
//! - [`checkpoints`], [`grid`]: training jobs, checkpoints and content-hashed cells.
//! - [`shard`]: deterministic balanced slices (`--shard i/n`, Slurm arrays).
//! - [`store`]: `manifest.toml`, `results.csv` and the `cells.done` journal, under the
//!   directory's writer lock.
//! - [`failures`]: `failed.csv`, the cells that failed and are retried on the next run.
//! - [`executor`]: the trait that trains a checkpoint and evaluates a cell; [`real`] is the
//!   implementation over `kvcat_bench::train` and `kvcat_bench::evaluate`.
//! - [`merge`]: joining shard directories.
//! - [`estimate`]: the `--dry-run` time estimate.

mod analysis;
pub mod checkpoints;
pub mod estimate;
pub mod executor;
pub mod failures;
pub mod grid;
mod lock;
pub mod manifest;
pub mod merge;
pub mod real;
pub mod shard;
pub mod store;
pub mod training;

pub use executor::{CellContext, CellExecutor, CellOutput};
pub use grid::{Cell, Grid};
pub use manifest::Manifest;
pub use shard::Shard;
pub use store::ResultStore;

use checkpoints::{Init, Weights};
use failures::FailureLog;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
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

/// Checkpoint cache state for one run.
struct Checkpoints<'a> {
    grid: &'a Grid,
    root: PathBuf,
    done: Vec<Option<PathBuf>>,
    failed: Vec<Option<String>>,
    trained: usize,
    reused: usize,
}

impl Checkpoints<'_> {
    /// The trained directory of job `j`, training it (and its parents) if it is not cached.
    fn ensure_job(
        &mut self,
        j: usize,
        exec: &mut dyn CellExecutor,
        bars: &MultiProgress,
        progress: bool,
    ) -> Result<PathBuf> {
        if let Some(p) = &self.done[j] {
            return Ok(p.clone());
        }
        if let Some(e) = &self.failed[j] {
            return Err(Error::invalid(e.clone()));
        }
        let job = &self.grid.train_jobs[j];
        let dir = self.root.join(&job.id);
        if dir.is_dir() {
            tracing::info!("reusing checkpoint {} for {}", dir.display(), job.label);
            self.reused += 1;
            self.done[j] = Some(dir.clone());
            return Ok(dir);
        }
        let result = (|| -> Result<PathBuf> {
            let init = match &job.init {
                Init::Scratch => None,
                Init::Path(p) => Some(PathBuf::from(p)),
                Init::Job(k) => Some(self.ensure_job(*k, exec, bars, progress)?),
            };
            std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
            let Some(_lock) = lock::JobLock::acquire(&self.root, &job.id, &dir, &job.label)? else {
                // Another process finished this checkpoint while we waited.
                return Ok(dir.clone());
            };
            // A stable staging directory: an interrupted training resumes from its last
            // saved step on the next run.
            let tmp = self.root.join(format!("{}.partial", job.id));
            std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let pb = if progress {
                bars.add(ProgressBar::new(0))
            } else {
                ProgressBar::hidden()
            };
            pb.set_style(train_style());
            pb.set_prefix(format!("train {}", job.label));
            Plain::new(progress).line(format!("training {} …", job.label));
            let t0 = Instant::now();
            let trained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                exec.train(job, init.as_deref(), &tmp, &pb)
            }))
            .unwrap_or_else(|p| Err(Error::invalid(format!("panicked: {}", panic_message(p)))));
            pb.finish_and_clear();
            bars.remove(&pb);
            trained?;
            training::write_job_record(job, &tmp)?;
            std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
            Plain::new(progress).line(format!(
                "trained {} in {:.0}s → {}",
                job.label,
                t0.elapsed().as_secs_f64(),
                dir.display()
            ));
            let _ = bars.println(format!(
                "trained {} in {:.0}s → {}",
                job.label,
                t0.elapsed().as_secs_f64(),
                dir.display()
            ));
            Ok(dir.clone())
        })();
        match result {
            Ok(d) => {
                self.trained += 1;
                self.done[j] = Some(d.clone());
                Ok(d)
            }
            Err(e) => {
                let msg = format!("training {} failed: {e}", job.label);
                self.failed[j] = Some(msg.clone());
                Err(Error::invalid(msg))
            }
        }
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
    let run_id = m.run_id()?;
    let mut store = ResultStore::open(&opts.out, m)?;
    let cells = shard_cells(&grid, opts.shard);
    let todo: Vec<&Cell> = cells.iter().filter(|c| !store.is_done(&c.id)).collect();
    let (mut failures, previously_failed) = FailureLog::open(&opts.out, |id| store.is_done(id))?;
    let mut summary = BenchSummary {
        previously_failed: previously_failed.len(),
        run_id: run_id.clone(),
        grid_cells: grid.cells.len(),
        shard_cells: cells.len(),
        skipped: cells.len() - todo.len(),
        out: opts.out.clone(),
        ..Default::default()
    };
    let bars = MultiProgress::with_draw_target(if opts.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let mut ckpts = Checkpoints {
        grid: &grid,
        root: opts.checkpoints.clone(),
        done: vec![None; grid.train_jobs.len()],
        failed: vec![None; grid.train_jobs.len()],
        trained: 0,
        reused: 0,
    };

    if opts.train_only {
        let mut needed: Vec<usize> = todo.iter().map(|c| c.checkpoint).collect();
        needed.dedup();
        for c in needed {
            if let Err(e) = ckpts.weights(c, exec, &bars, opts.progress) {
                summary
                    .failed
                    .push((grid.checkpoints[c].id.clone(), e.to_string()));
            }
        }
    } else {
        let plain = Plain::new(opts.progress);
        let pb = bars.add(ProgressBar::new(todo.len() as u64));
        pb.set_style(cell_style());
        pb.set_prefix(m.name.clone());
        pb.enable_steady_tick(Duration::from_millis(500));
        let git_rev = git_rev().to_string();
        let mut announced = std::collections::HashSet::new();
        let mut i = 0;
        while i < todo.len() {
            let allowance = match opts.max_cells {
                Some(k) if summary.ran + summary.failed.len() >= k => {
                    summary.stopped_early = true;
                    break;
                }
                Some(k) => k - summary.ran - summary.failed.len(),
                None => usize::MAX,
            };
            // A group: consecutive cells of one checkpoint, task and compressor.
            let first = todo[i];
            let mut j = i + 1;
            while j < todo.len()
                && j - i < allowance
                && todo[j].checkpoint == first.checkpoint
                && todo[j].task == first.task
                && todo[j].compressor == first.compressor
            {
                j += 1;
            }
            let group = &todo[i..j];
            i = j;
            let label = cell_label(m, &grid, first);
            pb.set_message(if group.len() > 1 {
                format!("{label} (+{} budgets)", group.len() - 1)
            } else {
                label
            });
            let weights = ckpts.weights(first.checkpoint, exec, &bars, opts.progress);
            let outcomes: Vec<Result<CellOutput>> = match &weights {
                Err(e) => {
                    // Said once per checkpoint, not once per cell.
                    let ck = &grid.checkpoints[first.checkpoint];
                    if announced.insert(first.checkpoint) {
                        say(&bars, &plain, &format!("{e}; its cells are marked failed"));
                    }
                    let msg = format!("checkpoint {}/{} unavailable: {e}", ck.model, ck.policy);
                    group
                        .iter()
                        .map(|_| Err(Error::invalid(msg.clone())))
                        .collect()
                }
                Ok(w) => {
                    let ctxs: Vec<CellContext> = group
                        .iter()
                        .map(|cell| CellContext {
                            manifest: m,
                            run_id: &run_id,
                            cell,
                            checkpoint: &grid.checkpoints[cell.checkpoint],
                            weights: w,
                            git_rev: &git_rev,
                        })
                        .collect();
                    evaluate_contexts(exec, &ctxs)
                }
            };
            for (cell, outcome) in group.iter().zip(outcomes) {
                let label = cell_label(m, &grid, cell);
                match outcome {
                    Ok(out) => {
                        store.append_cell(&cell.id, &out.rows, &out.examples)?;
                        summary.ran += 1;
                        summary.rows += out.rows.len();
                    }
                    Err(e) => {
                        if weights.is_ok() {
                            say(
                                &bars,
                                &plain,
                                &format!("cell {} ({label}) failed: {e}", cell.id),
                            );
                        }
                        failures.record(&cell.id, &label, &e.to_string())?;
                        summary
                            .failed
                            .push((cell.id.clone(), format!("{label}: {e}")));
                    }
                }
                pb.inc(1);
            }
            plain.cells(
                summary.ran + summary.failed.len(),
                todo.len(),
                &cell_label(m, &grid, group[group.len() - 1]),
            );
        }
        pb.finish_and_clear();
        if let Some(spec) = m.analyze.as_ref().filter(|_| !summary.stopped_early) {
            summary.analyzed = analysis::analyze_checkpoints(
                m,
                spec,
                &opts.out,
                &mut ckpts,
                exec,
                &bars,
                opts.progress,
            )?;
        }
    }
    failures.compact(|id| store.is_done(id))?;
    summary.trained = ckpts.trained;
    summary.reused = ckpts.reused;
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
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
