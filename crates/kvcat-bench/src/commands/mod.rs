//! Subcommand implementations.

pub mod common;
pub mod inspect;
