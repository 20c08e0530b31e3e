//! Wrappers: variants made by wrapping an inner method, not by flags (after kvpress's
//! `AdaKVPress`, `PyramidKVPress`/`PerLayerCompressionPress` and `ComposedPress`).
//!
//! Registry names and parameters:
//! - `adakv`: `inner = "<scorer>"`, `inner_params = { … }`, `alpha_safeguard = 0.2`;
//! - `pyramid`: `inner = "<scorer>"`, `inner_params = { … }`, `window_size = 64`, `beta = 20`;
//! - `compose`: `stages = ["<compressor>", …]`, `params = { <compressor> = { … } }`.
//!
//! `inner` names a registered *scorer* (every eviction method registers one under its
//! compressor name); `stages` name registered *compressors*.

pub mod adakv;
pub mod compose;
pub mod pyramid;

use kvcat_core::{Error, Result};

/// Reads a sub-table parameter (`inner_params`, `params`) as a TOML table.
pub(crate) fn sub_table(
    value: &Option<toml::Value>,
    what: &str,
    owner: &str,
) -> Result<toml::Table> {
    match value {
        None => Ok(toml::Table::new()),
        Some(toml::Value::Table(t)) => Ok(t.clone()),
        Some(other) => Err(Error::Params {
            kind: "compressor",
            name: owner.to_string(),
            reason: format!("`{what}` must be a table, got {}", other.type_str()),
        }),
    }
}
