//! Aggregating [`Sample`]s over examples into tidy CSV rows, the per-layer summaries, the
//! area under each kept-mass curve, and the difference of two profiles.

use super::measures::mass_auc;
use super::profile::Sample;
use crate::metrics::mean_stderr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `kv_head` value of per-layer rows (every head of the layer pooled).
pub const ALL_HEADS: &str = "all";

/// One tidy row of `profile.csv`.
///
/// `metric` is one of `kept_mass`, `output_rel_error` (curve points: `method` is `oracle` or a
/// compressor, `budget` the kept fraction), `mass_auc` (area under a kept-mass curve, per
/// method), `key_erank`, `value_erank`, `attn_entropy` (no method, no budget).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileRow {
    pub model: String,
    pub layer: usize,
    /// A KV head index, or `all` for the layer's heads pooled.
    pub kv_head: String,
    pub metric: String,
    pub method: String,
    /// The budget fraction of curve points; empty otherwise.
    pub budget: String,
    /// Mean over examples (and heads, for `all`).
    pub value: f64,
    pub stderr: f64,
    pub n: usize,
}

/// Grouping key: (layer, head (−1 = all), metric, method, budget text).
type Key = (usize, i64, String, String, String);

fn budget_text(b: Option<f64>) -> String {
    b.map(|b| b.to_string()).unwrap_or_default()
}

fn group(samples: &[Sample]) -> BTreeMap<Key, Vec<f64>> {
    let mut g: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    for s in samples {
        let base = (
            s.metric.to_string(),
            s.method.clone(),
            budget_text(s.budget),
        );
        for head in [s.kv_head, -1] {
            g.entry((
                s.layer,
                head,
                base.0.clone(),
                base.1.clone(),
                base.2.clone(),
            ))
            .or_default()
            .push(s.value);
        }
    }
    g
}

fn head_text(h: i64) -> String {
    if h < 0 {
        ALL_HEADS.to_string()
    } else {
        h.to_string()
    }
}

/// Aggregates one model's samples: mean ± standard error per (layer, head, metric, method,
/// budget), the pooled `all`-heads rows, then one `mass_auc` row per (layer, head, method).
pub fn aggregate(model: &str, samples: &[Sample]) -> Vec<ProfileRow> {
    let mut rows: Vec<ProfileRow> = group(samples)
        .into_iter()
        .map(|((layer, head, metric, method, budget), xs)| {
            let m = mean_stderr(&xs);
            ProfileRow {
                model: model.to_string(),
                layer,
                kv_head: head_text(head),
                metric,
                method,
                budget,
                value: m.mean,
                stderr: m.stderr,
                n: m.n,
            }
        })
        .collect();
    rows.extend(auc_rows(&rows));
    rows
}

/// The area under each kept-mass curve ([`mass_auc`]), per (layer, head, method).
fn auc_rows(rows: &[ProfileRow]) -> Vec<ProfileRow> {
    let mut curves: BTreeMap<(usize, String, String), (Vec<(f64, f64)>, usize, String)> =
        BTreeMap::new();
    for r in rows.iter().filter(|r| r.metric == "kept_mass") {
        let Ok(b) = r.budget.parse::<f64>() else {
            continue;
        };
        let e = curves
            .entry((r.layer, r.kv_head.clone(), r.method.clone()))
            .or_insert_with(|| (vec![], r.n, r.model.clone()));
        e.0.push((b, r.value));
    }
    curves
        .into_iter()
        .map(|((layer, kv_head, method), (pts, n, model))| ProfileRow {
            model,
            layer,
            kv_head,
            metric: "mass_auc".into(),
            method,
            budget: String::new(),
            value: mass_auc(&pts),
            stderr: 0.0,
            n,
        })
        .collect()
}

/// `b − a` for every row the two profiles share (same layer, head, metric, method, budget);
/// the standard error is `sqrt(se_a² + se_b²)`.
pub fn difference(a: &[ProfileRow], b: &[ProfileRow]) -> Vec<ProfileRow> {
    let key = |r: &ProfileRow| {
        (
            r.layer,
            r.kv_head.clone(),
            r.metric.clone(),
            r.method.clone(),
            r.budget.clone(),
        )
    };
    let index: BTreeMap<_, &ProfileRow> = a.iter().map(|r| (key(r), r)).collect();
    b.iter()
        .filter_map(|rb| {
            let ra = index.get(&key(rb))?;
            Some(ProfileRow {
                model: format!("{} - {}", rb.model, ra.model),
                value: rb.value - ra.value,
                stderr: (ra.stderr.powi(2) + rb.stderr.powi(2)).sqrt(),
                n: ra.n.min(rb.n),
                ..rb.clone()
            })
        })
        .collect()
}

/// Writes rows as CSV (header first), creating the parent directory.
pub fn write_csv(path: &std::path::Path, rows: &[ProfileRow]) -> kvcat_core::Result<()> {
    let err = |e: String| kvcat_core::Error::invalid(format!("writing {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let mut w = csv::Writer::from_path(path).map_err(|e| err(e.to_string()))?;
    for r in rows {
        w.serialize(r).map_err(|e| err(e.to_string()))?;
    }
    w.flush().map_err(|e| err(e.to_string()))
}
