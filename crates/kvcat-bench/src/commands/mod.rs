//! Subcommand implementations, one module per subcommand.

pub mod analyze;
pub mod bench;
pub mod common;
pub mod compress;
pub mod eval;
pub mod inspect;
pub mod list;
pub mod merge;
pub mod perf;
pub mod report;
pub mod train;
