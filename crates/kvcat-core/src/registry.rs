//! Plugin registries built on `inventory`, in the style of typetag.
//!
//! A plugin crate submits a static descriptor (name, one-line description, parameter defaults,
//! factory from a TOML table). The registry is the sorted map of all linked descriptors.
//! Duplicate names are an error; an unknown name lists the known ones.
//!
//! `inventory` only sees crates that are linked: binaries and integration tests say
//! `use kvcat_policies as _; use kvcat_compressors as _;`.

use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;

/// What every registry descriptor exposes.
pub trait Descriptor: 'static {
    /// The registry's kind, e.g. `"compressor"`.
    const KIND: &'static str;
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    /// The resolved default parameters, as a TOML table (shown by `kvcat list`).
    fn defaults(&self) -> toml::Table;
}

/// All registered descriptors of one kind, sorted by name. Errors on a duplicate name.
pub fn all<D: Descriptor>() -> Result<BTreeMap<&'static str, &'static D>>
where
    inventory::iter<D>: IntoIterator<Item = &'static D>,
{
    let mut map = BTreeMap::new();
    for d in inventory::iter::<D> {
        if map.insert(d.name(), d).is_some() {
            return Err(Error::DuplicateName {
                kind: D::KIND,
                name: d.name().to_string(),
            });
        }
    }
    Ok(map)
}

/// Looks up one descriptor by name; an unknown name lists every known name.
pub fn get<D: Descriptor>(name: &str) -> Result<&'static D>
where
    inventory::iter<D>: IntoIterator<Item = &'static D>,
{
    let map = all::<D>()?;
    map.get(name).copied().ok_or_else(|| Error::UnknownName {
        kind: D::KIND,
        name: name.to_string(),
        known: map.keys().map(|k| k.to_string()).collect(),
    })
}

/// Parses a plugin's parameter table into its typed params (which should use
/// `#[serde(deny_unknown_fields, default)]`). Errors name the plugin and the field
/// (`field `window_size`: invalid type: string "abc", expected usize`).
pub fn parse_params<P: DeserializeOwned>(
    kind: &'static str,
    name: &str,
    table: &toml::Table,
) -> Result<P> {
    crate::toml_paths::from_table(table, &toml::Table::new()).map_err(|e| Error::Params {
        kind,
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// Serialises typed params back to a TOML table (defaults filled in), for `kvcat list`,
/// result rows and cell hashing.
pub fn to_table<P: Serialize>(params: &P) -> toml::Table {
    match toml::Value::try_from(params) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    }
}

/// A compact, stable one-line rendering of a params table: `a=1,b="x"` in key order.
pub fn params_string(table: &toml::Table) -> String {
    let mut parts: Vec<String> = table
        .iter()
        .map(|(k, v)| format!("{k}={}", v.to_string().trim()))
        .collect();
    parts.sort();
    parts.join(",")
}
