//! `elx inspect FILE [--adapters DIR... [--random-control --seed S] [--held-out]] [--plot OUT.png|OUT.svg]`
//!
//! One file per part of the report: describing one file (`describe.rs`), adapters measured
//! against a bundle and its spectra against the Gaussian null (`measure.rs`), and the
//! held-out diagnostics of `--held-out` (`held_out.rs`).

mod describe;
mod held_out;
mod measure;

use super::plot::{self, PlotData};
use super::{file_size, plot_curve, warn};
use describe::{inspect_adapter, inspect_coeffs, print_bundle};
use eigenlorax::bundle::Bundle;
use eigenlorax::bundle::fidelity::explained_energy_of;
use eigenlorax::eval::capture_vs_chance::{self, CaptureSummary};
use eigenlorax::tensorfile::TensorFile;
use eigenlorax::{Error, Result};
use held_out::held_out_report;
use measure::{measure_adapters, print_null};
use std::path::{Path, PathBuf};

/// Arguments of `elx inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A bundle (.elxb), a coefficient file (.elxc), or a LoRA adapter (PEFT folder or
    /// kohya/diffusers file), which is then described.
    pub file: PathBuf,
    /// Adapters to measure against the bundle: per-module reconstruction error and captured energy.
    #[arg(long, num_args = 1..)]
    pub adapters: Vec<PathBuf>,
    /// Beside each adapter, measure a random orthonormal subspace of the same size (the honest control).
    #[arg(long)]
    pub random_control: bool,
    /// Seed of the random control.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Treat --adapters as a pool of related adapters: each held out against the subspace of
    /// the others (extracted with this bundle's options), split into mean / basis, and capture
    /// vs N. The verdict then speaks for new tasks like the pool's.
    #[arg(long, requires = "adapters")]
    pub held_out: bool,
    /// With --held-out: accept adapters of different base models in the pool (refused by
    /// default, as in `elx extract`).
    #[arg(long, requires = "held_out")]
    pub allow_mixed_bases: bool,
    /// Write plots (explained energy per module; with --adapters, error per module) to .png or .svg.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// What `elx inspect` was given.
enum Kind {
    Bundle,
    Coefficients,
    Adapter,
}

/// Which kind of file `path` is: a folder is an adapter; a file is a bundle or coefficient
/// file by its metadata, else an adapter.
fn kind_of(path: &Path) -> Result<Kind> {
    if path.is_dir() {
        return Ok(Kind::Adapter);
    }
    let tf = match TensorFile::open(path) {
        Ok(tf) => tf,
        // Not safetensors at all: the adapter reader names what it expected (and refuses
        // pickles with the conversion command).
        Err(_) => return Ok(Kind::Adapter),
    };
    let Some(json) = tf.metadata().and_then(|m| m.get("eigenlorax")) else {
        return Ok(Kind::Adapter);
    };
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        Error::bad_tensor(
            path,
            "__metadata__.eigenlorax",
            format!("expected valid JSON ({e})"),
        )
    })?;
    Ok(
        if v.get("kind").and_then(|k| k.as_str()) == Some("coefficients") {
            Kind::Coefficients
        } else {
            Kind::Bundle
        },
    )
}

/// Runs `elx inspect`.
pub fn run(a: Args) -> Result<()> {
    if let Some(p) = &a.plot {
        plot::check_extension(p)?;
        // The plots are outputs like any -o: neither may be one of the inputs.
        let mut inputs = vec![a.file.as_path()];
        inputs.extend(a.adapters.iter().map(PathBuf::as_path));
        super::refuse_clobber(p, &inputs, "--plot")?;
        if a.held_out {
            let curve = plot_curve::path_beside(p, "capture-vs-n");
            super::refuse_clobber(&curve, &inputs, "--plot (its capture-vs-N plot)")?;
        }
    }
    let kind = kind_of(&a.file)?;
    if !matches!(kind, Kind::Bundle)
        && (!a.adapters.is_empty() || a.plot.is_some() || a.random_control || a.held_out)
    {
        return Err(Error::Usage(format!(
            "--adapters, --random-control, --held-out and --plot apply to bundles (.elxb), not {}",
            if matches!(kind, Kind::Coefficients) {
                "coefficient files"
            } else {
                "adapters"
            }
        )));
    }
    match kind {
        Kind::Coefficients => return inspect_coeffs(&a.file),
        Kind::Adapter => return inspect_adapter(&a.file),
        Kind::Bundle => {}
    }
    let bundle = Bundle::read(&a.file)?;
    print_bundle(&bundle)?;
    print_null(&bundle)?;
    let mut verdict = None;
    let errors = if a.adapters.is_empty() {
        if a.random_control {
            warn("--random-control has nothing to compare without --adapters")?;
        }
        None
    } else {
        let (series, summaries) = measure_adapters(&bundle, &a.adapters, a.random_control, a.seed)?;
        // An adapter the bundle was extracted from says nothing about new tasks.
        let new: Vec<&CaptureSummary> = summaries
            .iter()
            .filter(|s| !s.in_sample)
            .map(|s| &s.capture)
            .collect();
        if new.len() < summaries.len() && !a.held_out {
            warn(format!(
                "{} of the adapters are sources of this bundle (in-sample); the verdict uses the others. \
                 --held-out measures each against the subspace of the rest",
                summaries.len() - new.len()
            ))?;
        }
        if !new.is_empty() {
            let n = new.len() as f64;
            verdict = Some(capture_vs_chance::verdict(
                new.iter().map(|s| s.captured).sum::<f64>() / n,
                new.iter().map(|s| s.random).sum::<f64>() / n,
            ));
        }
        if a.held_out {
            verdict = Some(held_out_report(
                &bundle,
                &a.adapters,
                a.seed,
                a.plot.as_deref(),
                a.allow_mixed_bases,
            )?);
        }
        Some(series)
    };
    if let Some(p) = &a.plot {
        let data = PlotData {
            title: format!("{} ({})", bundle.manifest.subspace_id, a.file.display()),
            energy: bundle
                .subspace
                .modules
                .iter()
                .map(|(n, m)| {
                    (
                        n.clone(),
                        explained_energy_of(&m.a.spectrum, m.a.total_energy),
                        explained_energy_of(&m.b.spectrum, m.b.total_energy),
                    )
                })
                .collect(),
            errors,
        };
        plot::write(p, &data)?;
        outln!("wrote plot {} ({})", p.display(), file_size(p))?;
    }
    if let Some(v) = verdict {
        outln!()?;
        outln!("verdict: {}", v.line)?;
    }
    Ok(())
}

/// A share with two decimals (chance and random captures are often well below 1%).
pub(super) fn pct2(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2}%", 100.0 * x)
    } else {
        "n/a".into()
    }
}
