//! The result row: one typed CSV row per (checkpoint, policy, compressor, budget, task, metric),
//! in long format. `kvcat eval` and `kvcat bench` both write it; the header is stable.
//!
//! New columns are only ever appended at the end, with a serde default, so a `results.csv`
//! written by an older kvcat (whose header is a prefix of today's) still reads: `kvcat report`
//! and `kvcat merge` read it as is, and `kvcat bench` upgrades it in place (one atomic
//! rewrite with the new header, old rows' new columns empty) before appending.
//! Columns added after the first release: `kvcat_version`, `host_peak_rss_mb`, `notes`.

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
    /// On CUDA: the device's peak allocated memory (MiB, libtorch's caching allocator)
    /// during the cell's evaluation; on CPU: the process's peak resident memory (MiB), as in
    /// `host_peak_rss_mb`.
    pub peak_memory_mb: f64,
    pub device: String,
    pub dtype: String,
    pub seed: u64,
    /// The revision kvcat was built from (`git describe --always --dirty` at build time).
    pub git_rev: String,
    /// The kvcat version (`CARGO_PKG_VERSION`).
    #[serde(default)]
    pub kvcat_version: String,
    /// Peak resident memory of the process on the host (MiB, Linux `VmHWM`).
    #[serde(default)]
    pub host_peak_rss_mb: f64,
    /// What kvcat changed or assumed that bears on this row's value (a budget capped to
    /// the context, a config default filled in, …), `; `-separated; empty when nothing.
    #[serde(default)]
    pub notes: String,
}

impl ResultRow {
    /// An empty row (used to derive the CSV header).
    pub fn example() -> ResultRow {
        ResultRow::default()
    }
}

/// The kvcat version recorded in rows.
pub const KVCAT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The revision kvcat was *built* from: `git describe --always --dirty` of its source tree,
/// embedded by `build.rs` (`unknown` when built outside a git tree). Not the current
/// directory's repository: a run started elsewhere still names kvcat's own code.
pub fn git_revision() -> String {
    env!("KVCAT_BUILD_REV").to_string()
}

/// Joins notes into the `notes` column form (`; `-separated, each once, in order).
pub fn join_notes<'a>(notes: impl IntoIterator<Item = &'a str>) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for n in notes {
        let n = n.trim();
        if !n.is_empty() && !seen.contains(&n) {
            seen.push(n);
        }
    }
    seen.join("; ")
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

/// The `peak_memory_mb` of a row evaluated on `device` (`cpu`, `cuda:N`): on CUDA the device's
/// peak allocated memory since the last [`reset_device_peak`] (NaN when it cannot be read),
/// elsewhere the host's peak RSS.
pub fn peak_memory_mb(device: &str) -> f64 {
    match device.strip_prefix("cuda") {
        Some(rest) => {
            let index = rest.trim_start_matches(':').parse::<i32>().unwrap_or(0);
            cuda_memory::peak_allocated_bytes(index)
                .map(|b| b as f64 / (1024.0 * 1024.0))
                .unwrap_or(f64::NAN)
        }
        None => peak_rss_mb(),
    }
}

/// Starts a new peak-memory window on `device` (a no-op off CUDA): the runner calls it before
/// each cell group, so `peak_memory_mb` is that group's peak, not the process's.
pub fn reset_device_peak(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        cuda_memory::reset_peak(i as i32);
    }
}

/// Statistics of libtorch's CUDA caching allocator (what `torch.cuda.max_memory_allocated`
/// reads). tch has no binding for them, so `csrc/cuda_memory.cpp` (built by `build.rs` when
/// the headers are there) reads them through the allocator object, whose address is looked
/// up in the already loaded `libc10_cuda.so`; nothing links against CUDA.
mod cuda_memory {
    #[cfg(kvcat_cuda_mem)]
    mod ffi {
        use std::ffi::{c_int, c_void};
        extern "C" {
            pub fn kvcat_cuda_peak_allocated_bytes(slot: *mut c_void, device: c_int) -> i64;
            pub fn kvcat_cuda_reset_peak(slot: *mut c_void, device: c_int) -> c_int;
        }

        /// `&c10::cuda::CUDACachingAllocator::allocator`, when CUDA is loaded.
        pub fn slot() -> Option<usize> {
            static SLOT: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
            *SLOT.get_or_init(|| {
                // SAFETY: dlopen with RTLD_NOLOAD only returns a handle to a library that is
                // already loaded (never loads one); dlsym reads a NUL-terminated name.
                unsafe {
                    let lib = libc::dlopen(
                        c"libc10_cuda.so".as_ptr(),
                        libc::RTLD_NOW | libc::RTLD_NOLOAD,
                    );
                    if lib.is_null() {
                        return None;
                    }
                    let sym = libc::dlsym(
                        lib,
                        c"_ZN3c104cuda20CUDACachingAllocator9allocatorE".as_ptr(),
                    );
                    (!sym.is_null()).then_some(sym as usize)
                }
            })
        }
    }

    #[cfg(kvcat_cuda_mem)]
    pub fn peak_allocated_bytes(device: i32) -> Option<i64> {
        let slot = ffi::slot()?;
        // SAFETY: `slot` is the allocator's address in the loaded libc10_cuda; the shim
        // checks for a null or uninitialised allocator and catches every C++ exception.
        let b = unsafe { ffi::kvcat_cuda_peak_allocated_bytes(slot as *mut _, device) };
        (b >= 0).then_some(b)
    }

    #[cfg(kvcat_cuda_mem)]
    pub fn reset_peak(device: i32) {
        if let Some(slot) = ffi::slot() {
            // SAFETY: as in `peak_allocated_bytes`.
            unsafe { ffi::kvcat_cuda_reset_peak(slot as *mut _, device) };
        }
    }

    #[cfg(not(kvcat_cuda_mem))]
    pub fn peak_allocated_bytes(_device: i32) -> Option<i64> {
        None
    }

    #[cfg(not(kvcat_cuda_mem))]
    pub fn reset_peak(_device: i32) {}
}
