//! Paired comparisons of every policy with `none` on the same examples.
//!
//! For each (model, policy ≠ `none`, compressor, task, metric) and each training seed, every
//! example gets the area under *its own* quality–budget curve (the same normalised trapezoid
//! AUC as [`super::curves::auc`], over the compressed budgets plus the uncompressed
//! reference at 1.0), and the difference policy − `none` on that example is taken, signed so
//! that positive is better. Only budgets and examples present for both policies enter. The
//! differences are summarised by [`crate::stats::paired_interval`]: their mean and a 95%
//! percentile-bootstrap interval, resampling seeds and then examples. The same is done at
//! each budget alone (one point instead of a curve).
//!
//! Because the AUC is linear in the values, the mean paired AUC difference equals the
//! difference of the curves' AUCs when every example is present.
//!
//! `ppl` and `ppl_full` are left out: a cell's perplexity is `exp` of the mean NLL, not a
//! mean over examples, and their paired analysis is that of `nll` and `nll_full`.

use super::curves::{auc, budget_x, compressor_labels, higher_is_better, task_key, task_labels};
use super::curves::{model_label, Point};
use crate::results::{ExampleScore, ResultRow};
use crate::runner::grid::Grid;
use crate::runner::manifest::{Manifest, BASELINE_POLICY, REFERENCE_COMPRESSOR};
use crate::stats::{paired_interval, Bootstrap, Interval};
use kvcat_core::registry::params_string;
use std::collections::{BTreeMap, HashMap};

/// Metrics whose cell value is not a mean over examples, so they are not paired.
pub const UNPAIRED_METRICS: [&str; 2] = ["ppl", "ppl_full"];

/// The budget label of the uncompressed reference in per-budget comparisons.
pub const REFERENCE_BUDGET: &str = "1";

/// One paired comparison of a policy with `none`.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedGain {
    pub model: String,
    pub policy: String,
    /// Compressor label; [`REFERENCE_COMPRESSOR`] for the uncompressed comparison.
    pub compressor: String,
    /// Task label.
    pub task: String,
    pub metric: String,
    /// `None`: the AUC over budgets; `Some(b)`: budget `b` alone (as written in the manifest,
    /// [`REFERENCE_BUDGET`] for the uncompressed reference).
    pub budget: Option<String>,
    /// Policy − `none`, positive is better.
    pub interval: Interval,
}

/// Where a cell sits: everything but the example and metric.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Slot {
    model: String,
    policy: String,
    seed: Option<u64>,
    task: String,
    /// Compressor label, or [`REFERENCE_COMPRESSOR`].
    compressor: String,
    budget: String,
}

/// Per-example values of one metric in one cell, and the cell's budget coordinate.
#[derive(Debug, Default)]
struct Scores {
    x: f64,
    values: HashMap<String, f64>,
}

/// Per-example scores indexed by slot and metric.
#[derive(Default)]
struct Table {
    cells: HashMap<(Slot, String), Scores>,
    /// Seeds seen per (model, policy, task).
    seeds: BTreeMap<(String, String, String), Vec<Option<u64>>>,
}

/// The training seed of each checkpoint id, from the manifest's grid.
fn checkpoint_seeds(m: &Manifest) -> HashMap<String, Option<u64>> {
    Grid::expand(m)
        .map(|g| {
            g.checkpoints
                .iter()
                .map(|c| (c.id.clone(), c.train_seed))
                .collect()
        })
        .unwrap_or_default()
}

/// The slot of each cell, from its first result row.
fn cell_slots(m: &Manifest, rows: &[ResultRow]) -> HashMap<String, (Slot, f64)> {
    let seeds = checkpoint_seeds(m);
    let comps = compressor_labels(m);
    let tasks = task_labels(m);
    let mut out = HashMap::new();
    for r in rows {
        if out.contains_key(&r.cell_id) {
            continue;
        }
        let ckpt = r.model.split_once('@').map(|(_, c)| c).unwrap_or_default();
        let compressor = if r.compressor == REFERENCE_COMPRESSOR {
            REFERENCE_COMPRESSOR.to_string()
        } else {
            comps
                .get(&(r.compressor.clone(), r.compressor_params.clone()))
                .cloned()
                .unwrap_or_else(|| r.compressor.clone())
        };
        let tk = task_key(&r.task, &r.task_params);
        let slot = Slot {
            model: model_label(r).to_string(),
            policy: r.policy.clone(),
            seed: seeds.get(ckpt).copied().flatten(),
            task: tasks.get(&tk).cloned().unwrap_or_else(|| r.task.clone()),
            compressor,
            budget: if r.compressor == REFERENCE_COMPRESSOR {
                REFERENCE_BUDGET.to_string()
            } else {
                r.budget.clone()
            },
        };
        let x = if r.compressor == REFERENCE_COMPRESSOR {
            1.0
        } else {
            budget_x(r)
        };
        out.insert(r.cell_id.clone(), (slot, x));
    }
    out
}

