//! `kvcat report DIR`: `report.md` (area under the quality–budget curve per policy,
//! compressor and task; the KV-CAT-minus-`none` gain; paired gains with bootstrap intervals
//! and significance marks; the uncompressed references), quality-vs-budget figures
//! (`plots/<model>.svg` and `.png`) and gain heatmaps (`plots/gain-<model>-<task>.svg` and
//! `.png`).
//!
//! - [`curves`]: curves, normalised AUC, gains;
//! - [`paired`]: per-example paired comparisons with `none` ([`crate::stats`] intervals);
//! - [`matrix`]: the paired sections of `report.md` and the heatmaps' contents;
//! - [`plot`], [`heatmap`]: the figures (cargo feature `figures`, on by default; without it
//!   `report.md` is complete but for the figures, and says so).

pub mod curves;
#[cfg(feature = "figures")]
pub mod heatmap;
pub mod matrix;
pub mod paired;
#[cfg(feature = "figures")]
pub mod plot;

use crate::results::{ExampleScore, ResultRow};
use crate::runner::grid::Grid;
use crate::runner::manifest::{Manifest, BASELINE_POLICY, REFERENCE_COMPRESSOR};
use crate::runner::store::{recover, MANIFEST_FILE};
use crate::stats::Bootstrap;
use curves::{build_curves, gains, higher_is_better, model_label, Curve};
use kvcat_core::{Error, Result};
use paired::{paired_gains, PairedGain};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// The report file name.
pub const REPORT_FILE: &str = "report.md";
/// The figures folder.
pub const PLOTS_DIR: &str = "plots";

/// Whether this build draws figures (the `figures` cargo feature of kvcat-bench).
pub const FIGURES_ENABLED: bool = cfg!(feature = "figures");

/// What `report.md` and stderr say when a build without the `figures` feature skips figures.
pub const FIGURES_SKIPPED: &str = "Figures were skipped: this kvcat binary was built without \
the `figures` feature of kvcat-bench. Every CSV and markdown table is written; rebuild with \
default features to draw the SVG/PNG figures.";

/// Says [`FIGURES_SKIPPED`] on stderr, once per process (`bench` and `analyze` may write
/// several reports and profiles).
pub fn note_figures_skipped() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| eprintln!("note: {FIGURES_SKIPPED}"));
}

/// What `kvcat report` wrote.
#[derive(Debug, Default)]
pub struct ReportSummary {
    pub report: PathBuf,
    pub figures: Vec<PathBuf>,
    pub curves: usize,
    pub cells: usize,
    pub grid_cells: usize,
    /// Paired AUC comparisons with `none` (all metrics), and how many are significant.
    pub paired_aucs: usize,
    pub significant_aucs: usize,
}

/// Reads a results directory: its resolved manifest and finished rows.
pub fn load(dir: &Path) -> Result<(Manifest, Vec<ResultRow>, usize)> {
    let (m, rows, _, cells) = load_with_examples(dir)?;
    Ok((m, rows, cells))
}

/// Reads a results directory: its resolved manifest, finished rows, their per-example scores
/// (empty for directories written before `examples.csv`) and the number of finished cells.
pub fn load_with_examples(
    dir: &Path,
) -> Result<(Manifest, Vec<ResultRow>, Vec<ExampleScore>, usize)> {
    let mpath = dir.join(MANIFEST_FILE);
    if !mpath.exists() {
        return Err(Error::invalid(format!(
            "{} is not a kvcat results directory (no {MANIFEST_FILE}); run `kvcat bench` or `kvcat merge` first",
            dir.display()
        )));
    }
    let m = Manifest::read_resolved(&mpath)?;
    let rec = recover(dir)?;
    Ok((m, rec.rows(), rec.examples(), rec.cells.len()))
}

fn fmt_v(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_gain(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else {
        format!("{v:+.3}")
    }
}

/// The paired statistics that go into a report.
pub struct PairedSection<'a> {
    pub gains: &'a [PairedGain],
    /// Whether the directory has per-example scores at all.
    pub has_examples: bool,
    pub bootstrap: Bootstrap,
}

