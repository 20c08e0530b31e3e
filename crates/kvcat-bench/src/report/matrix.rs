//! The KV-CAT matrix in `report.md` and as heatmaps: paired AUC gains over `none` with their
//! intervals per (task, metric), the per-budget paired differences, and one heatmap per
//! (model, task) on the task's report metric.

use super::curves::{gains, higher_is_better, Curve};
use super::paired::{PairedGain, REFERENCE_BUDGET};
use crate::runner::manifest::{Manifest, BASELINE_POLICY, REFERENCE_COMPRESSOR};
use crate::stats::{Bootstrap, Interval};
use std::fmt::Write as _;

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeatCell {
    /// AUC gain over `none`, positive is better.
    pub gain: f64,
    /// The 95% bootstrap interval, when per-example scores exist.
    pub interval: Option<(f64, f64)>,
    pub significant: bool,
}

/// A policy × compressor matrix of one model and task.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    pub title: String,
    /// A second title line (metric, units, what the marks mean).
    pub subtitle: String,
    /// Policies.
    pub rows: Vec<String>,
    /// Compressors.
    pub cols: Vec<String>,
    /// `cells[row][col]`; `None` where there is no comparison.
    pub cells: Vec<Vec<Option<HeatCell>>>,
}

/// The significance mark in tables.
pub const MARK: &str = "✱";

/// Decimals that show values up to `max_abs` with at least two significant digits (3 to 6).
pub fn decimals_for(max_abs: f64) -> usize {
    if !max_abs.is_finite() || max_abs <= 0.0 {
        return 3;
    }
    ((-max_abs.log10()).ceil() as i64 + 1).clamp(3, 6) as usize
}

/// `v` with a sign and `decimals` decimals; a value that rounds to zero reads `+0.000…`.
pub fn fmt_signed(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let s = format!("{v:+.decimals$}");
    match s.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => format!("+{rest}"),
        _ => s,
    }
}

/// `+0.012 [−0.003, +0.021] ✱`
pub fn fmt_interval(i: &Interval, decimals: usize) -> String {
    let mark = if i.significant() {
        format!(" {MARK}")
    } else {
        String::new()
    };
    let f = |v| fmt_signed(v, decimals);
    format!("{} [{}, {}]{mark}", f(i.mean), f(i.lo), f(i.hi))
}

fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for x in items {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

fn find<'a>(
    paired: &'a [PairedGain],
    key: (&str, &str, &str),
    task: &str,
    metric: &str,
    budget: Option<&str>,
) -> Option<&'a PairedGain> {
    let (model, policy, compressor) = key;
    paired.iter().find(|g| {
        g.model == model
            && g.policy == policy
            && g.compressor == compressor
            && g.task == task
            && g.metric == metric
            && g.budget.as_deref() == budget
    })
}

/// The `## Paired gains` section of `report.md`.
pub fn render_paired(
    m: &Manifest,
    paired: &[PairedGain],
    has_examples: bool,
    cfg: &Bootstrap,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Paired gains over `{BASELINE_POLICY}` ({:.0}% bootstrap intervals)\n",
        cfg.level * 100.0
    );
    if !has_examples || paired.is_empty() {
        let why = if has_examples {
            format!("no policy besides `{BASELINE_POLICY}` shares examples with it")
        } else {
            "no per-example data (`examples.csv` is absent or empty: the results were written by an older kvcat)".into()
        };
        let _ = writeln!(
            s,
            "No paired statistics: {why}. The gains above are differences of means.\n"
        );
        return s;
    }
    let seeds = if m.seeds.is_empty() {
        String::new()
    } else {
        format!(" seeds (pairing each policy with `{BASELINE_POLICY}` trained with the same seed), then")
    };
    let _ = writeln!(
        s,
        "Each policy is compared with `{BASELINE_POLICY}` on the same examples: per example, the AUC of its own quality–budget curve (as above), policy minus `{BASELINE_POLICY}`, signed so that **positive is better**. A cell is the mean difference and a {:.0}% percentile-bootstrap interval ({} resamples of{seeds} examples; fixed seed {}). {MARK} marks an interval that excludes 0. `ppl` is not paired: it is exp of the mean NLL; see `nll`.\n",
        cfg.level * 100.0,
        cfg.resamples,
        cfg.seed
    );
    let groups: Vec<(&str, &str)> = distinct(paired.iter().map(|g| g.task.as_str()))
        .into_iter()
        .flat_map(|t| {
            distinct(
                paired
                    .iter()
                    .filter(|g| g.task == t)
                    .map(|g| g.metric.as_str()),
            )
            .into_iter()
            .map(move |mt| (t, mt))
        })
        .collect();
    for (task, metric) in groups {
        render_group(&mut s, paired, task, metric);
    }
    s
}

