//! Plots of `elx inspect --plot`: explained-energy curves per module (the paper's Fig. 2/10)
//! and, with adapters, the relative ΔW error per module (Fig. 12), as SVG or PNG.
//!
//! Pure Rust: plotters with an embedded DejaVu Sans (ab_glyph), so no system font,
//! fontconfig or freetype is needed and the tool cross-compiles with only a linker.

use eigenlorax::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
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

/// The font of the figures drawn through [`write_figure`] (DejaVu Sans, embedded).
pub const FIGURE_FONT: &str = "elx-sans";

/// A figure that draws on any plotters backend, written by [`write_figure`].
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws the whole figure on `root`.
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String>;
}

/// Writes `figure` to `path` (.svg or .png) atomically, in [`FIGURE_FONT`].
pub fn write_figure(path: &Path, figure: &impl Figure) -> Result<()> {
    check_extension(path)?;
    static FONT_OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*FONT_OK.get_or_init(|| {
        plotters::style::register_font(FIGURE_FONT, FontStyle::Normal, dejavu::sans::regular())
            .is_ok()
    }) {
        return Err(Error::Usage("cannot load the embedded plot font".into()));
    }
    let fail = |e: String| Error::Usage(format!("{}: cannot draw the plot: {e}", path.display()));
    let size = figure.size();
    if ext(path).as_deref() == Some("svg") {
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
            figure.draw(&root).map_err(fail)?;
        }
        return eigenlorax::util::write_atomic(path, out.as_bytes());
    }
    // The bitmap backend writes the file itself: draw into a temporary file beside the
    // target, then rename, so a failure never leaves a half image under the real name.
    let tmp = temp_beside(path);
    let drawn = (|| {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        figure.draw(&root)?;
        root.present().map_err(|e| e.to_string())
    })();
    match drawn {
        Ok(()) => std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(fail(e))
        }
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
    render(path, data).map(|_| ())
}

/// [`write`], returning the module labels drawn under the error panel (pixel boxes).
fn render(path: &Path, data: &PlotData) -> Result<Vec<LabelBox>> {
    check_extension(path)?;
    register_font()?;
    let panels = if data.errors.is_some() { 2 } else { 1 };
    let size = (WIDTH, PANEL_HEIGHT * panels);
    let fail = |e: String| Error::Usage(format!("{}: cannot draw the plot: {e}", path.display()));
    if ext(path).as_deref() == Some("svg") {
        let mut svg = String::new();
        let boxes = {
            let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
            draw(&root, data).map_err(fail)?
        };
        eigenlorax::util::write_atomic(path, svg.as_bytes())?;
        Ok(boxes)
    } else {
        // The bitmap backend writes the file itself: draw into a temporary file beside the
        // target, then rename, so a failure never leaves a half image under the real name.
        let tmp = temp_beside(path);
        let result = (|| {
            let root = BitMapBackend::new(&tmp, size).into_drawing_area();
            let boxes = draw(&root, data)?;
            root.present().map_err(|e| e.to_string())?;
            Ok(boxes)
        })();
        match result {
            Ok(boxes) => {
                std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
                Ok(boxes)
            }
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
) -> std::result::Result<Vec<LabelBox>, String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(&data.title, (FONT, 18))
        .map_err(|e| e.to_string())?;
    match &data.errors {
        None => energy_panel(&root, data).map(|()| Vec::new()),
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
        // Only whole K: with a small K the tick steps are fractions.
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
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

/// Font size of the module labels under the error panel.
const LABEL_FONT: u32 = 12;
/// Least horizontal space between two module labels, in pixels.
const LABEL_GAP: f64 = 6.0;

/// A label drawn under the error panel: its text and pixel box (left, top, right, bottom).
#[derive(Clone, Debug, PartialEq)]
struct LabelBox {
    text: String,
    bounds: (f64, f64, f64, f64),
}

/// Which module labels the x axis shows, where, and what the axis says.
#[derive(Clone, Debug, PartialEq)]
struct AxisLayout {
    /// (x in module units, text), left to right.
    labels: Vec<(f64, String)>,
    /// Boundaries between layers (x in module units), drawn as light vertical lines.
    separators: Vec<f64>,
    /// The axis description.
    desc: String,
}

/// A sort key that orders numbers inside names by value (`layers.2` before `layers.10`).
fn natural_key(name: &str) -> Vec<(String, u64)> {
    let mut key = Vec::new();
    let mut text = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut n = c.to_digit(10).map_or(0, u64::from);
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(u64::from(d));
                chars.next();
            }
            key.push((std::mem::take(&mut text), n));
        } else {
            text.push(c);
        }
    }
    key.push((text, u64::MAX));
    key
}

