//! `failed.csv`: the cells of a results directory that failed and have not finished since.
//!
//! A cell whose training or evaluation fails (an error, a CUDA out-of-memory, a panic inside
//! libtorch) does not stop the sweep: it gets one line here, with its label and message, and
//! stays unfinished, so a re-run retries exactly the unfinished cells. When the store opens,
//! lines of cells that have finished since are dropped (one atomic rewrite), so the file
//! always lists what is still failed. It is written under the directory's writer lock; a
//! torn last line (a kill mid-append) is ignored.

use super::store::write_atomic;
use kvcat_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The failure log beside `results.csv`.
pub const FAILED_FILE: &str = "failed.csv";

/// One failed attempt at a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedCell {
    pub cell_id: String,
    /// `model/policy task compressor@budget`.
    pub label: String,
    /// The error, on one line.
    pub error: String,
    /// Seconds since the Unix epoch.
    pub time_unix: u64,
    /// The revision kvcat was built from.
    pub git_rev: String,
}

/// Reads the failure log of `dir`: the latest failure of each cell listed (empty when there
/// is none); torn or foreign lines are skipped.
pub fn read_failed(dir: &Path) -> Result<Vec<FailedCell>> {
    let path = dir.join(FAILED_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut rdr = csv::Reader::from_reader(&bytes[..complete]);
    let mut latest: Vec<FailedCell> = Vec::new();
    for f in rdr.deserialize::<FailedCell>().filter_map(|r| r.ok()) {
        latest.retain(|o| o.cell_id != f.cell_id);
        latest.push(f);
    }
    Ok(latest)
}

/// The open failure log of a results directory.
pub struct FailureLog {
    path: PathBuf,
}

fn to_csv(rows: &[FailedCell], header: bool) -> Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(header)
        .from_writer(vec![]);
    if header && rows.is_empty() {
        w.write_record(["cell_id", "label", "error", "time_unix", "git_rev"])
            .map_err(|e| Error::invalid(format!("{FAILED_FILE}: {e}")))?;
    }
    for r in rows {
        w.serialize(r)
            .map_err(|e| Error::invalid(format!("{FAILED_FILE}: {e}")))?;
    }
    w.into_inner()
        .map_err(|e| Error::invalid(format!("{FAILED_FILE}: {e}")))
}

impl FailureLog {
    /// Opens the log of `dir` (whose writer lock the caller holds), keeping only the cells for
    /// which `finished` is false. Returns the log and the cells still failed.
    pub fn open(
        dir: &Path,
        finished: impl Fn(&str) -> bool,
    ) -> Result<(FailureLog, Vec<FailedCell>)> {
        let log = FailureLog {
            path: dir.join(FAILED_FILE),
        };
        let open = log.compact(finished)?;
        Ok((log, open))
    }

    /// Rewrites the log keeping only the cells for which `finished` is false, and returns
    /// them. Always rewritten: this also drops a torn last line before anything is appended.
    /// The runner calls it on open and again when a run ends.
    pub fn compact(&self, finished: impl Fn(&str) -> bool) -> Result<Vec<FailedCell>> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut open = read_failed(dir)?;
        open.retain(|f| !finished(&f.cell_id));
        write_atomic(&self.path, &to_csv(&open, true)?)?;
        Ok(open)
    }

    /// Appends a failure durably (one write, then fsync).
    pub fn record(&mut self, cell_id: &str, label: &str, error: &str) -> Result<()> {
        let row = FailedCell {
            cell_id: cell_id.to_string(),
            label: label.to_string(),
            error: error.split_whitespace().collect::<Vec<_>>().join(" "),
            time_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            git_rev: super::git_rev().to_string(),
        };
        let bytes = to_csv(&[row], false)?;
        let mut f = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        f.write_all(&bytes).map_err(|e| Error::io(&self.path, e))?;
        f.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}
