//! The convergence plot of `elx leave-one-out` (the paper's Figure 3): validation NLL per
//! answer token against training steps, for coefficients trained in the recycled subspace and
//! in a random basis, and for the host's LoRA when its curves are given, one colour per
//! training-set size.

use super::plot::{FIGURE_FONT as FONT, Figure, write_figure};
use eigenlorax::Result;
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (820, 500);
/// One colour per training-set size, in increasing order of size.
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(230, 120, 20),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// How a curve was trained (its line style).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// Coefficients in the recycled subspace (solid).
    Recycled,
    /// Coefficients in a random basis (dashed).
    Random,
    /// The host's LoRA (dotted).
    Lora,
}

impl Basis {
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
        let ymax = points().map(|p| p.1).fold(0.0f64, f64::max).max(0.1) * 1.05;
        let mut sizes: Vec<usize> = self.curves.iter().map(|c| c.examples).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let colour = |n: usize| {
            let i = sizes.iter().position(|&s| s == n).unwrap_or(0);
            COLOURS[i % COLOURS.len()]
        };
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FONT, 17))
            .margin(14)
            .x_label_area_size(42)
            .y_label_area_size(58)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("training steps")
            .y_desc("validation NLL per answer token")
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e)?;
        for c in self.curves {
            let col = colour(c.examples);
            let line: Vec<(f64, f64)> = c.points.iter().map(|&(s, v)| (s as f64, v)).collect();
            let label = format!("{}, {} pairs", c.basis.name(), c.examples);
            let style = match c.basis {
                Basis::Recycled => col.stroke_width(3),
                Basis::Random | Basis::Lora => col.stroke_width(2),
            };
            let series = match c.basis {
                Basis::Recycled => chart.draw_series(LineSeries::new(line.clone(), style)),
                Basis::Random => {
                    chart.draw_series(DashedLineSeries::new(line.clone(), 9, 6, style))
                }
                Basis::Lora => chart.draw_series(DashedLineSeries::new(line.clone(), 2, 5, style)),
            }
            .map_err(e)?;
            series
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_curve_carries_a_stopped_run_forward() {
        let a = Curve {
            basis: Basis::Recycled,
            examples: 16,
            points: vec![(0, 4.0), (2, 3.0), (4, 2.0)],
        };
        let b = Curve {
            points: vec![(0, 6.0), (2, 5.0)],
            ..a.clone()
        };
        let m = mean_curve(&[&a, &b]).unwrap();
        assert_eq!(m.points, vec![(0, 5.0), (2, 4.0), (4, 3.5)]);
        assert!(mean_curve(&[]).is_none());
    }
}
