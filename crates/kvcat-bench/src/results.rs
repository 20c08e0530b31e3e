//! The result row: one typed CSV row per (checkpoint, policy, compressor, budget, task, metric),
//! in long format. `kvcat eval` and `kvcat bench` both write it; the header is stable.

use serde::{Deserialize, Serialize};

/// One measured value. Field order is the CSV column order; keep it stable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    /// Identifier of the run (bench output directory or eval invocation).
    pub run_id: String,
    /// Content hash of the resolved cell configuration (model, policy, compressor, budget, task).
    pub cell_id: String,
    /// Model source (path, or `scratch:<hash>`) and checkpoint id.
    pub model: String,
    pub policy: String,
    /// Policy params as `k=v,…` in key order.
    pub policy_params: String,
    pub compressor: String,
    pub compressor_params: String,
    /// The budget asked for, as written (`0.5`, `128slots`).
    pub budget: String,
    /// Visible slots over original slots, averaged over examples.
    pub budget_achieved: f64,
    /// Bytes of K and V kept, averaged over examples.
    pub kv_bytes: f64,
    pub task: String,
    pub task_params: String,
    /// Whether the compressor saw the question.
    pub query_aware: bool,
    /// Number of examples.
    pub n: usize,
    pub metric: String,
    pub value: f64,
    /// Standard error of the mean over examples (0 when n = 1).
    pub stderr: f64,
    /// Mean seconds spent compressing one example.
    pub compress_seconds: f64,
    /// Peak resident memory of the process (MiB), or peak CUDA memory on GPU.
    pub peak_memory_mb: f64,
    pub device: String,
    pub dtype: String,
    pub seed: u64,
    pub git_rev: String,
}

impl ResultRow {
    /// An empty row (used to derive the CSV header).
    pub fn example() -> ResultRow {
        ResultRow::default()
    }
}

/// The git revision of the working tree (`git describe --always --dirty`), or `unknown`.
pub fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), or 0 when unknown.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// One example's score on one metric in one cell: a row of `examples.csv`, in long format.
/// The per-cell means of `results.csv` are means of these values (except `ppl`, which is
/// `exp` of the mean `nll`); the report pairs them across policies on the same example.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExampleScore {
    /// The cell the example was evaluated in (as in [`ResultRow::cell_id`]).
    pub cell_id: String,
    /// The example's id, stable across cells of one task.
    pub example: String,
    pub metric: String,
    pub value: f64,
}