/// The gain tables of one task and metric: a heading, the AUC gains per compressor, then
/// the gains per budget.
fn render_group(s: &mut String, paired: &[PairedGain], task: &str, metric: &str) {
    let group = GainGroup::new(paired, task, metric);
    group.heading(s);
    group.auc_table(s);
    group.budget_table(s);
    let _ = writeln!(s);
}

/// The paired gains of one task and metric, with the rows and columns of their tables.
struct GainGroup<'a> {
    paired: &'a [PairedGain],
    task: &'a str,
    metric: &'a str,
    here: Vec<&'a PairedGain>,
    /// Decimals of every interval in the group.
    dp: usize,
    models: Vec<&'a str>,
    policies: Vec<&'a str>,
    /// Compressors other than the uncompressed reference.
    comps: Vec<&'a str>,
    /// Budgets other than the uncompressed reference.
    budgets: Vec<&'a str>,
}

impl<'a> GainGroup<'a> {
    fn new(paired: &'a [PairedGain], task: &'a str, metric: &'a str) -> GainGroup<'a> {
        let here: Vec<&PairedGain> = paired
            .iter()
            .filter(|g| g.task == task && g.metric == metric)
            .collect();
        let dp = decimals_for(
            here.iter()
                .map(|g| g.interval.mean.abs())
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max),
        );
        let models = distinct(here.iter().map(|g| g.model.as_str()));
        let policies = distinct(here.iter().map(|g| g.policy.as_str()));
        let comps = distinct(
            here.iter()
                .map(|g| g.compressor.as_str())
                .filter(|c| *c != REFERENCE_COMPRESSOR),
        );
        let budgets = distinct(
            here.iter()
                .filter_map(|g| g.budget.as_deref())
                .filter(|b| *b != REFERENCE_BUDGET),
        );
        GainGroup {
            paired,
            task,
            metric,
            here,
            dp,
            models,
            policies,
            comps,
            budgets,
        }
    }

    /// `### task — `metric` ↑ (N examples, K seeds)`.
    fn heading(&self, s: &mut String) {
        let arrow = if higher_is_better(self.metric) {
            "↑"
        } else {
            "↓"
        };
        let size = self.here.first().map(|g| g.interval).map(|i| {
            let seeds = if i.seeds > 1 {
                format!(", {} seeds", i.seeds)
            } else {
                String::new()
            };
            format!("{} examples{seeds}", i.examples / i.seeds.max(1))
        });
        let _ = writeln!(
            s,
            "### {} — `{}` {arrow} ({})\n",
            self.task,
            self.metric,
            size.unwrap_or_default()
        );
    }

    /// The interval of `(model, policy, compressor)` at `budget` (`None`: the AUC gain),
    /// or `–` when there is none.
    fn cell(&self, key: (&str, &str, &str), budget: Option<&str>) -> String {
        find(self.paired, key, self.task, self.metric, budget)
            .map_or("–".into(), |g| fmt_interval(&g.interval, self.dp))
    }

    /// One row per model × policy, one column per compressor: the AUC gains.
    fn auc_table(&self, s: &mut String) {
        let comps = &self.comps;
        let _ = writeln!(s, "AUC gain:\n\n| model | policy | {} |", comps.join(" | "));
        let _ = writeln!(s, "|---|---|{}", "---:|".repeat(comps.len()));
        for &model in &self.models {
            for &policy in &self.policies {
                let cells: Vec<String> = comps
                    .iter()
                    .map(|&c| self.cell((model, policy, c), None))
                    .collect();
                let _ = writeln!(s, "| {model} | {policy} | {} |", cells.join(" | "));
            }
        }
    }