/// Module names split at their layer number: (`model.layers.17`, `self_attn.q_proj`) for
/// `model.layers.17.self_attn.q_proj`; `None` unless every name has a numeric dotted part
/// and the names, in this order, form at least two contiguous layers.
fn layer_groups(names: &[String]) -> Option<Vec<(String, Vec<String>)>> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for n in names {
        let parts: Vec<&str> = n.split('.').collect();
        let i = parts
            .iter()
            .position(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))?;
        let (layer, within) = (parts[..=i].join("."), parts[i + 1..].join("."));
        match groups.last_mut() {
            Some((l, members)) if *l == layer => members.push(within),
            _ => {
                if groups.iter().any(|(l, _)| *l == layer) {
                    return None; // a layer split in two runs
                }
                groups.push((layer, vec![within]));
            }
        }
    }
    (groups.len() >= 2).then_some(groups)
}

/// Every `stride`-th of `candidates` (x, text), with the smallest stride in 1, 2, 3, 4, 5,
/// 6, 8, 10, 20, 30, ... whose label boxes (`slot_px` pixels per module, widths from `width`) keep
/// [`LABEL_GAP`] apart; returns them and the stride.
fn thin(
    candidates: &[(f64, String)],
    slot_px: f64,
    width: &dyn Fn(&str) -> f64,
) -> (Vec<(f64, String)>, usize) {
    let fits = |picked: &[&(f64, String)]| {
        picked.windows(2).all(|w| {
            let (a, b) = (w[0], w[1]);
            (b.0 - a.0) * slot_px >= (width(&a.1) + width(&b.1)) / 2.0 + LABEL_GAP
        })
    };
    let mut stride = 1usize;
    let mut step = 0;
    loop {
        let picked: Vec<&(f64, String)> = candidates.iter().step_by(stride).collect();
        if picked.len() <= 1 || fits(&picked) {
            return (picked.into_iter().cloned().collect(), stride);
        }
        // 1, 2, 3, 4, 5, 6, 8, 10, 20, 30, ...
        step += 1;
        stride = [1, 2, 3, 4, 5, 6, 8][step % 7] * 10usize.pow((step / 7) as u32);
    }
}