impl Table {
    fn build(m: &Manifest, rows: &[ResultRow], examples: &[ExampleScore]) -> Table {
        let slots = cell_slots(m, rows);
        let mut t = Table::default();
        for e in examples {
            if UNPAIRED_METRICS.contains(&e.metric.as_str()) {
                continue;
            }
            let Some((slot, x)) = slots.get(&e.cell_id) else {
                continue;
            };
            let seeds = t
                .seeds
                .entry((slot.model.clone(), slot.policy.clone(), slot.task.clone()))
                .or_default();
            if !seeds.contains(&slot.seed) {
                seeds.push(slot.seed);
            }
            let s = t.cells.entry((slot.clone(), e.metric.clone())).or_default();
            s.x = *x;
            s.values.insert(e.example.clone(), e.value);
        }
        t
    }

    fn get(&self, slot: &Slot, metric: &str) -> Option<&Scores> {
        self.cells.get(&(slot.clone(), metric.to_string()))
    }
}

/// What one comparison needs: the policy's and `none`'s slots at one compressor.
struct Pair<'a> {
    table: &'a Table,
    metric: &'a str,
    /// The compressed budgets of the manifest, in order.
    budgets: &'a [String],
    sign: f64,
}

/// The policy's slot (its seed, no compressor yet) and the seed of `none` it pairs with.
type Side = (Slot, Option<u64>);

impl Pair<'_> {
    /// The (policy, `none`) scores at `budget` of `compressor` (reference: budget "1").
    fn at(&self, side: &Side, compressor: &str, budget: &str) -> Option<(&Scores, &Scores)> {
        let p = Slot {
            compressor: compressor.to_string(),
            budget: budget.to_string(),
            ..side.0.clone()
        };
        let n = Slot {
            policy: BASELINE_POLICY.to_string(),
            seed: side.1,
            ..p.clone()
        };
        Some((
            self.table.get(&p, self.metric)?,
            self.table.get(&n, self.metric)?,
        ))
    }

    /// Per-example differences at one budget.
    fn budget_diffs(&self, side: &Side, compressor: &str, budget: &str) -> Vec<f64> {
        let Some((p, n)) = self.at(side, compressor, budget) else {
            return Vec::new();
        };
        let mut ids: Vec<&String> = p.values.keys().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| Some(self.sign * (p.values[id] - n.values.get(id)?)))
            .collect()
    }

    /// Per-example differences of the AUC over the budgets both policies have (none when they
    /// share no compressed budget).
    fn auc_diffs(&self, side: &Side, compressor: &str) -> Vec<f64> {
        let mut cells: Vec<(&Scores, &Scores)> = self
            .budgets
            .iter()
            .filter_map(|b| self.at(side, compressor, b))
            .collect();
        // No compressed budget in common (a compressor crossed with one side only): no AUC.
        if cells.is_empty() {
            return Vec::new();
        }
        cells.extend(self.at(side, REFERENCE_COMPRESSOR, REFERENCE_BUDGET));
        cells.sort_by(|a, b| a.0.x.total_cmp(&b.0.x));
        let mut ids: Vec<&String> = cells[0].0.values.keys().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| {
                let mut p = Vec::with_capacity(cells.len());
                let mut n = Vec::with_capacity(cells.len());
                for (cp, cn) in &cells {
                    p.push(point(cp.x, *cp.values.get(id)?));
                    n.push(point(cn.x, *cn.values.get(id)?));
                }
                Some(self.sign * (auc(&p) - auc(&n)))
            })
            .collect()
    }
}

fn point(budget: f64, value: f64) -> Point {
    Point {
        budget,
        value,
        stderr: 0.0,
    }
}

