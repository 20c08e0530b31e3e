//! Quality–budget curves from result rows, and their normalised area.
//!
//! A curve is one (model, policy, compressor, task) on the task's report metric: one point
//! per compressed budget plus the uncompressed reference at budget 1.0. The x coordinate is
//! the asked fraction (slot budgets use the achieved fraction). The area is the trapezoid
//! integral divided by the x range: the mean quality over the swept budgets, in the metric's
//! own units, so curves of one task compare directly.
//!
//! When a manifest lists training `seeds`, one (model, policy) has one checkpoint per seed;
//! a curve point is then the mean over seeds of the per-seed cell means, with standard error
//! `sqrt(Σ seᵢ²) / k` (the example noise of a mean of k independent cell means).

use crate::results::ResultRow;
use crate::runner::manifest::{Manifest, BASELINE_POLICY, REFERENCE_COMPRESSOR};
use kvcat_core::budget::Budget;
use kvcat_core::registry::params_string;
use std::collections::BTreeMap;

/// Whether larger values of `metric` are better (NLL, perplexity and losses are not).
pub fn higher_is_better(metric: &str) -> bool {
    let m = metric.to_ascii_lowercase();
    !(m.starts_with("nll")
        || m.ends_with("_nll")
        || m.starts_with("ppl")
        || m.contains("loss")
        || m.contains("perplexity")
        || m.ends_with("error"))
}

/// One point of a curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub budget: f64,
    pub value: f64,
    pub stderr: f64,
}

/// One quality–budget curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub model: String,
    pub policy: String,
    /// Compressor label (name, plus parameters when one name appears with several).
    pub compressor: String,
    pub task: String,
    pub metric: String,
    /// Sorted by budget; the last is the reference at 1.0 when present.
    pub points: Vec<Point>,
}

impl Curve {
    /// Normalised area under the curve (mean quality over the budget range); the single
    /// value for a one-point curve, `NaN` for an empty one.
    pub fn auc(&self) -> f64 {
        auc(&self.points)
    }
}

/// Trapezoid area under `points` (sorted by budget) divided by their budget range.
pub fn auc(points: &[Point]) -> f64 {
    match points {
        [] => f64::NAN,
        [p] => p.value,
        _ => {
            let area: f64 = points
                .windows(2)
                .map(|w| (w[1].budget - w[0].budget) * (w[0].value + w[1].value) / 2.0)
                .sum();
            let width = points[points.len() - 1].budget - points[0].budget;
            if width > 0.0 {
                area / width
            } else {
                points.iter().map(|p| p.value).sum::<f64>() / points.len() as f64
            }
        }
    }
}

/// The model label of a row (`model@checkpoint` → `model`).
pub fn model_label(row: &ResultRow) -> &str {
    row.model.split('@').next().unwrap_or(&row.model)
}

/// The x coordinate of a row's budget.
pub fn budget_x(row: &ResultRow) -> f64 {
    match row.budget.parse::<Budget>() {
        Ok(Budget::Fraction(f)) => f,
        _ => row.budget_achieved,
    }
}

/// Display labels of the manifest's compressors, keyed by (name, params string).
pub fn compressor_labels(m: &Manifest) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for c in &m.compressor {
        let p = params_string(&c.params);
        let several = m.compressor.iter().filter(|x| x.name == c.name).count() > 1;
        let label = if several {
            format!("{}({p})", c.name)
        } else {
            c.name.clone()
        };
        out.insert((c.name.clone(), p), label);
    }
    out
}

/// The report metric of every task (by task name + params string): the manifest's `metric`
/// when given, else the first metric the task's rows report.
pub fn task_metrics(m: &Manifest, rows: &[ResultRow]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for t in &m.task {
        let key = task_key(&t.name, &params_string(&t.params));
        let metric = t.metric.clone().or_else(|| {
            rows.iter()
                .find(|r| task_key(&r.task, &r.task_params) == key)
                .map(|r| r.metric.clone())
        });
        if let Some(metric) = metric {
            out.insert(key, metric);
        }
    }
    out
}

/// A task's identity in rows: its name, plus parameters when they are not empty.
pub fn task_key(name: &str, params: &str) -> String {
    format!("{name}|{params}")
}

/// Display labels of the manifest's tasks, keyed by [`task_key`].
pub fn task_labels(m: &Manifest) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for t in &m.task {
        let p = params_string(&t.params);
        let several = m.task.iter().filter(|x| x.name == t.name).count() > 1;
        let label = if several {
            format!("{}({p})", t.name)
        } else {
            t.name.clone()
        };
        out.insert(task_key(&t.name, &p), label);
    }
    out
}