/// The x-axis labels of the error panel for modules `names` (in plot order), `slot_px`
/// pixels apart, labels `width(text)` pixels wide. Horizontal labels only, never
/// overlapping:
/// 1. every module's short name when they all fit (the 12-module MiniLM plot);
/// 2. else, when the names have layer numbers, one label per layer under its modules (every
///    2nd, 5th, ... layer when even those crowd), with the layers' boundaries marked and
///    the modules within a layer named in the axis description (72 Gemma modules: 18
///    layers of q/k/v/o);
/// 3. else every 2nd, 5th, 10th, ... module's short name.
fn axis_layout(names: &[String], slot_px: f64, width: &dyn Fn(&str) -> f64) -> AxisLayout {
    let short = short_names(names);
    let all: Vec<(f64, String)> = short
        .iter()
        .enumerate()
        .map(|(i, s)| (i as f64, s.clone()))
        .collect();
    let fits_all = all.windows(2).all(|w| {
        (w[1].0 - w[0].0) * slot_px >= (width(&w[0].1) + width(&w[1].1)) / 2.0 + LABEL_GAP
    });
    if fits_all {
        return AxisLayout {
            labels: all,
            separators: Vec::new(),
            desc: "module".into(),
        };
    }
    if let Some(groups) = layer_groups(names) {
        let keys: Vec<String> = groups.iter().map(|(l, _)| l.clone()).collect();
        let layer_names = short_names(&keys);
        let mut start = 0usize;
        let mut centres = Vec::new();
        let mut separators = Vec::new();
        for ((_, members), name) in groups.iter().zip(layer_names) {
            let end = start + members.len();
            centres.push(((start + end - 1) as f64 / 2.0, name));
            if start > 0 {
                separators.push(start as f64 - 0.5);
            }
            start = end;
        }
        let (labels, stride) = thin(&centres, slot_px, width);
        let first = &groups[0].1;
        let same = groups.iter().all(|(_, m)| m == first);
        let desc = if same && first.iter().all(|m| !m.is_empty()) {
            let within = short_names(first);
            format!(
                "layer (modules in each, left to right: {})",
                within.join(", ")
            )
        } else {
            "layer".to_string()
        };
        let desc = if stride > 1 {
            format!("{desc}; every {} layer labelled", ordinal(stride))
        } else {
            desc
        };
        return AxisLayout {
            labels,
            separators,
            desc,
        };
    }
    let (labels, stride) = thin(&all, slot_px, width);
    let desc = format!("module (every {} labelled)", ordinal(stride));
    AxisLayout {
        labels,
        separators: Vec::new(),
        desc,
    }
}

