//! The executor over kvcat's own training and evaluation (being integrated).

use super::checkpoints::TrainJob;
use super::executor::{CellContext, CellExecutor};
use crate::results::ResultRow;
use indicatif::ProgressBar;
use kvcat_core::{Error, Result};
use std::path::Path;

/// Trains with `kvcat_bench::train` and evaluates with `kvcat_bench::evaluate`.
pub struct RealExecutor {}

impl RealExecutor {
    /// An executor for `manifest`'s device and dtype.
    pub fn new(_manifest: &super::manifest::Manifest) -> Result<RealExecutor> {
        Ok(RealExecutor {})
    }
}

impl CellExecutor for RealExecutor {
    fn train(
        &mut self,
        job: &TrainJob,
        _init: Option<&Path>,
        _out: &Path,
        _pb: &ProgressBar,
    ) -> Result<()> {
        Err(Error::invalid(format!(
            "training {}: the trainer is not integrated yet",
            job.label
        )))
    }
    fn evaluate(&mut self, _ctx: &CellContext) -> Result<Vec<ResultRow>> {
        Err(Error::invalid("evaluation is not integrated yet"))
    }
}
