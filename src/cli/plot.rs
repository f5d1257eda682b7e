//! Plots of `elx inspect --plot`: explained-energy curves per module (the paper's Fig. 2/10)
//! and, with adapters, the relative ΔW error per module (Fig. 12), as SVG or PNG.
//!
//! Pure Rust: plotters with an embedded DejaVu Sans (ab_glyph), so no system font,
//! fontconfig or freetype is needed and the tool cross-compiles with only a linker.

use eigenlorax::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Relative errors of one adapter per module, and of the random control when measured.
pub struct ErrorSeries {
    /// Adapter path.
    pub label: String,
    /// (module, relative error) in module order.
    pub points: Vec<(String, f64)>,
    /// (module, relative error) of the random control; empty without one.
    pub random: Vec<(String, f64)>,
}

/// Everything the plots show.
pub struct PlotData {
    /// Figure title.
    pub title: String,
    /// (module, cumulative energy A side, cumulative energy B side).
    pub energy: Vec<(String, Vec<f64>, Vec<f64>)>,
    /// Per-adapter errors (second panel), when adapters were measured.
    pub errors: Option<Vec<ErrorSeries>>,
}

const FONT: &str = "sans-serif";
const WIDTH: u32 = 1000;
const PANEL_HEIGHT: u32 = 520;

/// Errors unless the extension is .png or .svg (checked before any work is done).
pub fn check_extension(path: &Path) -> Result<()> {
    match ext(path).as_deref() {
        Some("png") | Some("svg") => Ok(()),
        _ => Err(Error::Usage(format!(
            "{}: --plot writes .png or .svg files",
            path.display()
        ))),
    }
}

fn ext(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

fn register_font() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Usage("cannot load the embedded plot font".into()))
    }
}

/// Draws the figure to `path` (.svg or .png), atomically.
pub fn write(path: &Path, data: &PlotData) -> Result<()> {
    check_extension(path)?;
    register_font()?;
    let panels = if data.errors.is_some() { 2 } else { 1 };
    let size = (WIDTH, PANEL_HEIGHT * panels);
    let fail = |e: String| Error::Usage(format!("{}: cannot draw the plot: {e}", path.display()));
    if ext(path).as_deref() == Some("svg") {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
            draw(&root, data).map_err(fail)?;
        }
        eigenlorax::util::write_atomic(path, svg.as_bytes())
    } else {
        // The bitmap backend writes the file itself: draw into a temporary file beside the
        // target, then rename, so a failure never leaves a half image under the real name.
        let tmp = temp_beside(path);
        let result = (|| {
            let root = BitMapBackend::new(&tmp, size).into_drawing_area();
            draw(&root, data)?;
            root.present().map_err(|e| e.to_string())
        })();
        match result {
            Ok(()) => std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(fail(e))
            }
        }
    }
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}.png", std::process::id()))
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    data: &PlotData,
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(&data.title, (FONT, 18))
        .map_err(|e| e.to_string())?;
    match &data.errors {
        None => energy_panel(&root, data),
        Some(errors) => {
            let (top, bottom) = root.split_vertically(PANEL_HEIGHT - 20);
            energy_panel(&top, data)?;
            error_panel(&bottom, errors)
        }
    }
}

const A_COLOR: RGBColor = RGBColor(31, 119, 180);
const B_COLOR: RGBColor = RGBColor(214, 39, 40);

