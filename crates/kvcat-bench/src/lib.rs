//! kvcat-bench: the `kvcat` CLI and everything behind it — training, evaluation tasks and
//! metrics, the bench runner over TOML manifests, CSV results and reports.

pub mod cli;
pub mod commands;
