//! The convergence plot of `elx leave-one-out` (the paper's Figure 3): validation NLL per
//! answer token against training steps, for coefficients trained in the recycled subspace and
//! in a random basis, and for the host's LoRA when its curves are given, one colour per
//! training-set size.

use super::plot::{FIGURE_FONT as FONT, Figure, write_figure};
use eigenlorax::Result;
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (820, 500);
/// Dash and gap lengths (pixels) per training-set size, in increasing order of size: solid,
/// dashed, dotted, dash-dot-like.
const DASHES: [(u32, u32); 4] = [(0, 0), (9, 6), (2, 5), (14, 4)];

/// How a curve was trained (its colour).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// Coefficients in the recycled subspace (blue).
    Recycled,
    /// Coefficients in a random basis (grey).
    Random,
    /// The host's LoRA (orange).
    Lora,
}

impl Basis {
    fn colour(self) -> RGBColor {
        match self {
            Basis::Recycled => RGBColor(31, 119, 180),
            Basis::Random => RGBColor(150, 150, 150),
            Basis::Lora => RGBColor(230, 120, 20),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Basis::Recycled => "recycled",
            Basis::Random => "random basis",
            Basis::Lora => "LoRA (host)",
        }
    }
}

/// One validation curve.
#[derive(Clone, Debug)]
pub struct Curve {
    /// How it was trained.
    pub basis: Basis,
    /// Training pairs.
    pub examples: usize,
    /// (step, validation NLL per answer token), step 0 first.
    pub points: Vec<(u64, f64)>,
    /// A mean curve: over how many tasks (shown in the legend).
    pub mean_of: Option<usize>,
}

/// The mean curve of `curves` (the same basis and size, one per task): at each step some
/// curve was evaluated at, the mean over tasks of each curve's latest value at or before it
/// (a stopped run keeps its last value).
pub fn mean_curve(curves: &[&Curve]) -> Option<Curve> {
    let first = curves.first()?;
    let mut steps: Vec<u64> = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .collect();
    steps.sort_unstable();
    steps.dedup();
    let points = steps
        .into_iter()
        .map(|s| {
            let values: Vec<f64> = curves
                .iter()
                .filter_map(|c| c.points.iter().rev().find(|p| p.0 <= s).map(|p| p.1))
                .collect();
            (s, values.iter().sum::<f64>() / values.len() as f64)
        })
        .collect();
    Some(Curve {
        basis: first.basis,
        examples: first.examples,
        points,
        mean_of: Some(curves.len()),
    })
}

/// Writes the plot (.png or .svg) atomically.
pub fn write(path: &Path, title: &str, curves: &[Curve]) -> Result<()> {
    write_figure(path, &Curves { title, curves })
}

struct Curves<'a> {
    title: &'a str,
    curves: &'a [Curve],
}

impl Figure for Curves<'_> {
    fn size(&self) -> (u32, u32) {
        SIZE
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> std::result::Result<(), String> {
        let e = |e: plotters::drawing::DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let points = || self.curves.iter().flat_map(|c| c.points.iter());
        let xmax = points().map(|p| p.0).max().unwrap_or(1).max(1) as f64;
        // A log axis from just below the lowest point: the base model's NLL at step 0 is 2-5x
        // the trained values, and a linear axis from 0 would flatten the differences that
        // matter (a few hundredths near the minimum).
        let finite = || points().map(|p| p.1).filter(|v| v.is_finite() && *v > 0.0);
        let ymin = finite().fold(f64::INFINITY, f64::min);
        let ymax = finite().fold(0.0f64, f64::max);
        let (ymin, ymax) = if ymin.is_finite() && ymax > ymin {
            (ymin * 0.93, ymax * 1.05)
        } else {
            (0.1, 10.0)
        };
        let mut sizes: Vec<usize> = self.curves.iter().map(|c| c.examples).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let dash = |n: usize| {
            let i = sizes.iter().position(|&s| s == n).unwrap_or(0);
            DASHES[i % DASHES.len()]
        };
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FONT, 17))
            .margin(14)
            .x_label_area_size(42)
            .y_label_area_size(58)
            .build_cartesian_2d(
                0f64..xmax,
                (ymin..ymax).log_scale().with_key_points(ticks(ymin, ymax)),
            )
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("training steps")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("validation NLL per answer token (log scale)")
            .y_label_formatter(&|v| format!("{v:.2}"))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e)?;
        for c in self.curves {
            let col = c.basis.colour();
            let style = col.stroke_width(if c.basis == Basis::Recycled { 3 } else { 2 });
            let line: Vec<(f64, f64)> = c.points.iter().map(|&(s, v)| (s as f64, v)).collect();
            let label = match c.mean_of {
                Some(n) => format!("{}, {} pairs, mean of {n}", c.basis.name(), c.examples),
                None => format!("{}, {} pairs", c.basis.name(), c.examples),
            };
            let (on, off) = dash(c.examples);
            let series = if on == 0 {
                chart.draw_series(LineSeries::new(line.clone(), style))
            } else {
                chart.draw_series(DashedLineSeries::new(line.clone(), on, off, style))
            }
            .map_err(e)?;
            // The legend's sample shows the dash too: three segments of the line's lengths.
            series.label(label).legend(move |(x, y)| {
                let (on, off) = if on == 0 {
                    (8, 0)
                } else {
                    (on as i32, off as i32)
                };
                let seg = |i: i32| {
                    let from = (i * (on + off)).min(24);
                    PathElement::new(vec![(from, 0), ((from + on).min(24), 0)], style)
                };
                EmptyElement::at((x, y)) + seg(0) + seg(1) + seg(2)
            });
            chart
                .draw_series(line.iter().map(|&p| Circle::new(p, 3, col.filled())))
                .map_err(e)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

/// About eight round values in [lo, hi] for the y axis (a log axis over less than a decade
/// gets no labels of its own).
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 8.0;
    let unit = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * unit)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * unit);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(
            super::ticks(2.85, 4.55),
            vec![3.0, 3.25, 3.5, 3.75, 4.0, 4.25, 4.5]
        );
        let t = super::ticks(0.95, 5.6);
        assert_eq!(t, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    use super::*;

    #[test]
    fn the_mean_curve_carries_a_stopped_run_forward() {
        let a = Curve {
            basis: Basis::Recycled,
            examples: 16,
            points: vec![(0, 4.0), (2, 3.0), (4, 2.0)],
            mean_of: None,
        };
        let b = Curve {
            points: vec![(0, 6.0), (2, 5.0)],
            ..a.clone()
        };
        let m = mean_curve(&[&a, &b]).unwrap();
        assert_eq!(m.points, vec![(0, 5.0), (2, 4.0), (4, 3.5)]);
        assert_eq!(m.mean_of, Some(2));
        assert!(mean_curve(&[]).is_none());
    }
}
