//! The `--dry-run` time estimate.

use super::grid::{Cell, Grid};
use super::manifest::Manifest;
use std::path::Path;

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

/// Estimates the time to run `cells` of `grid`.
pub fn estimate(_m: &Manifest, _grid: &Grid, _cells: &[&Cell], _checkpoints: &Path) -> Estimate {
    Estimate {
        basis: "no estimate yet".into(),
        ..Default::default()
    }
}
