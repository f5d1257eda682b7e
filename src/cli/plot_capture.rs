//! The per-adapter capture plot of `elx inspect --held-out --plot`: every held-out adapter's
//! capture, sorted, one row each (readable at 36+ adapters: the image grows with the pool),
//! its random control as a grey bar beside it, the gain threshold as a dashed line, and the
//! members of a cluster in another colour.

use super::plot::{FIGURE_FONT as FONT, Figure, write_figure};
use eigenlorax::Result;
use eigenlorax::eval::capture_vs_chance::GAIN_CAPTURE;
use plotters::prelude::*;
use std::path::Path;

const CAPTURE: RGBColor = RGBColor(31, 119, 180);
const CLUSTER: RGBColor = RGBColor(230, 120, 20);
const RANDOM: RGBColor = RGBColor(120, 120, 120);
/// Pixels per adapter row.
const ROW: u32 = 18;
/// Longest adapter label drawn (longer names keep their end, where the task name is).
const LABEL: usize = 34;

/// One held-out adapter on the plot.
#[derive(Clone, Debug)]
pub struct Bar {
    /// Label (the adapter's short name).
    pub name: String,
    /// Share of its ΔW inside the others' subspace.
    pub captured: f64,
    /// The same for a random subspace of the same size.
    pub random: f64,
    /// Which cluster it belongs to (1-based), if any.
    pub cluster: Option<usize>,
}

/// Writes the plot (.png or .svg) atomically.
pub fn write(path: &Path, title: &str, bars: &[Bar]) -> Result<()> {
    let mut sorted = bars.to_vec();
    sorted.sort_by(|a, b| b.captured.total_cmp(&a.captured));
    write_figure(
        path,
        &CaptureBars {
            title,
            bars: sorted,
        },
    )
}

struct CaptureBars<'a> {
    title: &'a str,
    bars: Vec<Bar>,
}

impl Figure for CaptureBars<'_> {
    fn size(&self) -> (u32, u32) {
        (860, 130 + ROW * self.bars.len().max(4) as u32)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> std::result::Result<(), String> {
        draw(root, self.title, &self.bars)
    }
}

/// The last `LABEL` characters of `s`, marked with `…` when cut.
fn label(s: &str) -> String {
    let n = s.chars().count();
    if n <= LABEL {
        s.to_string()
    } else {
        let tail: String = s.chars().skip(n - (LABEL - 1)).collect();
        format!("…{tail}")
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    bars: &[Bar],
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let n = bars.len();
    let largest = bars
        .iter()
        .map(|b| b.captured.max(b.random))
        .filter(|x| x.is_finite())
        .fold(GAIN_CAPTURE, f64::max);
    // Room on the right for the legend (the shortest bars are at the bottom); a share never
    // exceeds 100%.
    let xmax = (largest * 1.6).min(1.02);
    let names: Vec<String> = bars.iter().map(|b| label(&b.name)).collect();
    // Row i (0 = highest capture) sits at y = n - 1 - i, so the list reads top to bottom.
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 17))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(250)
        .build_cartesian_2d(0f64..xmax, -0.6f64..n as f64 - 0.4)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("share of the held-out ΔW inside the others' subspace")
        .y_labels(n.max(1))
        .y_label_formatter(&|y| {
            let r = y.round();
            if (y - r).abs() > 1e-6 || r < 0.0 {
                return String::new();
            }
            let i = n as i64 - 1 - r as i64;
            usize::try_from(i)
                .ok()
                .and_then(|i| names.get(i).cloned())
                .unwrap_or_default()
        })
        .x_label_formatter(&|x| format!("{:.0}%", x * 100.0))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| e.to_string())?;
    let y = |i: usize| (n - 1 - i) as f64;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let c = if b.cluster.is_some() {
                CLUSTER
            } else {
                CAPTURE
            };
            Rectangle::new([(0.0, y(i) - 0.34), (b.captured, y(i) + 0.02)], c.filled())
        }))
        .map_err(|e| e.to_string())?
        .label("held-out capture (orange: in a cluster)")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], CAPTURE.filled()));
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Rectangle::new(
                [(0.0, y(i) + 0.06), (b.random, y(i) + 0.34)],
                RANDOM.filled(),
            )
        }))
        .map_err(|e| e.to_string())?
        .label("random subspace of the same size")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], RANDOM.filled()));
    let dashed = DashedLineSeries::new(
        [(GAIN_CAPTURE, -0.6), (GAIN_CAPTURE, n as f64 - 0.4)],
        6,
        4,
        BLACK.mix(0.6).stroke_width(1),
    );
    chart
        .draw_series(dashed)
        .map_err(|e| e.to_string())?
        .label(format!("gain threshold ({:.0}%)", GAIN_CAPTURE * 100.0))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.6)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}
