//! Plugin registries built on `inventory`, in the style of typetag.
//!
//! A plugin crate submits a static [`Registration`] (name, one-line description, parameter
//! defaults, factory from a TOML table). One generic [`Registry`] per plugin kind is the sorted
//! map of all linked registrations, collected once on first use. Duplicate names are an error;
//! an unknown name lists the known ones.
//!
//! `inventory` only sees crates that are linked: binaries and integration tests say
//! `use kvcat_policies as _; use kvcat_compressors as _;`.

use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;

/// One registered plugin of kind `T` (`dyn Compressor`, `dyn Scorer`, `dyn MaskingPolicy`,
/// `dyn Task`): its name, a one-line description, its default parameters and a builder from a
/// TOML parameter table. Each kind names it through an alias (`CompressorDescriptor`, …), and
/// plugins submit it with `inventory::submit!`.
pub struct Registration<T: ?Sized + 'static> {
    pub name: &'static str,
    pub description: &'static str,
    /// The resolved default parameters, as a TOML table (shown by `kvcat list`).
    pub defaults: fn() -> toml::Table,
    /// Builds the plugin from its parameter table (missing keys take their defaults).
    pub build: fn(&toml::Table) -> Result<Box<T>>,
}

/// A kind of plugin with a registry: implemented by [`plugin_kind!`](crate::plugin_kind) for
/// `dyn Compressor`, `dyn Scorer`, `dyn MaskingPolicy` and `dyn Task`.
pub trait PluginKind: 'static {
    /// The kind's name in errors and listings, e.g. `"compressor"`.
    const KIND: &'static str;
    /// Every linked registration of this kind, collected once on first use.
    fn registry() -> &'static Registry<Registration<Self>>;
}

/// What every registry descriptor exposes.
pub trait Descriptor: Sized + 'static {
    /// The registry's kind, e.g. `"compressor"`.
    const KIND: &'static str;
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    /// The resolved default parameters, as a TOML table (shown by `kvcat list`).
    fn defaults(&self) -> toml::Table;
    /// The registry of every linked descriptor of this kind, built once.
    fn registry() -> &'static Registry<Self>;
}

impl<T: PluginKind + ?Sized> Descriptor for Registration<T> {
    const KIND: &'static str = T::KIND;
    fn name(&self) -> &'static str {
        self.name
    }
    fn description(&self) -> &'static str {
        self.description
    }
    fn defaults(&self) -> toml::Table {
        (self.defaults)()
    }
    fn registry() -> &'static Registry<Self> {
        T::registry()
    }
}

/// The linked descriptors of one kind, sorted by name, collected once from `inventory`. A name
/// registered twice is remembered and reported by every lookup.
pub struct Registry<D: 'static> {
    by_name: BTreeMap<&'static str, &'static D>,
    duplicate: Option<&'static str>,
}

impl<D: Descriptor + inventory::Collect> Registry<D> {
    /// Collects every linked descriptor of kind `D` (called once per kind, by
    /// [`PluginKind::registry`]).
    pub fn collect() -> Self {
        let mut by_name = BTreeMap::new();
        let mut duplicate = None;
        for d in inventory::iter::<D> {
            if by_name.insert(d.name(), d).is_some() {
                duplicate = duplicate.or(Some(d.name()));
            }
        }
        Registry { by_name, duplicate }
    }
}

impl<D: Descriptor> Registry<D> {
    /// Every descriptor, by name; errors when a name was registered twice.
    pub fn entries(&self) -> Result<&BTreeMap<&'static str, &'static D>> {
        match self.duplicate {
            Some(name) => Err(Error::DuplicateName {
                kind: D::KIND,
                name: name.to_string(),
            }),
            None => Ok(&self.by_name),
        }
    }

    /// The descriptor named `name`; an unknown name lists every known name.
    pub fn get(&self, name: &str) -> Result<&'static D> {
        let map = self.entries()?;
        map.get(name).copied().ok_or_else(|| Error::UnknownName {
            kind: D::KIND,
            name: name.to_string(),
            known: map.keys().map(|k| k.to_string()).collect(),
        })
    }
}

/// Declares a plugin kind: collects `Registration<$ty>` with `inventory` and implements
/// [`PluginKind`] for `$ty` with a registry built once (`OnceLock`).
#[macro_export]
macro_rules! plugin_kind {
    ($ty:ty, $kind:literal) => {
        $crate::inventory::collect!($crate::registry::Registration<$ty>);
        impl $crate::registry::PluginKind for $ty {
            const KIND: &'static str = $kind;
            fn registry(
            ) -> &'static $crate::registry::Registry<$crate::registry::Registration<$ty>> {
                static REGISTRY: ::std::sync::OnceLock<
                    $crate::registry::Registry<$crate::registry::Registration<$ty>>,
                > = ::std::sync::OnceLock::new();
                REGISTRY.get_or_init($crate::registry::Registry::collect)
            }
        }
    };
}

