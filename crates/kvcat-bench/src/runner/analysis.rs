//! The manifest's `[analyze]` step: after the cells, every checkpoint is profiled
//! ([`crate::analyze`]) and every policy compared with `none` of the same model and training
//! seed, into `<out>/analyze/<model>/`:
//!
//! - `<policy>/`: that checkpoint's `profile.csv`, mass-AUC heatmap and curves;
//! - `<policy>-vs-none/`: both profiles, `compare.csv` (policy − `none`) and the difference
//!   heatmap.
//!
//! A directory is written under a temporary name and renamed when complete, and one that
//! exists is not redone, so an interrupted or repeated run loses nothing and repeats nothing.

use super::executor::CellExecutor;
use super::jobs::Checkpoint;
use super::manifest::{AnalyzeSpec, Manifest, BASELINE_POLICY, BASE_POLICY};
use super::CheckpointCache;
use crate::analyze::table::ProfileRow;
use crate::analyze::write_profile;
use indicatif::MultiProgress;
use kvcat_core::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The directory name of a checkpoint's profile: its policy label (`:` as `-`), then
/// `-seed<k>` when the manifest crosses training seeds.
fn label(ck: &Checkpoint) -> String {
    let policy = ck.policy.replace(':', "-");
    match ck.train_seed {
        Some(s) => format!("{policy}-seed{s}"),
        None => policy,
    }
}

/// Writes `dir` through `dir.partial` and a rename, unless it exists.
fn write_once(dir: &Path, rows: &[ProfileRow], other: Option<&[ProfileRow]>) -> Result<bool> {
    if dir.exists() {
        return Ok(false);
    }
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    write_profile(&tmp, rows, other)?;
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    Ok(true)
}

/// Profiles every checkpoint of the grid per `spec` and writes the directories above;
/// returns how many were written.
pub(super) fn analyze_checkpoints(
    m: &Manifest,
    spec: &AnalyzeSpec,
    out: &Path,
    ckpts: &mut CheckpointCache,
    exec: &mut dyn CellExecutor,
    bars: &MultiProgress,
    progress: bool,
) -> Result<usize> {
    let grid = ckpts.grid;
    let mut rows: HashMap<usize, Vec<ProfileRow>> = HashMap::new();
    let mut written = 0;
    let dir_of =
        |ck: &Checkpoint, name: &str| -> PathBuf { out.join("analyze").join(&ck.model).join(name) };
    for (c, ck) in grid.checkpoints.iter().enumerate() {
        let own = dir_of(ck, &label(ck));
        let baseline = baseline_of(grid.checkpoints.as_slice(), c);
        let compare = baseline.map(|_| dir_of(ck, &format!("{}-vs-none", label(ck))));
        if own.exists() && compare.as_ref().is_none_or(|d| d.exists()) {
            continue;
        }
        for k in std::iter::once(c).chain(baseline) {
            if !rows.contains_key(&k) {
                let weights = ckpts.weights(k, exec, bars, progress)?;
                let name = format!(
                    "{}/{}",
                    grid.checkpoints[k].model,
                    label(&grid.checkpoints[k])
                );
                rows.insert(k, exec.analyze(m, spec, &name, &weights)?);
            }
        }
        if rows[&c].is_empty() {
            continue; // an executor that does not profile
        }
        written += usize::from(write_once(&own, &rows[&c], None)?);
        if let (Some(b), Some(dir)) = (baseline, compare) {
            written += usize::from(write_once(&dir, &rows[&b], Some(&rows[&c]))?);
        }
    }
    Ok(written)
}

/// The `none` checkpoint of the same model and training seed as checkpoint `c`, unless `c`
/// is one (or `base`).
fn baseline_of(all: &[Checkpoint], c: usize) -> Option<usize> {
    let ck = &all[c];
    if ck.policy == BASELINE_POLICY || ck.policy == BASE_POLICY {
        return None;
    }
    all.iter().position(|o| {
        o.model == ck.model && o.policy == BASELINE_POLICY && o.train_seed == ck.train_seed
    })
}
