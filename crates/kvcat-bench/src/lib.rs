//! kvcat-bench: the `kvcat` CLI and everything behind it — training, evaluation tasks and
//! metrics, the bench runner over TOML manifests, CSV results and reports.

pub mod analyze;
pub mod cli;
pub mod commands;
pub mod evaluate;
pub mod metrics;
pub mod perf;
pub mod report;
pub mod results;
pub mod runner;
pub mod stats;
pub mod tasks;
pub mod train;