/// The mean of points measured at one budget (one per training seed).
fn mean_point(points: &[Point]) -> Point {
    let k = points.len() as f64;
    Point {
        budget: points.iter().map(|p| p.budget).sum::<f64>() / k,
        value: points.iter().map(|p| p.value).sum::<f64>() / k,
        stderr: points
            .iter()
            .map(|p| p.stderr * p.stderr)
            .sum::<f64>()
            .sqrt()
            / k,
    }
}

/// (model, policy, task key) → the reference points (one per training seed).
type ReferencePoints = BTreeMap<(String, String, String), Vec<Point>>;
/// (model, policy, task key, compressor label) → budget → points (one per training seed).
type CompressedPoints = BTreeMap<(String, String, String, String), BTreeMap<String, Vec<Point>>>;

/// The points of every row on its task's report metric, grouped by curve and budget.
struct Measured {
    reference: ReferencePoints,
    points: CompressedPoints,
}

fn measured_points(
    m: &Manifest,
    rows: &[ResultRow],
    metrics: &BTreeMap<String, String>,
) -> Measured {
    let comp_labels = compressor_labels(m);
    let mut out = Measured {
        reference: BTreeMap::new(),
        points: BTreeMap::new(),
    };
    for r in rows {
        let tk = task_key(&r.task, &r.task_params);
        if metrics.get(&tk) != Some(&r.metric) {
            continue;
        }
        let p = Point {
            budget: budget_x(r),
            value: r.value,
            stderr: r.stderr,
        };
        let model = model_label(r).to_string();
        if r.compressor == REFERENCE_COMPRESSOR {
            let key = (model, r.policy.clone(), tk);
            let at_one = Point { budget: 1.0, ..p };
            out.reference.entry(key).or_default().push(at_one);
        } else {
            let label = comp_labels
                .get(&(r.compressor.clone(), r.compressor_params.clone()))
                .cloned()
                .unwrap_or_else(|| r.compressor.clone());
            let key = (model, r.policy.clone(), tk, label);
            let budgets = out.points.entry(key).or_default();
            budgets.entry(r.budget.clone()).or_default().push(p);
        }
    }
    out
}

/// Builds every curve of a results table, in manifest order (models, policies, tasks,
/// compressors).
pub fn build_curves(m: &Manifest, rows: &[ResultRow]) -> Vec<Curve> {
    let metrics = task_metrics(m, rows);
    let comp_labels = compressor_labels(m);
    let task_labels = task_labels(m);
    let Measured { reference, points } = measured_points(m, rows, &metrics);
    let mut policies: Vec<String> = Vec::new();
    for r in rows {
        if !policies.contains(&r.policy) {
            policies.push(r.policy.clone());
        }
    }
    let mut curves = Vec::new();
    for model in &m.model {
        for policy in &policies {
            for t in &m.task {
                let tk = task_key(&t.name, &params_string(&t.params));
                let Some(metric) = metrics.get(&tk) else {
                    continue;
                };
                for c in &m.compressor {
                    let label = &comp_labels[&(c.name.clone(), params_string(&c.params))];
                    let key = (
                        model.name.clone(),
                        policy.clone(),
                        tk.clone(),
                        label.clone(),
                    );
                    let mut pts: Vec<Point> = points
                        .get(&key)
                        .map(|b| b.values().map(|p| mean_point(p)).collect())
                        .unwrap_or_default();
                    // A compressor not crossed with this checkpoint has no curve (the
                    // reference alone is not one).
                    if pts.is_empty() {
                        continue;
                    }
                    if let Some(r) =
                        reference.get(&(model.name.clone(), policy.clone(), tk.clone()))
                    {
                        if !pts.iter().any(|p| p.budget >= 1.0) {
                            pts.push(mean_point(r));
                        }
                    }
                    pts.sort_by(|a, b| a.budget.total_cmp(&b.budget));
                    curves.push(Curve {
                        model: model.name.clone(),
                        policy: policy.clone(),
                        compressor: label.clone(),
                        task: task_labels[&tk].clone(),
                        metric: metric.clone(),
                        points: pts,
                    });
                }
            }
        }
    }
    curves
}

/// The AUC gain of each policy over the baseline (`none`) on the same model, compressor and
/// task, signed so that positive is better: `(model, policy, compressor, task, gain)`.
pub fn gains(curves: &[Curve]) -> Vec<(String, String, String, String, f64)> {
    let mut out = Vec::new();
    for c in curves.iter().filter(|c| c.policy != BASELINE_POLICY) {
        let base = curves.iter().find(|b| {
            b.policy == BASELINE_POLICY
                && b.model == c.model
                && b.compressor == c.compressor
                && b.task == c.task
        });
        if let Some(b) = base {
            let d = c.auc() - b.auc();
            let gain = if higher_is_better(&c.metric) { d } else { -d };
            out.push((
                c.model.clone(),
                c.policy.clone(),
                c.compressor.clone(),
                c.task.clone(),
                gain,
            ));
        }
    }
    out
}
