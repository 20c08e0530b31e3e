//! kvcat-bench: the `kvcat` CLI and everything behind it — training, evaluation tasks and
//! metrics, the bench runner over TOML manifests, CSV results and reports.

// Every runner built on this crate (`kvcat`, a plugin's own binary) links the built-in
// policies and compressors, so their registrations are always present.
use kvcat_compressors as _;
use kvcat_policies as _;

pub mod analyze;
pub mod cli;
pub mod commands;
pub mod evaluate;
pub mod metrics;
pub mod perf;
pub mod process_allocator;
pub mod report;
pub mod results;
pub mod runner;
pub mod runtime_spec;
pub mod stats;
pub mod tasks;
pub mod train;
