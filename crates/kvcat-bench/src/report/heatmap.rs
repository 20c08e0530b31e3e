//! The KV-CAT matrix as a heatmap: one figure per (model, task), rows = policies, columns =
//! compressors, colour = AUC gain over `none` on a diverging scale (red worse, white 0, blue
//! better, symmetric about 0), with the value and its 95% interval printed in each cell and
//! significant cells (interval excludes 0) marked by `*` and a heavy border. SVG and PNG.

use super::matrix::{decimals_for, HeatCell, Heatmap};
use super::plot::register_fonts;
use kvcat_core::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

impl Heatmap {
    /// The colour scale's half-range: the largest |gain|, or 1 when all are 0 or absent.
    fn scale(&self) -> f64 {
        let m = self
            .cells
            .iter()
            .flatten()
            .flatten()
            .map(|c| c.gain.abs())
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        if m > 0.0 {
            m
        } else {
            1.0
        }
    }
}

const LABEL_W: i32 = 120;
const HEAD_H: i32 = 92;
const CELL_W: i32 = 160;
const CELL_H: i32 = 64;
const BAR_W: i32 = 110;
const FOOT_H: i32 = 16;

/// The diverging colour of `t` in [-1, 1]: red (negative), near-white (0), blue (positive).
pub fn diverging(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let (mid, end) = (
        (247.0, 247.0, 247.0),
        if t < 0.0 {
            (178.0, 24.0, 43.0)
        } else {
            (33.0, 102.0, 172.0)
        },
    );
    let a = t.abs();
    let mix = |m: f64, e: f64| (m + (e - m) * a).round() as u8;
    RGBColor(mix(mid.0, end.0), mix(mid.1, end.1), mix(mid.2, end.2))
}

/// `v` signed, with the decimals that suit the map's scale, and a typographic minus.
fn signed(v: f64, scale: f64) -> String {
    super::matrix::fmt_signed(v, decimals_for(scale)).replace('-', "−")
}

fn centred(size: u32, bold: bool) -> TextStyle<'static> {
    let font = ("sans-serif", size).into_font();
    let font = if bold {
        font.style(FontStyle::Bold)
    } else {
        font
    };
    TextStyle::from(font).pos(Pos::new(HPos::Center, VPos::Center))
}

fn draw_cell<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    (x, y): (i32, i32),
    cell: Option<&HeatCell>,
    scale: f64,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let rect = [(x, y), (x + CELL_W, y + CELL_H)];
    let Some(c) = cell else {
        root.draw(&Rectangle::new(rect, RGBColor(230, 230, 230).filled()))
            .map_err(e)?;
        return root
            .draw_text("–", &centred(14, false), (x + CELL_W / 2, y + CELL_H / 2))
            .map_err(e);
    };
    let t = c.gain / scale;
    root.draw(&Rectangle::new(rect, diverging(t).filled()))
        .map_err(e)?;
    let ink: &'static RGBColor = if t.abs() > 0.6 { &WHITE } else { &BLACK };
    let mark = if c.significant { "*" } else { "" };
    let value = format!("{}{mark}", signed(c.gain, scale));
    let cx = x + CELL_W / 2;
    let value_y = if c.interval.is_some() {
        y + CELL_H / 2 - 10
    } else {
        y + CELL_H / 2
    };
    root.draw_text(
        &value,
        &centred(16, c.significant).color(ink),
        (cx, value_y),
    )
    .map_err(e)?;
    if let Some((lo, hi)) = c.interval {
        let text = format!("[{}, {}]", signed(lo, scale), signed(hi, scale));
        root.draw_text(
            &text,
            &centred(12, false).color(ink),
            (cx, y + CELL_H / 2 + 12),
        )
        .map_err(e)?;
    }
    if !c.significant {
        return root
            .draw(&Rectangle::new(rect, WHITE.stroke_width(1)))
            .map_err(e);
    }
    // A heavy border: nested 1-pixel outlines (backends ignore a rectangle's stroke width).
    for k in 1..=3 {
        let inset = [(x + k, y + k), (x + CELL_W - 1 - k, y + CELL_H - 1 - k)];
        root.draw(&Rectangle::new(inset, BLACK.stroke_width(1)))
            .map_err(e)?;
    }
    Ok(())
}