/// Every paired comparison of a results directory, in manifest order (models, policies,
/// tasks, metrics, compressors; the AUC first, then each budget, then the reference).
/// Empty when there are no per-example scores.
pub fn paired_gains(
    m: &Manifest,
    rows: &[ResultRow],
    examples: &[ExampleScore],
    cfg: &Bootstrap,
) -> Vec<PairedGain> {
    let table = Table::build(m, rows, examples);
    let budgets: Vec<String> = m
        .compressed_budgets()
        .iter()
        .map(|b| b.to_string())
        .collect();
    let mut metrics: Vec<&str> = Vec::new();
    for e in examples {
        if !metrics.contains(&e.metric.as_str()) && !UNPAIRED_METRICS.contains(&e.metric.as_str()) {
            metrics.push(&e.metric);
        }
    }
    let labels = compressor_labels(m);
    let comps: Vec<&String> = m
        .compressor
        .iter()
        .filter_map(|c| labels.get(&(c.name.clone(), params_string(&c.params))))
        .collect();
    let mut out = Vec::new();
    for ((model, policy, task), seeds) in &table.seeds {
        if policy == BASELINE_POLICY {
            continue;
        }
        let sides = sides(&table, (model, policy, task), seeds);
        for metric in &metrics {
            let pair = Pair {
                table: &table,
                metric,
                budgets: &budgets,
                sign: if higher_is_better(metric) { 1.0 } else { -1.0 },
            };
            let mut push = |compressor: &str, budget: Option<&str>, diffs: Vec<Vec<f64>>| {
                if let Some(interval) = paired_interval(&diffs, cfg) {
                    out.push(PairedGain {
                        model: model.clone(),
                        policy: policy.clone(),
                        compressor: compressor.to_string(),
                        task: task.clone(),
                        metric: metric.to_string(),
                        budget: budget.map(str::to_string),
                        interval,
                    });
                }
            };
            for c in comps.iter().map(|c| c.as_str()) {
                push(
                    c,
                    None,
                    sides.iter().map(|s| pair.auc_diffs(s, c)).collect(),
                );
                for b in &budgets {
                    let diffs = sides.iter().map(|s| pair.budget_diffs(s, c, b));
                    push(c, Some(b), diffs.collect());
                }
            }
            let diffs = sides
                .iter()
                .map(|s| pair.budget_diffs(s, REFERENCE_COMPRESSOR, REFERENCE_BUDGET));
            push(
                REFERENCE_COMPRESSOR,
                Some(REFERENCE_BUDGET),
                diffs.collect(),
            );
        }
    }
    order(m, out)
}

/// Which seeds pair: a policy trained per seed pairs with `none` of the same seed; a policy
/// without seeds (`base`) pairs with every seed of `none`.
fn sides(
    table: &Table,
    (model, policy, task): (&String, &String, &String),
    seeds: &[Option<u64>],
) -> Vec<Side> {
    let key = (model.clone(), BASELINE_POLICY.to_string(), task.clone());
    let none_seeds = table.seeds.get(&key).cloned().unwrap_or_default();
    let pairs: Vec<(Option<u64>, Option<u64>)> = if seeds == [None] {
        none_seeds.iter().map(|s| (None, *s)).collect()
    } else {
        seeds
            .iter()
            .filter(|s| none_seeds.contains(s))
            .map(|s| (*s, *s))
            .collect()
    };
    let slot = |seed: Option<u64>| Slot {
        model: model.clone(),
        policy: policy.clone(),
        seed,
        task: task.clone(),
        compressor: String::new(),
        budget: String::new(),
    };
    pairs.into_iter().map(|(p, n)| (slot(p), n)).collect()
}

/// Sorts gains into manifest order of models, tasks and policies (the table walks a
/// `BTreeMap`, which orders them by name); the sort is stable, so metrics, compressors and
/// budgets keep their order.
fn order(m: &Manifest, mut gains: Vec<PairedGain>) -> Vec<PairedGain> {
    let labels = task_labels(m);
    let tasks: Vec<&String> = m
        .task
        .iter()
        .filter_map(|t| labels.get(&task_key(&t.name, &params_string(&t.params))))
        .collect();
    let rank = |g: &PairedGain| {
        let last = usize::MAX;
        let model = m.model.iter().position(|x| x.name == g.model);
        let task = tasks.iter().position(|t| **t == g.task);
        let policy = m.policy.iter().position(|p| p.name == g.policy);
        let [model, task, policy] = [model, task, policy].map(|i| i.unwrap_or(last));
        (model, task, policy)
    };
    gains.sort_by_key(rank);
    gains
}