/// Renders `report.md` from curves and paired statistics.
pub fn render(
    m: &Manifest,
    rows: &[ResultRow],
    curves: &[Curve],
    paired: &PairedSection,
    cells: usize,
    grid_cells: usize,
    figures: &[PathBuf],
) -> String {
    let mut s = String::new();
    render_header(&mut s, m, rows, cells, grid_cells);
    if !FIGURES_ENABLED {
        let _ = writeln!(s, "> **Note:** {FIGURES_SKIPPED}\n");
    }
    let axes = Axes::of(m, curves);
    render_auc(&mut s, &axes, curves);
    render_gains(&mut s, &axes, curves);
    s.push_str(&matrix::render_paired(
        m,
        paired.gains,
        paired.has_examples,
        &paired.bootstrap,
    ));
    render_heatmaps(&mut s, figures);
    render_reference(&mut s, rows);
    render_curve_figures(&mut s, figures);
    s
}

/// The title, the run, its completeness, devices and revisions, and what AUC means.
fn render_header(
    s: &mut String,
    m: &Manifest,
    rows: &[ResultRow],
    cells: usize,
    grid_cells: usize,
) {
    let run_id = rows.first().map(|r| r.run_id.clone()).unwrap_or_default();
    let _ = writeln!(s, "# kvcat report: {}\n", m.name);
    let revs: BTreeSet<&str> = rows.iter().map(|r| r.git_rev.as_str()).collect();
    let devices: BTreeSet<String> = rows
        .iter()
        .map(|r| format!("{} {}", r.device, r.dtype))
        .collect();
    let _ = writeln!(
        s,
        "Run `{run_id}`: {cells} of {grid_cells} cells finished, {} rows. Device: {}. Git: {}.\n",
        rows.len(),
        devices.into_iter().collect::<Vec<_>>().join(", "),
        revs.into_iter().collect::<Vec<_>>().join(", ")
    );
    if cells < grid_cells {
        let _ = writeln!(
            s,
            "**Incomplete:** {} cells are missing; figures and tables show what exists.\n",
            grid_cells - cells
        );
    }
    let _ = writeln!(
        s,
        "**AUC** is the area under the quality–budget curve divided by the budget range: the mean quality over the swept budgets ({}), including the uncompressed reference at budget 1.0 (trapezoid rule). It is in the metric's own units; ↑ marks metrics where higher is better, ↓ lower.\n",
        m.budgets.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
    );
}

/// The rows and columns of the report's tables, in manifest and first-seen order.
struct Axes<'a> {
    models: Vec<&'a str>,
    /// `(task label, metric)`.
    tasks: Vec<(String, String)>,
    comps: Vec<String>,
    policies: Vec<String>,
}

