//! Adapters measured against a bundle (`--adapters`, `--random-control`): per-module
//! reconstruction error and captured energy, beside chance; and each side's spectrum against
//! the Gaussian null.

use super::pct2;
use crate::cli::plot::ErrorSeries;
use crate::cli::{Table, pct, sci, warn};
use eigenlorax::Result;
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::Bundle;
use eigenlorax::bundle::random_control::random_subspace;
use eigenlorax::eval::capture_vs_chance::{self, CaptureSummary};
use eigenlorax::eval::project_adapter;
use std::path::PathBuf;

pub(super) fn measure_adapters(
    b: &Bundle,
    paths: &[PathBuf],
    control: bool,
    seed: u64,
) -> Result<(Vec<ErrorSeries>, Vec<Candidate>)> {
    let random = control.then(|| random_subspace(&b.subspace, seed));
    let mut header = vec!["module", "rel. error", "captured"];
    if control {
        header.extend(["random error", "random captured"]);
    }
    let mut series = Vec::new();
    let mut summaries = Vec::new();
    for p in paths {
        let adapter = Adapter::open(p)?;
        let mut t = Table::new(&header);
        let mut s = ErrorSeries {
            label: p.display().to_string(),
            points: Vec::new(),
            random: Vec::new(),
        };
        let projection = project_adapter(&adapter, &b.subspace, random.as_ref(), "the bundle")?;
        for (name, mm) in &projection.measures {
            let mut row = vec![name.clone(), sci(mm.error), pct(mm.captured)];
            if let Some((re, rc)) = mm.random {
                row.extend([sci(re), pct(rc)]);
                s.random.push((name.clone(), re));
            }
            s.points.push((name.clone(), mm.error));
            t.row(row);
        }
        let (measures, loaded, skipped) = (
            &projection.measures,
            &projection.loaded,
            &projection.missing,
        );
        if !measures.is_empty() {
            let ((err, cap), rand) = projection.combined();
            let mut row = vec!["all (ΔW-weighted)".to_string(), sci(err), pct(cap)];
            if let Some((re, rc)) = rand {
                row.extend([sci(re), pct(rc)]);
            }
            t.row(row);
        }
        let summary = capture_vs_chance::capture_summary(loaded, &b.subspace, seed);
        if summary.energy == 0.0 && summary.modules > 0 {
            warn(format!(
                "{}: every measured ΔW is zero (an untrained adapter, B = 0?): nothing to capture",
                p.display()
            ))?;
        }
        let in_sample = b
            .manifest
            .sources
            .iter()
            .any(|s| s.sha256 == adapter.sha256);
        outln!()?;
        outln!(
            "adapter {}{} ({} modules measured): captures {} of its ΔW; a random subspace of the same size {} (chance {})",
            p.display(),
            if in_sample {
                " [a source of this bundle]"
            } else {
                ""
            },
            measures.len(),
            pct(summary.captured),
            pct2(summary.random),
            pct2(summary.chance)
        )?;
        out!("{}", t.render())?;
        if !skipped.is_empty() {
            warn(format!(
                "{}: {} module(s) not in the bundle: {}",
                p.display(),
                skipped.len(),
                skipped.join(", ")
            ))?;
        }
        series.push(s);
        summaries.push(Candidate {
            capture: summary,
            in_sample,
        });
    }
    Ok((series, summaries))
}

/// One measured adapter: its capture in the bundle, and whether the bundle was made from it.
pub(super) struct Candidate {
    pub(super) capture: CaptureSummary,
    pub(super) in_sample: bool,
}

/// Per module and side: directions above a Gaussian null of the stack's shape and energy.
pub(super) fn print_null(b: &Bundle) -> Result<()> {
    let mut t = Table::new(&[
        "module",
        "signal A",
        "energy in them A",
        "σ₁/edge A",
        "signal B",
        "energy in them B",
        "σ₁/edge B",
    ]);
    let (mut dirs, mut total) = (0usize, 0usize);
    let (mut partial, mut complete) = (false, true);
    for (name, m) in &b.subspace.modules {
        let ((ra, ca), (rb, cb)) = capture_vs_chance::stack_shapes(m);
        let null = |s: &eigenlorax::subspace::SideInfo, rows, cols| {
            capture_vs_chance::spectrum_vs_null_of(
                &s.spectrum,
                s.total_energy,
                s.full_spectrum,
                rows,
                cols,
            )
        };
        let (na, nb) = (null(&m.a, ra, ca), null(&m.b, rb, cb));
        dirs += na.signal_directions + nb.signal_directions;
        partial |= na.lower_bound || nb.lower_bound;
        complete &= m.a.full_spectrum && m.b.full_spectrum;
        let len = |s: &eigenlorax::subspace::SideInfo, rows: usize, cols: usize| {
            if s.full_spectrum {
                s.spectrum.len()
            } else {
                rows.min(cols)
            }
        };
        total += len(&m.a, ra, ca) + len(&m.b, rb, cb);
        let at_least = |n: &capture_vs_chance::NullComparison, x: String| {
            if n.lower_bound { format!("≥{x}") } else { x }
        };
        t.row(vec![
            name.clone(),
            at_least(&na, na.signal_directions.to_string()),
            at_least(&na, pct(na.signal_energy)),
            format!("{:.2}", na.top_over_edge),
            at_least(&nb, nb.signal_directions.to_string()),
            at_least(&nb, pct(nb.signal_energy)),
            format!("{:.2}", nb.top_over_edge),
        ]);
    }
    let dirs = if partial {
        format!("at least {dirs}")
    } else {
        dirs.to_string()
    };
    outln!()?;
    outln!(
        "spectrum vs a Gaussian null of the same shape and energy: {dirs} of {total} directions stand above it \
         (structure in the stack; whether new tasks share it shows in a held-out capture)"
    )?;
    if !complete {
        outln!(
            "(this bundle stores the top K singular values per side, not the full spectrum: \
             `≥` marks sides whose every stored value is above the null edge; `elx extract --full-spectrum` stores all)"
        )?;
    }
    out!("{}", t.render())?;
    Ok(())
}