fn energy_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    data: &PlotData,
) -> std::result::Result<(), String> {
    let kmax = data
        .energy
        .iter()
        .map(|(_, a, b)| a.len().max(b.len()))
        .max()
        .unwrap_or(1)
        .max(2);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "Explained energy per module ({} modules): share of Σσ² in the top K directions",
                data.energy.len()
            ),
            (FONT, 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(1f64..kmax as f64, 0f64..1.02f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("K (principal directions kept)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .y_desc("cumulative σ² share")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
        .draw()
        .map_err(|e| e.to_string())?;
    for (side, color, pick) in [
        ("A side (rows of A)", A_COLOR, 0usize),
        ("B side (columns of B)", B_COLOR, 1),
    ] {
        let curves: Vec<&Vec<f64>> = data
            .energy
            .iter()
            .map(|(_, a, b)| if pick == 0 { a } else { b })
            .collect();
        for c in &curves {
            chart
                .draw_series(LineSeries::new(
                    c.iter().enumerate().map(|(i, v)| ((i + 1) as f64, *v)),
                    color.mix(0.25),
                ))
                .map_err(|e| e.to_string())?;
        }
        // Mean curve over modules (each curve held at 1 past its end).
        let mean: Vec<(f64, f64)> = (0..kmax)
            .map(|k| {
                let s: f64 = curves
                    .iter()
                    .map(|c| c.get(k).or(c.last()).copied().unwrap_or(0.0))
                    .sum();
                ((k + 1) as f64, s / curves.len().max(1) as f64)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(mean, color.stroke_width(3)))
            .map_err(|e| e.to_string())?
            .label(format!("{side}: mean (thin: each module)"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// Module names for axis labels: the dotted parts that differ between modules
/// (`encoder.layer.3.attention.self.query` -> `3.query` when every name has that shape),
/// else the names without their common dotted prefix.
fn short_names(names: &[String]) -> Vec<String> {
    let parts: Vec<Vec<&str>> = names.iter().map(|n| n.split('.').collect()).collect();
    let Some(first) = parts.first() else {
        return Vec::new();
    };
    if parts.len() > 1 && parts.iter().all(|p| p.len() == first.len()) {
        let varies: Vec<bool> = (0..first.len())
            .map(|i| parts.iter().any(|p| p[i] != first[i]))
            .collect();
        return parts
            .iter()
            .map(|p| {
                p.iter()
                    .zip(&varies)
                    .filter(|(_, v)| **v)
                    .map(|(s, _)| *s)
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .collect();
    }
    let mut common = 0;
    while common + 1 < first.len()
        && parts
            .iter()
            .all(|p| p.len() > common + 1 && p[common] == first[common])
    {
        common += 1;
    }
    parts
        .iter()
        .map(|p| p[common.min(p.len().saturating_sub(1))..].join("."))
        .collect()
}

fn error_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    errors: &[ErrorSeries],
) -> std::result::Result<(), String> {
    let names: Vec<String> = errors
        .first()
        .map(|s| s.points.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    let short = short_names(&names);
    let ymax = errors
        .iter()
        .flat_map(|s| s.points.iter().chain(&s.random).map(|(_, e)| *e))
        .filter(|e| e.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.3; // headroom for the legend in the upper right
    let n = names.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Relative reconstruction error of ΔW per module (dashed: random subspace, same K)",
            (FONT, 16),
        )
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)
        .map_err(|e| e.to_string())?;
    let label = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            short.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_labels(n.min(40))
        .x_label_formatter(&label)
        .light_line_style(WHITE.mix(0.0))
        .x_label_style((FONT, 11).into_font().transform(FontTransform::Rotate90))
        .y_desc("‖ΔW − ΔŴ‖ / ‖ΔW‖")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in errors.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .enumerate()
            .map(|(j, (_, e))| (j as f64, *e))
            .collect();
        let name = Path::new(&s.label)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or(s.label.clone());
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)).point_size(3))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if !s.random.is_empty() {
            let rp: Vec<(f64, f64)> = s
                .random
                .iter()
                .enumerate()
                .map(|(j, (_, e))| (j as f64, *e))
                .collect();
            let series = chart
                .draw_series(DashedLineSeries::new(
                    rp,
                    6,
                    4,
                    color.mix(0.6).stroke_width(1),
                ))
                .map_err(|e| e.to_string())?;
            if i == 0 {
                series
                    .label("random subspace, same K (dashed)")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::short_names;

    #[test]
    fn labels_keep_the_parts_that_differ() {
        let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            short_names(&n(&[
                "encoder.layer.0.attention.self.query",
                "encoder.layer.0.attention.self.value",
                "encoder.layer.1.attention.self.query",
            ])),
            ["0.query", "0.value", "1.query"]
        );
        assert_eq!(short_names(&n(&["a.b.c", "a.d"])), ["b.c", "d"]);
        assert_eq!(short_names(&n(&["only.one"])), ["one"]);
    }
}
