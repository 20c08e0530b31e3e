//! The bridge from planned training jobs to [`crate::train`]: each job's table becomes a
//! [`TrainConfig`] (checked when the manifest loads), and its cache id is derived from
//! [`TrainConfig::content_hash`].
//!
//! The runner owns three fields of every job's config: `model.source` (scratch, the model's
//! path, or the parent checkpoint), `policy` (from the `[[policy]]` entry) and, unless the
//! table sets them, `device`, `dtype` and `seed` (from the manifest's top level).

use super::grid::short_hash;
use super::jobs::{Init, TrainJob};
use super::manifest::{Manifest, PolicySpec};
use crate::train::TrainConfig;
use kvcat_core::{Error, Result};
use std::path::Path;

/// The record written into every cached checkpoint directory.
pub const JOB_RECORD: &str = "kvcat-job.toml";

/// Where a job's model starts, as far as building its config is concerned.
pub enum Source<'a> {
    Scratch,
    /// A real path (a file from the manifest, or a trained parent checkpoint).
    Path(&'a Path),
    /// A parent checkpoint that does not exist yet (validation and hashing only).
    Pending,
}

fn cfg_err(label: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        file: format!("training job {label}"),
        field: "train".into(),
        reason: reason.into(),
    }
}

/// Builds and validates the [`TrainConfig`] of a job's table.
pub fn build_config(
    m: &Manifest,
    label: &str,
    table: &toml::Table,
    policy: Option<&PolicySpec>,
    source: Source,
) -> Result<TrainConfig> {
    let mut t = table.clone();
    if let Some(p) = policy {
        if t.contains_key("policy") {
            return Err(cfg_err(
                label,
                "[train] must not set `policy`: name policies in [[policy]] entries",
            ));
        }
        let mut pt = toml::Table::new();
        pt.insert("name".into(), p.name.clone().into());
        pt.insert("params".into(), toml::Value::Table(p.params.clone()));
        t.insert("policy".into(), toml::Value::Table(pt));
    }
    match source {
        Source::Scratch => {
            let model = t
                .entry("model")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(mt) = model.as_table_mut() else {
                return Err(cfg_err(
                    label,
                    "`model` must be a table with `config = {…}`",
                ));
            };
            let src = mt.entry("source").or_insert_with(|| "scratch".into());
            if src.as_str() != Some("scratch") {
                return Err(cfg_err(
                    label,
                    "a `pretrain` table trains from scratch: drop `model.source`, or use `path` in [[model]] to start from a checkpoint",
                ));
            }
        }
        Source::Path(_) | Source::Pending => {
            if t.contains_key("model") {
                return Err(cfg_err(
                    label,
                    "[train] must not set `model`: each continuation starts from its [[model]]",
                ));
            }
            // A pending parent is stood in for by an existing path; only the hash uses it.
            let p = match source {
                Source::Path(p) => p.display().to_string(),
                _ => ".".to_string(),
            };
            let mut mt = toml::Table::new();
            mt.insert("source".into(), p.into());
            t.insert("model".into(), toml::Value::Table(mt));
        }
    }
    t.entry("device")
        .or_insert_with(|| m.device.to_string().into());
    t.entry("dtype")
        .or_insert_with(|| m.dtype.to_string().into());
    t.entry("seed")
        .or_insert_with(|| toml::Value::Integer(m.seed as i64));
    let cfg = TrainConfig::from_table(&t).map_err(|e| Error::Config {
        file: format!("training job {label}"),
        field: match e.path.0.is_empty() {
            true => "train".into(),
            false => e.path.to_string(),
        },
        reason: e.reason,
    })?;
    cfg.validate()
        .map_err(|e| cfg_err(label, format!("{e:#}")))?;
    Ok(cfg)
}

/// The cache id of a job: its parent's id and the content hash of its config with the
/// parent's location and the data cache left out (so the id does not depend on where
/// checkpoints are cached).
pub fn job_id(parent_id: &str, cfg: &TrainConfig) -> String {
    let mut c = cfg.clone();
    if c.model.source != "scratch" {
        c.model.source = "<parent>".into();
    }
    c.data.cache_dir = None;
    short_hash(format!("{parent_id}:{}", c.content_hash()).as_bytes())
}

/// The config to train `job` with, starting from `init` and caching tokenized data in
/// `data_cache` unless the table names a cache.
pub fn train_config(
    m: &Manifest,
    job: &TrainJob,
    init: Option<&Path>,
    data_cache: &Path,
) -> Result<TrainConfig> {
    let source = match (&job.init, init) {
        (Init::Scratch, _) => Source::Scratch,
        (_, Some(p)) => Source::Path(p),
        (_, None) => {
            return Err(Error::invalid(format!(
                "training job {}: no starting checkpoint",
                job.label
            )))
        }
    };
    let mut cfg = build_config(m, &job.label, &job.table, job.policy.as_ref(), source)?;
    if cfg.data.cache_dir.is_none() {
        cfg.data.cache_dir = Some(data_cache.to_path_buf());
    }
    Ok(cfg)
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
