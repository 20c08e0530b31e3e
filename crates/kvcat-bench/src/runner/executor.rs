//! The seam between the runner and the work it orchestrates: a [`CellExecutor`] trains one
//! checkpoint and evaluates one cell. The runner owns everything else (order, caching,
//! durability, shards, progress), so its logic is tested with a fake executor and the real
//! one ([`super::kvcat_executor::KvcatExecutor`]) only wires training and evaluation in.

use super::grid::Cell;
use super::jobs::{Checkpoint, TrainJob};
use super::manifest::{AnalyzeSpec, Manifest, PluginSpec, TaskSpec, REFERENCE_COMPRESSOR};
use crate::analyze::table::ProfileRow;
use crate::results::{ExampleScore, ResultRow};
use indicatif::ProgressBar;
use kvcat_core::registry::params_string;
use kvcat_core::Result;
use std::path::Path;

/// Everything an executor needs to evaluate one cell.
pub struct CellContext<'a> {
    pub manifest: &'a Manifest,
    pub run_id: &'a str,
    pub cell: &'a Cell,
    pub checkpoint: &'a Checkpoint,
    /// The checkpoint's weights: an HF directory or GGUF file.
    pub weights: &'a Path,
    pub git_rev: &'a str,
}

impl CellContext<'_> {
    pub fn task(&self) -> &TaskSpec {
        &self.manifest.task[self.cell.task]
    }
    /// The compressor, or `None` for the uncompressed reference.
    pub fn compressor(&self) -> Option<&PluginSpec> {
        self.cell.compressor.map(|k| &self.manifest.compressor[k])
    }
    /// Stamps the cell's identity columns (run, cell, model, policy, compressor, budget,
    /// task, seed, build revision, kvcat version) onto a row, overwriting whatever the
    /// executor put there. Measured columns and `notes` are the executor's.
    pub fn stamp(&self, row: &mut ResultRow) {
        let task = self.task();
        row.run_id = self.run_id.to_string();
        row.cell_id = self.cell.id.clone();
        row.model = format!("{}@{}", self.checkpoint.model, self.checkpoint.id);
        row.policy = self.checkpoint.policy.clone();
        row.policy_params = params_string(&self.checkpoint.policy_params);
        match self.compressor() {
            Some(c) => {
                row.compressor = c.name.clone();
                row.compressor_params = params_string(&c.params);
            }
            None => {
                row.compressor = REFERENCE_COMPRESSOR.to_string();
                row.compressor_params = String::new();
            }
        }
        row.budget = self.cell.budget.to_string();
        row.task = task.name.clone();
        row.task_params = params_string(&task.params);
        row.query_aware = task.query_aware;
        row.seed = task.seed;
        row.git_rev = self.git_rev.to_string();
        row.kvcat_version = crate::results::KVCAT_VERSION.to_string();
    }
}

/// What evaluating one cell produced: one row per metric, and every example's scores (the
/// report pairs them across policies). The runner stamps the cell id on both.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CellOutput {
    pub rows: Vec<ResultRow>,
    /// Per-example scores (may be empty: the report then has no paired statistics).
    pub examples: Vec<ExampleScore>,
}

impl From<Vec<ResultRow>> for CellOutput {
    fn from(rows: Vec<ResultRow>) -> CellOutput {
        CellOutput {
            rows,
            examples: Vec::new(),
        }
    }
}

/// Trains checkpoints and evaluates cells for the runner.
pub trait CellExecutor {
    /// Trains `job` into the empty directory `out_dir`, starting from `init` (an HF directory
    /// or GGUF file; `None` for random initialisation). `progress` is a bar the executor may
    /// size and advance (training steps).
    fn train(
        &mut self,
        job: &TrainJob,
        init: Option<&Path>,
        out_dir: &Path,
        progress: &ProgressBar,
    ) -> Result<()>;

    /// Evaluates one cell, returning one row per metric. The runner stamps the identity
    /// columns; the executor fills the measured ones (metric, value, stderr, achieved budget,
    /// bytes, n, seconds, memory, device, dtype), and the per-example scores.
    fn evaluate(&mut self, ctx: &CellContext) -> Result<CellOutput>;

    /// Evaluates consecutive cells that share checkpoint, task and compressor and differ
    /// only in budget, so an executor can prefill each example once for all budgets.
    /// Returns one outcome per cell, in order. The default evaluates them one by one.
    fn evaluate_group(&mut self, ctxs: &[CellContext]) -> Vec<Result<CellOutput>> {
        ctxs.iter().map(|c| self.evaluate(c)).collect()
    }

    /// Profiles the checkpoint at `weights` per `spec` ([`crate::analyze`]), its rows named
    /// `name`. The default profiles nothing (executors that do not load models).
    fn analyze(
        &mut self,
        _m: &Manifest,
        _spec: &AnalyzeSpec,
        _name: &str,
        _weights: &Path,
    ) -> Result<Vec<ProfileRow>> {
        Ok(Vec::new())
    }
}
