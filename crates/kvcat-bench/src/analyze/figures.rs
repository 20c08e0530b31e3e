//! Figures of a compressibility profile (plotters, SVG and PNG, DejaVu font as in
//! [`crate::report::plot`]): a layers × KV-heads heatmap of one summary number, and curve
//! panels (one per layer, heads pooled) of kept mass or output error against the budget.

use super::profile::ORACLE;
use super::table::{ProfileRow, ALL_HEADS};
use kvcat_core::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

type Draw = std::result::Result<(), String>;

/// A heatmap's grid: `values[layer][head]`.
struct Grid {
    values: Vec<Vec<f64>>,
    heads: usize,
}

fn grid(rows: &[ProfileRow], metric: &str, method: &str) -> Grid {
    let cells: Vec<(usize, usize, f64)> = rows
        .iter()
        .filter(|r| r.metric == metric && r.method == method && r.kv_head != ALL_HEADS)
        .filter_map(|r| Some((r.layer, r.kv_head.parse::<usize>().ok()?, r.value)))
        .collect();
    let layers = cells.iter().map(|c| c.0 + 1).max().unwrap_or(0);
    let heads = cells.iter().map(|c| c.1 + 1).max().unwrap_or(0);
    let mut values = vec![vec![f64::NAN; heads]; layers];
    for (l, h, v) in cells {
        values[l][h] = v;
    }
    Grid { values, heads }
}

/// White → dark blue for `x` in [0, 1]; blue ← white → red for a diverging map in [−1, 1].
fn color(x: f64, diverging: bool) -> RGBColor {
    let lerp = |a: u8, b: u8, t: f64| (a as f64 + (b as f64 - a as f64) * t.clamp(0.0, 1.0)) as u8;
    if !x.is_finite() {
        return RGBColor(200, 200, 200);
    }
    if diverging && x < 0.0 {
        let t = -x;
        RGBColor(lerp(255, 33, t), lerp(255, 102, t), lerp(255, 172, t))
    } else if diverging {
        RGBColor(lerp(255, 178, x), lerp(255, 24, x), lerp(255, 43, x))
    } else {
        RGBColor(lerp(247, 8, x), lerp(251, 48, x), lerp(255, 107, x))
    }
}

/// Cell centres sit on integers: label those, leave the half steps blank.
fn integer_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{}", x.round() as i64)
    } else {
        String::new()
    }
}

fn draw_heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    g: &Grid,
    diverging: bool,
) -> Draw {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let finite: Vec<f64> = g
        .values
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = if diverging {
        lo.abs().max(hi.abs()).max(1e-12)
    } else {
        (hi - lo).max(1e-12)
    };
    let layers = g.values.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 15).into_font().style(FontStyle::Bold))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(-0.5..g.heads as f64 - 0.5, -0.5..layers as f64 - 0.5)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("KV head")
        .y_desc("layer")
        .x_labels(2 * g.heads + 1)
        .y_labels(2 * layers + 1)
        .x_label_formatter(&integer_label)
        .y_label_formatter(&integer_label)
        .label_style(("sans-serif", 11))
        .draw()
        .map_err(|x| e(&x))?;
    for (l, row) in g.values.iter().enumerate() {
        for (h, &v) in row.iter().enumerate() {
            let x = if diverging { v / span } else { (v - lo) / span };
            let (x0, y0) = (h as f64 - 0.5, l as f64 - 0.5);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, y0), (x0 + 1.0, y0 + 1.0)],
                    color(x, diverging).filled(),
                )))
                .map_err(|x| e(&x))?;
            let ink = if !diverging && x > 0.55 { WHITE } else { BLACK };
            let style = ("sans-serif", 12).into_font().color(&ink).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ),
            );
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{v:.3}"),
                    (x0 + 0.5, y0 + 0.5),
                    style,
                )))
                .map_err(|x| e(&x))?;
        }
    }
    root.present().map_err(|x| e(&x))
}

/// `<stem>.svg` and `<stem>.png`, with the fonts registered.
fn figure_paths(stem: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    crate::report::plot::register_fonts();
    (stem.with_extension("svg"), stem.with_extension("png"))
}

fn drawn(path: &Path, r: Draw) -> Result<()> {
    r.map_err(|e| Error::invalid(format!("drawing {}: {e}", path.display())))
}

/// Writes `<stem>.svg` and `.png`: a layers × KV heads heatmap of `metric` for `method`
/// (e.g. `mass_auc` of the oracle). `diverging` centres the colour map on 0 (differences).
pub fn write_heatmap(
    stem: &Path,
    title: &str,
    rows: &[ProfileRow],
    metric: &str,
    method: &str,
    diverging: bool,
) -> Result<()> {
    let g = grid(rows, metric, method);
    if g.values.is_empty() || g.heads == 0 {
        return Err(Error::invalid(format!(
            "heatmap {}: no `{metric}` rows for `{method}`",
            stem.display()
        )));
    }
    let size = (
        (140 * g.heads as u32 + 120).max(600),
        50 * g.values.len() as u32 + 90,
    );
    let (svg, png) = figure_paths(stem);
    drawn(
        &svg,
        draw_heatmap(
            SVGBackend::new(&svg, size).into_drawing_area(),
            title,
            &g,
            diverging,
        ),
    )?;
    drawn(
        &png,
        draw_heatmap(
            BitMapBackend::new(&png, size).into_drawing_area(),
            title,
            &g,
            diverging,
        ),
    )
}

/// One curve: a label and `(budget, value)` points.
type Line = (String, Vec<(f64, f64)>);

