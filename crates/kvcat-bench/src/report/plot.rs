//! Quality-vs-budget figures with plotters: one figure per model, one panel per
//! (task, compressor), one line per policy (the `none` baseline in black), with ±1 standard
//! error bars. Written as SVG and PNG.
//!
//! Text uses the DejaVu Sans font embedded by the `dejavu` crate (plotters' `ab_glyph`
//! backend), so no system font or fontconfig is needed.

use super::curves::{higher_is_better, Curve, Point};
use crate::runner::manifest::BASELINE_POLICY;
use kvcat_core::{Error, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// One panel: a task × compressor, with one line per policy.
#[derive(Debug, Clone)]
pub struct Panel {
    pub task: String,
    pub compressor: String,
    pub metric: String,
    pub lines: Vec<(String, Vec<Point>)>,
}

/// Groups one model's curves into panels: rows are tasks, columns are compressors.
pub fn panels(curves: &[Curve], model: &str) -> (Vec<String>, Vec<String>, Vec<Panel>) {
    let mut tasks: Vec<String> = Vec::new();
    let mut comps: Vec<String> = Vec::new();
    for c in curves.iter().filter(|c| c.model == model) {
        if !tasks.contains(&c.task) {
            tasks.push(c.task.clone());
        }
        if !comps.contains(&c.compressor) {
            comps.push(c.compressor.clone());
        }
    }
    let mut out = Vec::new();
    for t in &tasks {
        for k in &comps {
            let lines: Vec<(String, Vec<Point>)> = curves
                .iter()
                .filter(|c| c.model == model && &c.task == t && &c.compressor == k)
                .map(|c| (c.policy.clone(), c.points.clone()))
                .collect();
            let metric = curves
                .iter()
                .find(|c| c.model == model && &c.task == t)
                .map(|c| c.metric.clone())
                .unwrap_or_default();
            out.push(Panel {
                task: t.clone(),
                compressor: k.clone(),
                metric,
                lines,
            });
        }
    }
    (tasks, comps, out)
}

/// Registers the embedded DejaVu Sans as `sans-serif` (once per process).
pub(crate) fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

fn policy_color(policy: &str, index: usize) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    if policy == BASELINE_POLICY {
        RGBColor(0, 0, 0)
    } else {
        COLORS[index % COLORS.len()]
    }
}

const PANEL_W: u32 = 380;
const PANEL_H: u32 = 290;

/// One panel's chart: a line per policy with its points and standard-error bars, and a
/// legend where the lines leave room.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    policies: &[String],
) -> std::result::Result<(), String> {
    let pts: Vec<&Point> = panel.lines.iter().flat_map(|(_, p)| p.iter()).collect();
    if pts.is_empty() {
        return Ok(());
    }
    let (x, y) = panel_axes(&panel.metric, &pts);
    let arrow = if higher_is_better(&panel.metric) {
        "↑"
    } else {
        "↓"
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{} · {}", panel.task, panel.compressor),
            ("sans-serif", 15).into_font().style(FontStyle::Bold),
        )
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("KV budget (kept fraction)")
        .y_desc(format!("{} {arrow}", panel.metric))
        .x_labels(6)
        .y_labels(6)
        .label_style(("sans-serif", 11))
        .axis_desc_style(("sans-serif", 12))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| e.to_string())?;
    for (policy, points) in &panel.lines {
        let i = policies.iter().position(|p| p == policy).unwrap_or(0);
        draw_policy(&mut chart, policy, points, policy_color(policy, i))?;
    }
    chart
        .configure_series_labels()
        .position(if higher_is_better(&panel.metric) {
            // Quality rises with the budget: the upper left is usually empty.
            SeriesLabelPosition::UpperLeft
        } else {
            SeriesLabelPosition::UpperRight
        })
        .label_font(("sans-serif", 11))
        .background_style(WHITE.mix(0.8))
        .border_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The panel's axis ranges `(budget, value)`: values ± stderr with 8% padding (scores in
/// [0, 1] keep that natural axis), budgets up to 1 with 4% padding (at least 0.01).
fn panel_axes(metric: &str, pts: &[&Point]) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let (mut lo, mut hi) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.value - p.stderr), hi.max(p.value + p.stderr))
        });
    if !(hi - lo).is_finite() || hi - lo < 1e-9 {
        lo -= 0.5;
        hi += 0.5;
    }
    // Scores in [0, 1] (match rates, F1) keep their natural axis.
    let bounded = ["match", "f1", "accuracy"]
        .iter()
        .any(|k| metric.contains(k));
    if bounded && pts.iter().all(|p| (0.0..=1.0).contains(&p.value)) {
        lo = 0.0;
        hi = 1.0;
    }
    let pad = (hi - lo) * 0.08;
    let xmin = pts
        .iter()
        .map(|p| p.budget)
        .fold(f64::INFINITY, f64::min)
        .min(1.0);
    let xpad = ((1.0 - xmin) * 0.04).max(0.01);
    ((xmin - xpad)..(1.0 + xpad), (lo - pad)..(hi + pad))
}

/// One policy's line, its points, and its standard-error bars, labelled for the legend.
fn draw_policy<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    policy: &str,
    points: &[Point],
    color: RGBColor,
) -> std::result::Result<(), String> {
    let style = ShapeStyle::from(&color).stroke_width(2);
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.budget, p.value)),
            style,
        ))
        .map_err(|e| e.to_string())?
        .label(policy.to_string())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
    chart
        .draw_series(
            points
                .iter()
                .map(|p| Circle::new((p.budget, p.value), 3, color.filled())),
        )
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(points.iter().filter(|p| p.stderr > 0.0).map(|p| {
            PathElement::new(
                vec![
                    (p.budget, p.value - p.stderr),
                    (p.budget, p.value + p.stderr),
                ],
                ShapeStyle::from(&color.mix(0.6)).stroke_width(1),
            )
        }))
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    rows: usize,
    cols: usize,
    panels: &[Panel],
    policies: &[String],
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 18).into_font().style(FontStyle::Bold))
        .map_err(|e| e.to_string())?;
    let areas = root.split_evenly((rows, cols));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel, policies)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Writes `<stem>.svg` and `<stem>.png` for one model's panels.
pub fn write_figure(stem: &Path, title: &str, curves: &[Curve], model: &str) -> Result<()> {
    register_fonts();
    let (tasks, comps, panels) = panels(curves, model);
    if panels.is_empty() {
        return Ok(());
    }
    let mut policies: Vec<String> = Vec::new();
    for c in curves
        .iter()
        .filter(|c| c.model == model && c.policy != BASELINE_POLICY)
    {
        if !policies.contains(&c.policy) {
            policies.push(c.policy.clone());
        }
    }
    let size = (
        PANEL_W * comps.len() as u32,
        PANEL_H * tasks.len() as u32 + 30,
    );
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let err = |p: &Path, e: String| Error::invalid(format!("drawing {}: {e}", p.display()));
    draw(
        SVGBackend::new(&svg, size).into_drawing_area(),
        title,
        tasks.len(),
        comps.len(),
        &panels,
        &policies,
    )
    .map_err(|e| err(&svg, e))?;
    draw(
        BitMapBackend::new(&png, size).into_drawing_area(),
        title,
        tasks.len(),
        comps.len(),
        &panels,
        &policies,
    )
    .map_err(|e| err(&png, e))?;
    Ok(())
}