impl<'a> Axes<'a> {
    fn of(m: &'a Manifest, curves: &[Curve]) -> Axes<'a> {
        let models: Vec<&str> = m.model.iter().map(|x| x.name.as_str()).collect();
        let mut tasks: Vec<(String, String)> = Vec::new();
        let mut comps: Vec<String> = Vec::new();
        let mut policies: Vec<String> = Vec::new();
        for c in curves {
            if !tasks.iter().any(|(t, _)| t == &c.task) {
                tasks.push((c.task.clone(), c.metric.clone()));
            }
            if !comps.contains(&c.compressor) {
                comps.push(c.compressor.clone());
            }
            if !policies.contains(&c.policy) {
                policies.push(c.policy.clone());
            }
        }
        Axes {
            models,
            tasks,
            comps,
            policies,
        }
    }
}

/// The AUC of every curve: one table per task, rows model × policy, columns compressors.
fn render_auc(s: &mut String, axes: &Axes, curves: &[Curve]) {
    let Axes {
        models,
        tasks,
        comps,
        policies,
    } = axes;
    let _ = writeln!(s, "## Area under the quality–budget curve\n");
    for (task, metric) in tasks.iter() {
        let arrow = if higher_is_better(metric) {
            "↑"
        } else {
            "↓"
        };
        let _ = writeln!(s, "### {task} — `{metric}` {arrow}\n");
        let _ = writeln!(s, "| model | policy | {} |", comps.join(" | "));
        let _ = writeln!(s, "|---|---|{}", "---:|".repeat(comps.len()));
        for model in models.iter() {
            for policy in policies.iter() {
                let vals: Vec<String> = comps
                    .iter()
                    .map(|k| {
                        curves
                            .iter()
                            .find(|c| {
                                c.model == *model
                                    && &c.policy == policy
                                    && &c.task == task
                                    && &c.compressor == k
                            })
                            .map(|c| fmt_v(c.auc()))
                            .unwrap_or_else(|| "–".into())
                    })
                    .collect();
                if vals.iter().all(|v| v == "–") {
                    continue;
                }
                let _ = writeln!(s, "| {model} | {policy} | {} |", vals.join(" | "));
            }
        }
        let _ = writeln!(s);
    }
}

/// Each policy's AUC minus `none`'s, per model, compressor and task.
fn render_gains(s: &mut String, axes: &Axes, curves: &[Curve]) {
    let Axes {
        models,
        tasks,
        comps,
        policies,
    } = axes;
    let g = gains(curves);
    let _ = writeln!(s, "## KV-CAT gain over `{BASELINE_POLICY}`\n");
    if g.is_empty() {
        let _ = writeln!(
            s,
            "No policy besides `{BASELINE_POLICY}` was evaluated against it.\n"
        );
    } else {
        let _ = writeln!(
            s,
            "AUC of each policy minus AUC of `{BASELINE_POLICY}` (same model, compressor and task), signed so that **positive is better** (for ↓ metrics the difference is negated).\n"
        );
        let task_names: Vec<&String> = tasks.iter().map(|(t, _)| t).collect();
        let _ = writeln!(
            s,
            "| model | policy | compressor | {} |",
            task_names
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(s, "|---|---|---|{}", "---:|".repeat(task_names.len()));
        for model in models.iter() {
            for policy in policies.iter().filter(|p| *p != BASELINE_POLICY) {
                for k in comps.iter() {
                    let vals: Vec<f64> = task_names
                        .iter()
                        .map(|t| {
                            g.iter()
                                .find(|x| {
                                    x.0 == *model && &x.1 == policy && &x.2 == k && &x.3 == *t
                                })
                                .map(|x| x.4)
                                .unwrap_or(f64::NAN)
                        })
                        .collect();
                    if vals.iter().all(|v| v.is_nan()) {
                        continue;
                    }
                    let _ = writeln!(
                        s,
                        "| {model} | {policy} | {k} | {} |",
                        vals.iter()
                            .map(|v| fmt_gain(*v))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    );
                }
            }
        }
        let _ = writeln!(s);
    }
}

/// The uncompressed reference rows (budget 1.0).
fn render_reference(s: &mut String, rows: &[ResultRow]) {
    let _ = writeln!(s, "## Uncompressed reference (budget 1.0)\n");
    let _ = writeln!(s, "| model | policy | task | metric | value | stderr | n |");
    let _ = writeln!(s, "|---|---|---|---|---:|---:|---:|");
    for r in rows.iter().filter(|r| r.compressor == REFERENCE_COMPRESSOR) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            model_label(r),
            r.policy,
            r.task,
            r.metric,
            fmt_v(r.value),
            fmt_v(r.stderr),
            r.n
        );
    }
    let _ = writeln!(s);
}

/// Links to the quality–budget figures.
fn render_curve_figures(s: &mut String, figures: &[PathBuf]) {
    let curve_figures: Vec<&PathBuf> = figures.iter().filter(|f| !is_heatmap(f)).collect();
    if !curve_figures.is_empty() {
        let _ = writeln!(s, "## Quality vs budget\n");
        for f in curve_figures
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "png"))
        {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = writeln!(s, "![{name}]({PLOTS_DIR}/{name})\n");
        }
    }
}

/// The file-name prefix of heatmap figures.
pub const HEATMAP_PREFIX: &str = "gain-";

fn is_heatmap(f: &Path) -> bool {
    f.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(HEATMAP_PREFIX))
}