fn layer_lines(rows: &[ProfileRow], metric: &str, layer: usize) -> Vec<Line> {
    let models: Vec<&str> = rows.iter().fold(vec![], |mut v, r| {
        if !v.contains(&r.model.as_str()) {
            v.push(r.model.as_str());
        }
        v
    });
    let mut lines: Vec<Line> = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.metric == metric && r.layer == layer && r.kv_head == ALL_HEADS)
    {
        let Ok(b) = r.budget.parse::<f64>() else {
            continue;
        };
        let label = if models.len() > 1 {
            format!("{} · {}", r.model, r.method)
        } else {
            r.method.clone()
        };
        match lines.iter_mut().find(|l| l.0 == label) {
            Some(l) => l.1.push((b, r.value)),
            None => lines.push((label, vec![(b, r.value)])),
        }
    }
    for l in &mut lines {
        l.1.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    lines
}

const PALETTE: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

fn draw_curve_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    lines: &[Line],
) -> Draw {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let ys: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .collect();
    let hi = ys.iter().copied().fold(0.0f64, f64::max).max(1e-6) * 1.08;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 14).into_font().style(FontStyle::Bold))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(44)
        .build_cartesian_2d(0f64..1.02, 0f64..hi)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("budget (kept fraction)")
        .y_desc(y_desc)
        .label_style(("sans-serif", 11))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (label, pts)) in lines.iter().enumerate() {
        let c = if label.ends_with(ORACLE) {
            BLACK
        } else {
            PALETTE[i % PALETTE.len()]
        };
        let style = ShapeStyle::from(&c).stroke_width(2);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))
            .map_err(|x| e(&x))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .position(if y_desc == "kept_mass" {
            SeriesLabelPosition::UpperLeft
        } else {
            SeriesLabelPosition::UpperRight
        })
        .label_font(("sans-serif", 10))
        .background_style(WHITE.mix(0.8))
        .border_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(|x| e(&x))
}

fn draw_curves<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    rows: &[ProfileRow],
    metric: &str,
    layers: usize,
    cols: usize,
) -> Draw {
    root.fill(&WHITE).map_err(|x| x.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 17).into_font().style(FontStyle::Bold))
        .map_err(|x| x.to_string())?;
    let areas = root.split_evenly((layers.div_ceil(cols), cols));
    for (l, area) in areas.iter().enumerate().take(layers) {
        draw_curve_panel(
            area,
            &format!("layer {l}"),
            metric,
            &layer_lines(rows, metric, l),
        )?;
    }
    root.present().map_err(|x| x.to_string())
}

/// Writes `<stem>.svg` and `.png`: one panel per layer of `metric` (`kept_mass` or
/// `output_rel_error`) against the budget, heads pooled, one line per (model,) method.
pub fn write_curves(stem: &Path, title: &str, rows: &[ProfileRow], metric: &str) -> Result<()> {
    let layers = rows.iter().map(|r| r.layer + 1).max().unwrap_or(0);
    if layers == 0 {
        return Err(Error::invalid(format!(
            "curves {}: no rows",
            stem.display()
        )));
    }
    let cols = layers.min(4);
    let size = (340 * cols as u32, 280 * layers.div_ceil(cols) as u32 + 30);
    let (svg, png) = figure_paths(stem);
    drawn(
        &svg,
        draw_curves(
            SVGBackend::new(&svg, size).into_drawing_area(),
            title,
            rows,
            metric,
            layers,
            cols,
        ),
    )?;
    drawn(
        &png,
        draw_curves(
            BitMapBackend::new(&png, size).into_drawing_area(),
            title,
            rows,
            metric,
            layers,
            cols,
        ),
    )
}

/// Draws the profile figures into `out` (SVG + PNG each): `heatmap_mass_auc`,
/// `curves_kept_mass` and `curves_output_rel_error` of `rows`; with `compared` = (both
/// checkpoints' rows, their difference `other − rows`), also `heatmap_mass_auc_diff` and
/// `curves_kept_mass_compare` (both oracles). Returns the PNG paths.
pub fn write_profile_figures(
    out: &Path,
    rows: &[ProfileRow],
    compared: Option<(&[ProfileRow], &[ProfileRow])>,
) -> Result<Vec<PathBuf>> {
    let model = rows.first().map(|r| r.model.as_str()).unwrap_or("");
    let (mass_auc, kept, error) = (
        out.join("heatmap_mass_auc"),
        out.join("curves_kept_mass"),
        out.join("curves_output_rel_error"),
    );
    let title = format!("oracle mass AUC · {model}");
    write_heatmap(&mass_auc, &title, rows, "mass_auc", ORACLE, false)?;
    let title = format!("kept attention mass (heads pooled) · {model}");
    write_curves(&kept, &title, rows, "kept_mass")?;
    let title = format!("attention-output relative error (heads pooled) · {model}");
    write_curves(&error, &title, rows, "output_rel_error")?;
    let mut written: Vec<PathBuf> = [mass_auc, kept, error]
        .map(|stem| stem.with_extension("png"))
        .into();
    if let Some((all, diff)) = compared {
        let stem = out.join("heatmap_mass_auc_diff");
        let label = diff.first().map(|r| r.model.as_str()).unwrap_or("");
        let title = format!("oracle mass AUC difference · {label}");
        write_heatmap(&stem, &title, diff, "mass_auc", ORACLE, true)?;
        written.push(stem.with_extension("png"));
        let stem = out.join("curves_kept_mass_compare");
        let oracles: Vec<ProfileRow> = all.iter().filter(|r| r.method == ORACLE).cloned().collect();
        let title = "oracle kept attention mass (heads pooled)";
        write_curves(&stem, title, &oracles, "kept_mass")?;
        written.push(stem.with_extension("png"));
    }
    Ok(written)
}
