//! Subcommand implementations, one module per subcommand.

pub mod common;
pub mod inspect;
pub mod train;
pub mod compress;
pub mod list;
pub mod eval;
pub mod bench;
pub mod merge;
pub mod report;