/// Registers a plugin of kind `$kind` (`dyn Compressor`, `dyn Scorer`, `dyn MaskingPolicy`,
/// `dyn Task`) named `$name`, whose parameters are the serde type `$params`: `kvcat list`
/// shows `$params::default()` (or the `defaults:` value, which then also fills the keys a
/// table leaves out), and `$build` makes the plugin (a `Result`) from the parsed params `$p`.
///
/// ```ignore
/// kvcat_core::register!(dyn MaskingPolicy, "rand", "a random subset", RandParams, |params| {
///     Ok(RandPolicy { params })
/// });
/// ```
#[macro_export]
macro_rules! register {
    (@submit $kind:ty, $name:expr, $desc:expr, $defaults:expr, $merge:literal, $params:ty,
     |$p:ident| $build:expr) => {
        $crate::inventory::submit! {
            $crate::registry::Registration::<$kind> {
                name: $name,
                description: $desc,
                defaults: || $crate::registry::to_table(&$defaults),
                build: |table| {
                    let kind = <$kind as $crate::registry::PluginKind>::KIND;
                    let $p: $params = if $merge {
                        let mut merged = $crate::registry::to_table(&$defaults);
                        merged.extend(table.clone());
                        $crate::registry::parse_params(kind, $name, &merged)?
                    } else {
                        $crate::registry::parse_params(kind, $name, table)?
                    };
                    Ok(Box::new($build?))
                },
            }
        }
    };
    ($kind:ty, $name:expr, $desc:expr, defaults: $defaults:expr, $params:ty, |$p:ident| $build:expr) => {
        $crate::register!(@submit $kind, $name, $desc, $defaults, true, $params, |$p| $build);
    };
    ($kind:ty, $name:expr, $desc:expr, $params:ty, |$p:ident| $build:expr) => {
        $crate::register!(
            @submit $kind,
            $name,
            $desc,
            <$params as ::std::default::Default>::default(),
            false,
            $params,
            |$p| $build
        );
    };
}

/// All registered descriptors of one kind, sorted by name. Errors on a duplicate name.
pub fn all<D: Descriptor>() -> Result<BTreeMap<&'static str, &'static D>> {
    D::registry().entries().cloned()
}

/// Looks up one descriptor by name; an unknown name lists every known name.
pub fn get<D: Descriptor>(name: &str) -> Result<&'static D> {
    D::registry().get(name)
}

/// Builds the registered plugin of kind `T` named `name` from its parameter table.
pub fn build<T: PluginKind + ?Sized>(name: &str, params: &toml::Table) -> Result<Box<T>> {
    (T::registry().get(name)?.build)(params)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::PluginKind;
    use crate::task::{build_task, Example, Task};
    use crate::{Result, Tokenizer};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct CountParams {
        n: usize,
    }

    struct Count(CountParams);

    impl Task for Count {
        fn name(&self) -> &'static str {
            "registry_test_count"
        }
        fn params(&self) -> toml::Table {
            super::to_table(&self.0)
        }
        fn examples(&self, _: &Tokenizer, _: usize, _: u64) -> Result<Vec<Example>> {
            Ok(vec![])
        }
    }

    crate::register!(
        dyn Task,
        "registry_test_count",
        "a task for the registry's own tests",
        CountParams,
        |params| Ok::<_, crate::Error>(Count(params))
    );

    #[test]
    fn built_once_and_builds_with_params() {
        let first = <dyn Task as PluginKind>::registry() as *const _;
        let second = <dyn Task as PluginKind>::registry() as *const _;
        assert_eq!(first, second);
        let t = build_task("registry_test_count", &"n = 3".parse().unwrap()).unwrap();
        assert_eq!(t.params()["n"].as_integer(), Some(3));
        let d = super::get::<crate::task::TaskDescriptor>("registry_test_count").unwrap();
        assert_eq!((d.defaults)()["n"].as_integer(), Some(0));
    }

    #[test]
    fn unknown_names_and_bad_params_are_clear_errors() {
        let e = build_task("no_such_task", &toml::Table::new())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("known tasks:") && e.contains("registry_test_count"),
            "{e}"
        );
        let e = build_task("registry_test_count", &"m = 1".parse().unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("registry_test_count") && e.contains("`m`"),
            "{e}"
        );
    }
}