/// "2nd", "3rd", "10th", ... (the strides [`thin`] picks).
fn ordinal(k: usize) -> String {
    let suffix = match (k % 10, k % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{k}{suffix}")
}

fn error_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    errors: &[ErrorSeries],
) -> std::result::Result<Vec<LabelBox>, String> {
    // Plot order: the modules of the first adapter, numbers inside names by value.
    let mut names: Vec<String> = errors
        .first()
        .map(|s| s.points.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    names.sort_by_cached_key(|n| natural_key(n));
    names.dedup();
    let index: std::collections::HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let placed = |pts: &[(String, f64)]| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = pts
            .iter()
            .filter_map(|(m, e)| index.get(m.as_str()).map(|&i| (i as f64, *e)))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
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
        .x_label_area_size(48)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)
        .map_err(|e| e.to_string())?;

    // The labels: chosen for the plot's real pixel width, drawn by hand below.
    let font = (FONT, LABEL_FONT).into_font();
    let width = |t: &str| font.box_size(t).map(|(w, _)| f64::from(w)).unwrap_or(0.0);
    let (x0, _) = chart.backend_coord(&(0.0, 0.0));
    let (x1, _) = chart.backend_coord(&(1.0, 0.0));
    let slot_px = f64::from((x1 - x0).max(1));
    let layout = axis_layout(&names, slot_px, &width);

    chart
        .configure_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .disable_x_mesh()
        .light_line_style(WHITE.mix(0.0))
        .x_desc(layout.desc.clone())
        .y_desc("‖ΔW − ΔŴ‖ / ‖ΔW‖")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for b in &layout.separators {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(*b, 0.0), (*b, ymax)],
                BLACK.mix(0.15),
            )))
            .map_err(|e| e.to_string())?;
    }
    let (base_x, base_y) = area.get_base_pixel();
    let mut boxes = Vec::with_capacity(layout.labels.len());
    for (x, text) in &layout.labels {
        let (px, py) = chart.backend_coord(&(*x, 0.0));
        let (w, h) = font.box_size(text).map_err(|e| format!("{e:?}"))?;
        let (px, top) = (px - base_x, py - base_y + 5);
        // A short tick at the label's position.
        area.draw(&PathElement::new(
            vec![(px, py - base_y), (px, py - base_y + 4)],
            BLACK,
        ))
        .map_err(|e| e.to_string())?;
        area.draw(&Text::new(
            text.clone(),
            (px, top),
            font.color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(|e| e.to_string())?;
        let (l, t) = (
            f64::from(px + base_x) - f64::from(w) / 2.0,
            f64::from(top + base_y),
        );
        boxes.push(LabelBox {
            text: text.clone(),
            bounds: (l, t, l + f64::from(w), t + f64::from(h)),
        });
    }

    for (i, s) in errors.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts = placed(&s.points);
        let name = Path::new(&s.label)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or(s.label.clone());
        let marker = if n > 40 { 2 } else { 3 };
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)).point_size(marker))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if !s.random.is_empty() {
            let rp = placed(&s.random);
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
        .map_err(|e| e.to_string())?;
    Ok(boxes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Module names of real bundles: MiniLM (6 layers x query/value), Gemma-270M (18 layers x
    /// q/k/v/o), a deep model (50 layers x q/k/v/o), and 200 names with no layer number.
    fn minilm12() -> Vec<String> {
        (0..6)
            .flat_map(|l| {
                ["query", "value"].map(|p| format!("encoder.layer.{l}.attention.self.{p}"))
            })
            .collect()
    }
    fn gemma(layers: usize) -> Vec<String> {
        (0..layers)
            .flat_map(|l| {
                ["q_proj", "k_proj", "v_proj", "o_proj"]
                    .map(|p| format!("base_model.model.model.layers.{l}.self_attn.{p}"))
            })
            .collect()
    }
    fn flat200() -> Vec<String> {
        (0..200)
            .map(|i| format!("adapter_block_{i:03}.proj"))
            .collect()
    }

    /// The real text width of the label font.
    fn width() -> impl Fn(&str) -> f64 {
        register_font().expect("font");
        let font = (FONT, LABEL_FONT).into_font();
        move |t: &str| f64::from(font.box_size(t).expect("text size").0)
    }

    /// Label boxes `slot_px` per module never overlap, keep the gap, and lie on the axis.
    fn check_layout(layout: &AxisLayout, n: usize, slot_px: f64) {
        let w = width();
        assert!(!layout.labels.is_empty());
        for pair in layout.labels.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let right_a = a.0 * slot_px + w(&a.1) / 2.0;
            let left_b = b.0 * slot_px - w(&b.1) / 2.0;
            assert!(
                left_b - right_a >= LABEL_GAP - 1e-9,
                "{:?} and {:?} overlap ({right_a} vs {left_b})",
                a,
                b
            );
        }
        for (x, _) in &layout.labels {
            assert!(*x >= 0.0 && *x <= (n - 1) as f64, "{x}");
        }
    }

    /// The plot width of the error panel (1000 px wide figure, margins, y labels).
    const PLOT_PX: f64 = 921.0;

    #[test]
    fn twelve_minilm_modules_are_all_labelled() {
        let names = minilm12();
        let slot = PLOT_PX / 12.0;
        let layout = axis_layout(&names, slot, &width());
        check_layout(&layout, 12, slot);
        let texts: Vec<&str> = layout.labels.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts[..3], ["0.query", "0.value", "1.query"]);
        assert_eq!(texts.len(), 12);
    }

    #[test]
    fn seventy_two_modules_are_labelled_per_layer() {
        let names = gemma(18);
        let slot = PLOT_PX / 72.0;
        let layout = axis_layout(&names, slot, &width());
        check_layout(&layout, 72, slot);
        // One label per layer, centred under its four modules.
        let texts: Vec<&str> = layout.labels.iter().map(|(_, t)| t.as_str()).collect();
        let want: Vec<String> = (0..18).map(|l| l.to_string()).collect();
        assert_eq!(texts, want);
        assert_eq!(layout.labels[1].0, 5.5);
        assert_eq!(layout.separators.len(), 17);
        assert_eq!(layout.separators[0], 3.5);
        assert_eq!(
            layout.desc,
            "layer (modules in each, left to right: q_proj, k_proj, v_proj, o_proj)"
        );
    }

    #[test]
    fn two_hundred_modules_thin_their_labels() {
        let slot = PLOT_PX / 200.0;
        let layout = axis_layout(&gemma(50), slot, &width());
        check_layout(&layout, 200, slot);
        assert!(
            layout.labels.len() >= 10 && layout.labels.len() <= 50,
            "{:?}",
            layout.labels
        );
        assert_eq!(layout.labels[0].1, "0");
        assert!(
            layout.desc.contains("every 2nd layer labelled"),
            "{}",
            layout.desc
        );

        let layout = axis_layout(&flat200(), slot, &width());
        check_layout(&layout, 200, slot);
        assert!(layout.labels.len() >= 6, "{:?}", layout.labels);
        assert!(layout.desc.starts_with("module (every "), "{}", layout.desc);
        assert!(layout.separators.is_empty());
    }

    #[test]
    fn numbers_in_names_sort_by_value_and_layers_must_be_contiguous() {
        let mut names = gemma(12);
        names.sort(); // the bundle's order: layers.10 before layers.2
        names.sort_by_cached_key(|n| natural_key(n));
        let want: Vec<String> = (0..12)
            .flat_map(|l| {
                ["k_proj", "o_proj", "q_proj", "v_proj"]
                    .map(|p| format!("base_model.model.model.layers.{l}.self_attn.{p}"))
            })
            .collect();
        assert_eq!(names, want);
        assert_eq!(ordinal(2), "2nd");
        assert_eq!(ordinal(50), "50th");
        let split = vec![
            "layers.0.q".to_string(),
            "layers.1.q".to_string(),
            "layers.0.v".to_string(),
        ];
        assert_eq!(layer_groups(&split), None);
        assert_eq!(layer_groups(&["a.b".to_string(), "a.c".to_string()]), None);
    }

    /// Errors of three adapters on `names`, with a random control for the first.
    fn plot_data(names: &[String]) -> PlotData {
        let errors = (0..3)
            .map(|a| ErrorSeries {
                label: format!("adapters/task{a}"),
                points: names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        (
                            n.clone(),
                            0.3 + 0.05 * a as f64 + 0.2 * ((i % 4) as f64 / 4.0),
                        )
                    })
                    .collect(),
                random: if a == 0 {
                    names.iter().map(|n| (n.clone(), 0.95)).collect()
                } else {
                    Vec::new()
                },
            })
            .collect();
        PlotData {
            title: format!(
                "label layout check: synthetic errors on {} modules",
                names.len()
            ),
            energy: names
                .iter()
                .map(|n| (n.clone(), vec![0.5, 0.8, 1.0], vec![0.4, 0.7, 1.0]))
                .collect(),
            errors: Some(errors),
        }
    }

    #[test]
    fn a_72_module_plot_draws_labels_that_do_not_overlap() {
        let mut names = gemma(18);
        names.sort(); // as a bundle lists them
        for ext in ["png", "svg"] {
            let path = std::env::temp_dir()
                .join(format!("elx-plot-72-modules-{}.{ext}", std::process::id()));
            let boxes = render(&path, &plot_data(&names)).expect("render");
            assert!(std::fs::metadata(&path).expect("written").len() > 1000);
            let texts: Vec<&str> = boxes.iter().map(|b| b.text.as_str()).collect();
            let want: Vec<String> = (0..18).map(|l| l.to_string()).collect();
            assert_eq!(texts, want, "{ext}");
            for pair in boxes.windows(2) {
                let (a, b) = (pair[0].bounds, pair[1].bounds);
                assert!(b.0 - a.2 >= LABEL_GAP - 1.0, "{pair:?} overlap");
            }
            for b in &boxes {
                let (l, t, r, btm) = b.bounds;
                assert!(l >= 0.0 && r <= f64::from(WIDTH), "{b:?}");
                assert!(
                    t >= f64::from(PANEL_HEIGHT) && btm <= f64::from(2 * PANEL_HEIGHT),
                    "{b:?}"
                );
            }
            if std::env::var_os("ELX_KEEP_PLOT").is_none() {
                let _ = std::fs::remove_file(&path);
            } else {
                eprintln!("kept {}", path.display());
            }
        }
    }

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