    /// One row per model × policy × compressor, one column per budget, then the
    /// uncompressed reference: the gains at each budget alone.
    fn budget_table(&self, s: &mut String) {
        let budgets = &self.budgets;
        let _ = writeln!(s, "\nPer budget (policy − `{BASELINE_POLICY}` at each budget alone; budget {REFERENCE_BUDGET} is uncompressed, the same for every compressor):\n");
        let _ = writeln!(
            s,
            "| model | policy | compressor | {} | {REFERENCE_BUDGET} |",
            budgets.join(" | ")
        );
        let _ = writeln!(s, "|---|---|---|{}---:|", "---:|".repeat(budgets.len()));
        for &model in &self.models {
            for &policy in &self.policies {
                let reference = self.cell(
                    (model, policy, REFERENCE_COMPRESSOR),
                    Some(REFERENCE_BUDGET),
                );
                for &c in &self.comps {
                    let cells: Vec<String> = budgets
                        .iter()
                        .map(|&b| self.cell((model, policy, c), Some(b)))
                        .collect();
                    let _ = writeln!(
                        s,
                        "| {model} | {policy} | {c} | {} | {reference} |",
                        cells.join(" | ")
                    );
                }
            }
        }
    }
}

/// One heatmap per (model, task) on the task's report metric: paired intervals where there
/// are per-example scores, else the difference of the curves' AUCs without an interval.
/// Returns `(model, task, heatmap)`.
pub fn heatmaps(
    m: &Manifest,
    curves: &[Curve],
    paired: &[PairedGain],
) -> Vec<(String, String, Heatmap)> {
    let mean_gains = gains(curves);
    let mut out = Vec::new();
    for model in m.model.iter().map(|x| x.name.as_str()) {
        let mine: Vec<&Curve> = curves.iter().filter(|c| c.model == model).collect();
        for task in distinct(mine.iter().map(|c| c.task.as_str())) {
            let of_task: Vec<&&Curve> = mine.iter().filter(|c| c.task == task).collect();
            let metric = of_task[0].metric.as_str();
            let mut rows = distinct(
                of_task
                    .iter()
                    .map(|c| c.policy.as_str())
                    .filter(|p| *p != BASELINE_POLICY),
            );
            // Trained policies in manifest order, then `base`.
            rows.sort_by_key(|p| {
                m.policy
                    .iter()
                    .position(|x| x.name == *p)
                    .unwrap_or(usize::MAX)
            });
            let cols = distinct(of_task.iter().map(|c| c.compressor.as_str()));
            if rows.is_empty() || !of_task.iter().any(|c| c.policy == BASELINE_POLICY) {
                continue;
            }
            let cell = |policy: &str, comp: &str| -> Option<HeatCell> {
                if let Some(g) = find(paired, (model, policy, comp), task, metric, None) {
                    let i = g.interval;
                    return Some(HeatCell {
                        gain: i.mean,
                        interval: Some((i.lo, i.hi)),
                        significant: i.significant(),
                    });
                }
                let g = mean_gains
                    .iter()
                    .find(|g| g.0 == model && g.1 == policy && g.2 == comp && g.3 == task)?;
                Some(HeatCell {
                    gain: g.4,
                    interval: None,
                    significant: false,
                })
            };
            let cells: Vec<Vec<Option<HeatCell>>> = rows
                .iter()
                .map(|&p| cols.iter().map(|&c| cell(p, c)).collect())
                .collect();
            let arrow = if higher_is_better(metric) {
                "↑"
            } else {
                "↓"
            };
            let marks = if paired.is_empty() {
                "no per-example data: no intervals".to_string()
            } else {
                "mean [95% interval], * = interval excludes 0".to_string()
            };
            out.push((
                model.to_string(),
                task.to_string(),
                Heatmap {
                    title: format!(
                        "{} — {model} · {task}: AUC gain over {BASELINE_POLICY}",
                        m.name
                    ),
                    subtitle: format!("{metric} {arrow}, positive is better; {marks}"),
                    rows: rows.iter().map(|x| x.to_string()).collect(),
                    cols: cols.iter().map(|x| x.to_string()).collect(),
                    cells,
                },
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_gains_keep_two_significant_digits_and_zero_has_no_minus() {
        assert_eq!(decimals_for(0.0375), 3);
        assert_eq!(decimals_for(0.002), 4);
        assert_eq!(decimals_for(1e-5), 6);
        assert_eq!(decimals_for(0.0), 3);
        assert_eq!(fmt_signed(-0.0001, 3), "+0.000");
        assert_eq!(fmt_signed(-0.0021, 4), "-0.0021");
        assert_eq!(fmt_signed(f64::NAN, 3), "–");
    }
}