fn draw_colour_bar<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    x: i32,
    top: i32,
    height: i32,
    scale: f64,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let steps = 60;
    for i in 0..steps {
        let y0 = top + height * i / steps;
        let y1 = top + height * (i + 1) / steps;
        let t = 1.0 - 2.0 * (i as f64 + 0.5) / steps as f64;
        root.draw(&Rectangle::new(
            [(x, y0), (x + 18, y1)],
            diverging(t).filled(),
        ))
        .map_err(e)?;
    }
    root.draw(&Rectangle::new(
        [(x, top), (x + 18, top + height)],
        BLACK.stroke_width(1),
    ))
    .map_err(e)?;
    let left = TextStyle::from(("sans-serif", 12).into_font());
    let left = left.pos(Pos::new(HPos::Left, VPos::Center));
    for (label, y) in [
        (signed(scale, scale), top),
        ("0".to_string(), top + height / 2),
        (signed(-scale, scale), top + height),
    ] {
        root.draw_text(&label, &left, (x + 24, y)).map_err(e)?;
    }
    Ok(())
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    map: &Heatmap,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (w, _) = root.dim_in_pixel();
    root.draw_text(&map.title, &centred(16, true), (w as i32 / 2, 18))
        .map_err(e)?;
    root.draw_text(&map.subtitle, &centred(12, false), (w as i32 / 2, 40))
        .map_err(e)?;
    let scale = map.scale();
    for (j, col) in map.cols.iter().enumerate() {
        let cx = LABEL_W + CELL_W * j as i32 + CELL_W / 2;
        root.draw_text(col, &centred(13, true), (cx, HEAD_H - 14))
            .map_err(e)?;
    }
    let right = TextStyle::from(("sans-serif", 13).into_font().style(FontStyle::Bold));
    let right = right.pos(Pos::new(HPos::Right, VPos::Center));
    for (i, row) in map.rows.iter().enumerate() {
        let y = HEAD_H + CELL_H * i as i32;
        root.draw_text(row, &right, (LABEL_W - 10, y + CELL_H / 2))
            .map_err(e)?;
        for j in 0..map.cols.len() {
            let cell = map
                .cells
                .get(i)
                .and_then(|r| r.get(j))
                .and_then(|c| c.as_ref());
            draw_cell(&root, (LABEL_W + CELL_W * j as i32, y), cell, scale)?;
        }
    }
    let bar_x = LABEL_W + CELL_W * map.cols.len() as i32 + 20;
    draw_colour_bar(&root, bar_x, HEAD_H, CELL_H * map.rows.len() as i32, scale)?;
    root.present().map_err(e)
}

/// Writes `<stem>.svg` and `<stem>.png`.
pub fn write_heatmap(stem: &Path, map: &Heatmap) -> Result<()> {
    register_fonts();
    let size = (
        (LABEL_W + CELL_W * map.cols.len() as i32 + BAR_W) as u32,
        (HEAD_H + CELL_H * map.rows.len().max(1) as i32 + FOOT_H) as u32,
    );
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let err = |p: &Path, e: String| Error::invalid(format!("drawing {}: {e}", p.display()));
    draw(SVGBackend::new(&svg, size).into_drawing_area(), map).map_err(|e| err(&svg, e))?;
    draw(BitMapBackend::new(&png, size).into_drawing_area(), map).map_err(|e| err(&png, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_diverges_around_white() {
        assert_eq!(diverging(0.0), RGBColor(247, 247, 247));
        assert_eq!(diverging(1.0), RGBColor(33, 102, 172));
        assert_eq!(diverging(-1.0), RGBColor(178, 24, 43));
        assert_eq!(diverging(5.0), diverging(1.0), "clamped");
        assert_eq!(diverging(f64::NAN), diverging(0.0));
    }
}
