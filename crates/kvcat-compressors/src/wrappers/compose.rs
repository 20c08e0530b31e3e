//! Composition: compressors applied one after another, each on the previous one's output
//! (kvpress `ComposedPress`). The kept fraction is spread geometrically: with `n` stages and
//! budget `b` on `s` slots, stage `j` (0-based) keeps `max(kept, floor(s · b^((j+1)/n)))` slots
//! and the last stage keeps exactly `kept = budget.kept(s)`, so the achieved budget equals the
//! asked one. Every stage sees the original context, hidden states and question.
//!
//! Shapes: each stage maps a cache `[b, kv_heads, slots, d]` to a smaller one. The slot count
//! `s` is that of layer 0 (an uncompressed prefill has the same count in every layer).

use kvcat_core::compressor::build_compressor;
use kvcat_core::{Budget, Compressed, CompressionInput, Compressor, Error, Result};
use serde::{Deserialize, Serialize};

/// Parameters of `compose`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComposeParams {
    /// Registered compressor names, applied in order.
    pub stages: Vec<String>,
    /// Per-stage parameters, keyed by stage name.
    pub params: Option<toml::Value>,
}

impl Default for ComposeParams {
    fn default() -> Self {
        ComposeParams {
            stages: vec!["knorm".into(), "snapkv".into()],
            params: Some(toml::Value::Table(toml::Table::new())),
        }
    }
}

/// A chain of compressors.
pub struct Compose {
    pub stages: Vec<Box<dyn Compressor>>,
}

impl Compose {
    pub fn new(stages: Vec<Box<dyn Compressor>>) -> Result<Self> {
        if stages.is_empty() {
            return Err(Error::Params {
                kind: "compressor",
                name: "compose".into(),
                reason: "`stages` must name at least one compressor".into(),
            });
        }
        Ok(Compose { stages })
    }
}

impl Compressor for Compose {
    fn name(&self) -> &'static str {
        "compose"
    }
    fn params(&self) -> toml::Table {
        let mut t = toml::Table::new();
        let names: Vec<toml::Value> = self.stages.iter().map(|s| s.name().into()).collect();
        t.insert("stages".into(), names.into());
        let mut per = toml::Table::new();
        for s in &self.stages {
            per.insert(s.name().into(), s.params().into());
        }
        t.insert("params".into(), per.into());
        t
    }
    fn compress(&self, input: &CompressionInput) -> Result<Compressed> {
        let s = input.cache.layers.first().map_or(0, |l| l.slots());
        if input.budget.is_identity_for(s) {
            return Ok(Compressed {
                cache: input.cache.copy(),
                extra: vec![],
            });
        }
        let kept = input.budget.kept(s);
        let b = kept as f64 / s as f64;
        let n = self.stages.len();
        let mut current: Option<kvcat_core::KvCache> = None;
        let mut extra = vec![];
        for (j, stage) in self.stages.iter().enumerate() {
            let target = if j + 1 == n {
                kept
            } else {
                ((s as f64 * b.powf((j + 1) as f64 / n as f64)).floor() as i64).max(kept)
            };
            let cache = current.as_ref().unwrap_or(input.cache);
            let step = CompressionInput {
                cache,
                budget: Budget::slots(target)?,
                ..*input
            };
            let out = stage.compress(&step)?;
            extra.extend(
                out.extra
                    .into_iter()
                    .map(|(k, v)| (format!("{}.{k}", stage.name()), v)),
            );
            current = Some(out.cache);
        }
        Ok(Compressed {
            cache: current.unwrap_or_else(|| input.cache.copy()),
            extra,
        })
    }
}

/// Checks the parameters and builds every stage.
fn build(p: ComposeParams) -> Result<Compose> {
    let per = super::sub_table(&p.params, "params", "compose")?;
    if let Some(unknown) = per.keys().find(|k| !p.stages.contains(k)) {
        return Err(Error::Params {
            kind: "compressor",
            name: "compose".into(),
            reason: format!(
                "`params.{unknown}` names no stage (stages: {})",
                p.stages.join(", ")
            ),
        });
    }
    let stages = p
        .stages
        .iter()
        .map(|name| {
            if name == "compose" {
                return Err(Error::Params {
                    kind: "compressor",
                    name: "compose".into(),
                    reason: "a stage cannot itself be `compose`".into(),
                });
            }
            let params = match per.get(name) {
                Some(toml::Value::Table(t)) => t.clone(),
                Some(other) => {
                    return Err(Error::Params {
                        kind: "compressor",
                        name: "compose".into(),
                        reason: format!(
                            "`params.{name}` must be a table, got {}",
                            other.type_str()
                        ),
                    })
                }
                None => toml::Table::new(),
            };
            build_compressor(name, &params)
        })
        .collect::<Result<Vec<_>>>()?;
    Compose::new(stages)
}

kvcat_core::register!(
    dyn Compressor,
    "compose",
    "apply compressors in sequence, spreading the budget geometrically (kvpress ComposedPress)",
    ComposeParams,
    |params| build(params)
);