/// The `## KV-CAT matrix` section: links to the heatmap PNGs.
fn render_heatmaps(s: &mut String, figures: &[PathBuf]) {
    let pngs: Vec<String> = figures
        .iter()
        .filter(|f| is_heatmap(f) && f.extension().is_some_and(|e| e == "png"))
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if pngs.is_empty() {
        return;
    }
    let _ = writeln!(s, "## KV-CAT matrix\n");
    let _ = writeln!(s, "AUC gain over `{BASELINE_POLICY}` on each task's report metric (positive is better; blue better, red worse); `*` and a heavy border mark a 95% interval that excludes 0.\n");
    for name in pngs {
        let _ = writeln!(s, "![{name}]({PLOTS_DIR}/{name})\n");
    }
}

/// A file-name-safe form of a label (letters, digits, `-` and `_`; others become `_`).
#[cfg(feature = "figures")]
fn file_safe(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes one heatmap per (model, task); returns the files.
#[cfg(feature = "figures")]
fn write_heatmaps(
    plots: &Path,
    m: &Manifest,
    curves: &[Curve],
    paired: &[PairedGain],
) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (model, task, map) in matrix::heatmaps(m, curves, paired) {
        let stem = plots.join(format!(
            "{HEATMAP_PREFIX}{}-{}",
            file_safe(&model),
            file_safe(&task)
        ));
        heatmap::write_heatmap(&stem, &map)?;
        files.push(stem.with_extension("svg"));
        files.push(stem.with_extension("png"));
    }
    Ok(files)
}

/// Writes each model's quality-vs-budget figure and the gain heatmaps under `dir/plots`;
/// returns the files.
#[cfg(feature = "figures")]
fn write_figures(
    dir: &Path,
    m: &Manifest,
    curves: &[Curve],
    gains: &[PairedGain],
) -> Result<Vec<PathBuf>> {
    let plots = dir.join(PLOTS_DIR);
    std::fs::create_dir_all(&plots).map_err(|e| Error::io(&plots, e))?;
    let mut figures = Vec::new();
    for model in &m.model {
        if !curves.iter().any(|c| c.model == model.name) {
            continue;
        }
        let stem = plots.join(&model.name);
        plot::write_figure(
            &stem,
            &format!("{} — {}", m.name, model.name),
            curves,
            &model.name,
        )?;
        figures.push(stem.with_extension("svg"));
        figures.push(stem.with_extension("png"));
    }
    figures.extend(write_heatmaps(&plots, m, curves, gains)?);
    Ok(figures)
}

/// A build without the `figures` feature draws nothing and says so on stderr.
#[cfg(not(feature = "figures"))]
fn write_figures(
    _dir: &Path,
    _m: &Manifest,
    _curves: &[Curve],
    _gains: &[PairedGain],
) -> Result<Vec<PathBuf>> {
    note_figures_skipped();
    Ok(Vec::new())
}

/// Writes `report.md` and the figures for a results directory.
pub fn write_report(dir: &Path) -> Result<ReportSummary> {
    let (m, rows, examples, cells) = load_with_examples(dir)?;
    if rows.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no finished cells yet",
            dir.display()
        )));
    }
    let grid_cells = Grid::expand(&m).map(|g| g.cells.len()).unwrap_or(cells);
    let curves = build_curves(&m, &rows);
    let bootstrap = Bootstrap::default();
    let gains = paired_gains(&m, &rows, &examples, &bootstrap);
    let figures = write_figures(dir, &m, &curves, &gains)?;
    let paired = PairedSection {
        gains: &gains,
        has_examples: !examples.is_empty(),
        bootstrap,
    };
    let text = render(&m, &rows, &curves, &paired, cells, grid_cells, &figures);
    let report = dir.join(REPORT_FILE);
    crate::runner::store::write_atomic(&report, text.as_bytes())?;
    Ok(ReportSummary {
        report,
        figures,
        curves: curves.len(),
        cells,
        grid_cells,
        paired_aucs: gains.iter().filter(|g| g.budget.is_none()).count(),
        significant_aucs: gains
            .iter()
            .filter(|g| g.budget.is_none() && g.interval.significant())
            .count(),
    })
}
