//! Eviction compressors: each method is a [`kvcat_core::Scorer`] in its own short file,
//! turned into a compressor by [`crate::topk::ScorerCompressor`] (whose top-k is
//! [`kvcat_core::selection`], shared with the train-time `scorer` policy). Defaults equal kvpress
//! 0.5.5's; the budget fraction `b` is kvpress's `compression_ratio = 1 − b`.
//!
//! Every scorer is registered twice under the same name: as a compressor (top-k) and as a
//! scorer (for wrappers such as `adakv` and `pyramid`, which name it as `inner`, and for the
//! train-time `scorer` policy).

pub mod expected_attention;
pub mod keydiff;
pub mod knorm;
pub mod kvzip;
pub mod observed_attention;
pub mod random;
pub mod snapkv;
pub mod streaming_llm;
pub mod tova;

use kvcat_core::{CompressionInput, Error, Result};
use serde::{Deserialize, Serialize};

/// The parameters of a scorer that takes none (an empty table; any key is refused).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// A scorer's parameters: plain serde data (`#[serde(deny_unknown_fields, default)]`) plus an
/// optional check run when the scorer is built (its error names the field).
pub trait ScorerParams {
    fn check(&self) -> Result<()> {
        Ok(())
    }
}

impl ScorerParams for NoParams {}

/// Defines and registers an eviction scorer in one item: the struct, its [`kvcat_core::Scorer`]
/// impl (the body computes `[b, kv_heads, slots]` scores of `layer`, higher kept), and its
/// registration as a scorer and a top-k compressor ([`register_scorer!`]).
///
/// ```ignore
/// // no parameters
/// kvcat_compressors::scorer!(Knorm, "knorm", "keep the smallest keys", |input, layer| {
///     let k = kvcat_compressors::eviction::layer(input, layer)?.k.to_kind(tch::Kind::Float);
///     Ok(-k.norm_scalaropt_dim(2, [-1], false))
/// });
/// // with parameters (a `ScorerParams` type), reached as `s.params`
/// kvcat_compressors::scorer!(ValueNorm(ValueNormParams), "value_norm", "…", |s, input, layer| {
///     …
/// });
/// ```
#[macro_export]
macro_rules! scorer {
    ($(#[$m:meta])* $ty:ident, $name:literal, $desc:literal, |$input:ident, $layer:ident| $body:block) => {
        $(#[$m])*
        pub struct $ty;
        impl $ty {
            pub fn new(_: $crate::eviction::NoParams) -> ::kvcat_core::Result<Self> {
                Ok($ty)
            }
        }
        impl ::kvcat_core::Scorer for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn params(&self) -> ::kvcat_core::toml::Table {
                ::kvcat_core::toml::Table::new()
            }
            fn score(
                &self,
                $input: &::kvcat_core::CompressionInput,
                $layer: usize,
            ) -> ::kvcat_core::Result<::kvcat_core::tch::Tensor> $body
        }
        $crate::register_scorer!($ty, $crate::eviction::NoParams, $name, $desc);
    };
    ($(#[$m:meta])* $ty:ident($params:ty), $name:literal, $desc:literal, |$s:ident, $input:ident, $layer:ident| $body:block) => {
        $(#[$m])*
        pub struct $ty {
            pub params: $params,
        }
        impl $ty {
            pub fn new(params: $params) -> ::kvcat_core::Result<Self> {
                $crate::eviction::ScorerParams::check(&params)?;
                Ok($ty { params })
            }
        }
        impl ::kvcat_core::Scorer for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn params(&self) -> ::kvcat_core::toml::Table {
                ::kvcat_core::registry::to_table(&self.params)
            }
            fn score(
                &self,
                $input: &::kvcat_core::CompressionInput,
                $layer: usize,
            ) -> ::kvcat_core::Result<::kvcat_core::tch::Tensor> {
                let $s = self;
                $body
            }
        }
        $crate::register_scorer!($ty, $params, $name, $desc);
    };
}

/// Registers a scorer type `$ty` (built by `$ty::new($params)`) as both a scorer and a
/// top-k compressor named `$name`.
#[macro_export]
macro_rules! register_scorer {
    ($ty:ty, $params:ty, $name:literal, $desc:literal) => {
        ::kvcat_core::register!(dyn ::kvcat_core::Scorer, $name, $desc, $params, |params| {
            <$ty>::new(params)
        });
        ::kvcat_core::register!(
            dyn ::kvcat_core::Compressor,
            $name,
            $desc,
            $params,
            |params| { <$ty>::new(params).map($crate::topk::ScorerCompressor::new) }
        );
    };
}

/// The layer's cache, checked to exist.
pub fn layer<'a>(input: &'a CompressionInput, i: usize) -> Result<&'a kvcat_core::LayerCache> {
    input.cache.layers.get(i).ok_or_else(|| {
        Error::invalid(format!(
            "layer {i} out of range: the cache has {} layers",
            input.cache.layers.len()
        ))
    })
}

/// The layer's prefill hidden states `[b, t, hidden]`, checked to exist.
pub fn hidden<'a>(name: &str, input: &'a CompressionInput, i: usize) -> Result<&'a tch::Tensor> {
    input.hidden.get(i).ok_or_else(|| {
        Error::invalid(format!(
            "`{name}` needs the prefill hidden states of layer {i}, but only {} were given \
             (prefill with kvcat_core::probe::prefill_for_compression)",
            input.hidden.len()
        ))
    })
}

/// Errors when the budget keeps fewer slots than a scorer's protected slots.
pub fn check_protected(
    name: &str,
    input: &CompressionInput,
    slots: i64,
    protected: i64,
    what: &str,
) -> Result<()> {
    let kept = input.budget.kept(slots);
    if kept < slots && kept < protected {
        return Err(Error::Budget {
            value: input.budget.to_string(),
            reason: format!(
                "`{name}` keeps {kept} of {slots} slots, fewer than its {protected} protected \
                 slots ({what}); raise the budget or lower `{what}`"
            ),
        });
    }
    Ok(())
}

/// Sets `protect` slots (`[b, h, s]` bool) to one more than the maximum score, as kvpress
/// pads its windows and sinks, so they are kept first.
pub fn protect(scores: &tch::Tensor, protect: &tch::Tensor) -> tch::Tensor {
    let others = scores.masked_fill(protect, f64::NEG_INFINITY);
    let top = others.max().double_value(&[]);
    let top = if top.is_finite() { top } else { 0.0 };
    scores.masked_fill(protect, top + 1.0)
}
