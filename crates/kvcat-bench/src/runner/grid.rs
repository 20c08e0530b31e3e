//! Grid expansion: a resolved manifest becomes training jobs, checkpoints and cells, each with
//! a content-hash id.
//!
//! Cells are ordered checkpoint-major, then task, then the uncompressed reference cell
//! (budget 1.0) followed by every compressor × compressed budget. This order is the order of
//! an unsharded `results.csv`, and `--shard` slices it into contiguous balanced ranges so a
//! shard needs few checkpoints.

use super::jobs::{plan_checkpoints, Checkpoint, TrainJob};
use super::manifest::{Manifest, REFERENCE_COMPRESSOR};
use crate::runtime_spec::DtypeSpec;
use kvcat_core::budget::Budget;
use kvcat_core::{Error, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Hex SHA-256 of `bytes`, shortened to 16 hex digits (64 bits): the id format of cells,
/// checkpoints and runs.
pub fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Content hash of any serialisable value (canonical JSON; tables are key-sorted maps).
pub fn hash_of<T: Serialize>(value: &T) -> Result<String> {
    // An error here must stop the run: hashing an empty string instead would give every
    // such cell the same id.
    let json = serde_json::to_vec(value)
        .map_err(|e| Error::invalid(format!("hashing a cell or checkpoint identity: {e}")))?;
    Ok(short_hash(&json))
}

/// One evaluation: a checkpoint × task × (compressor, budget), or the uncompressed reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// Content hash of the resolved cell configuration.
    pub id: String,
    /// Index into [`Grid::checkpoints`].
    pub checkpoint: usize,
    /// Index into the manifest's tasks.
    pub task: usize,
    /// Index into the manifest's compressors; `None` for the uncompressed reference.
    pub compressor: Option<usize>,
    pub budget: Budget,
}

impl Cell {
    /// Whether this is the uncompressed reference cell of its checkpoint and task.
    pub fn is_reference(&self) -> bool {
        self.compressor.is_none()
    }
}

/// The expanded grid of a manifest.
#[derive(Debug, Clone)]
pub struct Grid {
    pub train_jobs: Vec<TrainJob>,
    pub checkpoints: Vec<Checkpoint>,
    pub cells: Vec<Cell>,
}

#[derive(Serialize)]
struct CellKey<'a> {
    checkpoint: &'a str,
    task: &'a str,
    task_params: &'a toml::Table,
    n: usize,
    task_seed: u64,
    query_aware: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    compress_every: Option<usize>,
    compressor: &'a str,
    compressor_params: Option<&'a toml::Table>,
    budget: String,
    dtype: DtypeSpec,
    seed: u64,
}

impl Grid {
    /// Expands a resolved manifest. Counts: `checkpoints × tasks × (1 + compressors ×
    /// compressed budgets)`, where budget 1.0 is the one shared reference cell.
    pub fn expand(m: &Manifest) -> Result<Grid> {
        let (train_jobs, checkpoints) = plan_checkpoints(m)?;
        let budgets = m.compressed_budgets();
        let mut cells = Vec::new();
        for (ci, ck) in checkpoints.iter().enumerate() {
            for (ti, t) in m.task.iter().enumerate() {
                let mut push = |compressor: Option<usize>, budget: Budget| -> Result<()> {
                    let comp = compressor.map(|k| &m.compressor[k]);
                    let key = CellKey {
                        checkpoint: &ck.id,
                        task: &t.name,
                        task_params: &t.params,
                        n: t.n,
                        task_seed: t.seed,
                        query_aware: t.query_aware,
                        compress_every: t.compress_every,
                        compressor: comp
                            .map(|c| c.name.as_str())
                            .unwrap_or(REFERENCE_COMPRESSOR),
                        compressor_params: comp.map(|c| &c.params),
                        budget: budget.to_string(),
                        dtype: m.dtype,
                        seed: m.seed,
                    };
                    cells.push(Cell {
                        id: hash_of(&key)?,
                        checkpoint: ci,
                        task: ti,
                        compressor,
                        budget,
                    });
                    Ok(())
                };
                push(None, Budget::full())?;
                for k in 0..m.compressor.len() {
                    if !m.compressor[k].crosses(&ck.policy) {
                        continue;
                    }
                    for b in &budgets {
                        push(Some(k), *b)?;
                    }
                }
            }
        }
        Ok(Grid {
            train_jobs,
            checkpoints,
            cells,
        })
    }

    /// The cell with `id`, if any.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.cells.iter().position(|c| c.id == id)
    }
}
