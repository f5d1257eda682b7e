//! The capture-vs-N plot of `elx inspect --held-out --plot` and `elx demo`: mean held-out
//! capture (with its min–max band) against the number of adapters in the subspace, beside
//! the random control and chance, on a log-2 N axis.

use super::plot::{FIGURE_FONT as FONT, Figure, write_figure};
use eigenlorax::Result;
use eigenlorax::eval::capture_vs_chance::CurvePoint;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const SIZE: (u32, u32) = (760, 480);
const CAPTURE: RGBColor = RGBColor(31, 119, 180);
const RANDOM: RGBColor = RGBColor(120, 120, 120);

/// `OUT.png` → `OUT-<suffix>.png` (the same folder and extension).
pub fn path_beside(path: &Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    path.with_file_name(format!("{stem}-{suffix}.{ext}"))
}

/// Writes the plot (.png or .svg) atomically.
pub fn write(path: &Path, title: &str, curve: &[CurvePoint]) -> Result<()> {
    write_figure(path, &CaptureCurve { title, curve })
}

struct CaptureCurve<'a> {
    title: &'a str,
    curve: &'a [CurvePoint],
}

impl Figure for CaptureCurve<'_> {
    fn size(&self) -> (u32, u32) {
        SIZE
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> std::result::Result<(), String> {
        draw(root, self.title, self.curve)
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    curve: &[CurvePoint],
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let nmax = curve.iter().map(|c| c.n).max().unwrap_or(1).max(2) as f64;
    let x = |n: usize| (n as f64).log2();
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 17))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(58)
        .build_cartesian_2d(-0.2f64..nmax.log2() + 0.2, 0f64..1.02f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("N adapters in the subspace (log scale)")
        .y_desc("share of the held-out ΔW inside")
        .x_labels(curve.len().max(2))
        .x_label_formatter(&|v| format!("{:.0}", 2f64.powf(*v)))
        .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| e.to_string())?;
    let band: Vec<(f64, f64)> = curve
        .iter()
        .map(|c| (x(c.n), c.max))
        .chain(curve.iter().rev().map(|c| (x(c.n), c.min)))
        .collect();
    chart
        .draw_series(std::iter::once(Polygon::new(band, CAPTURE.mix(0.15))))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            curve.iter().map(|c| (x(c.n), c.captured)),
            CAPTURE.stroke_width(3),
        ))
        .map_err(|e| e.to_string())?
        .label("held-out capture (mean; band: min-max)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], CAPTURE.stroke_width(3)));
    chart
        .draw_series(
            curve
                .iter()
                .map(|c| Circle::new((x(c.n), c.captured), 4, CAPTURE.filled())),
        )
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            curve.iter().map(|c| (x(c.n), c.random)),
            RANDOM.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?
        .label("random subspace of the same size")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RANDOM.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}
