//! `elx inspect FILE [--adapters DIR...] [--random-control --seed S] [--plot OUT.png|OUT.svg]`

use super::plot::{self, ErrorSeries, PlotData};
use super::{Table, file_size, pct, sci, warn};
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::diagnostics::{explained_energy, projection_error_bound, random_subspace};
use eigenlorax::bundle::{Bundle, CoeffFile};
use eigenlorax::subspace::{self, KRule, ModuleSubspace};
use eigenlorax::tensorfile::TensorFile;
use eigenlorax::{Error, Result};
use std::path::{Path, PathBuf};

/// Arguments of `elx inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A bundle (.elxb) or coefficient file (.elxc).
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
    /// Write plots (explained energy per module; with --adapters, error per module) to .png or .svg.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Which kind of file `path` is, from its metadata.
fn is_coeff_file(path: &Path) -> Result<bool> {
    let tf = TensorFile::open(path)?;
    let json = tf
        .metadata()
        .and_then(|m| m.get("eigenlorax"))
        .ok_or_else(|| {
            Error::bad_file(
                path,
                "expected an eigenlorax bundle or coefficient file (no `eigenlorax` metadata)",
            )
        })?;
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        Error::bad_tensor(
            path,
            "__metadata__.eigenlorax",
            format!("expected valid JSON ({e})"),
        )
    })?;
    Ok(v.get("kind").and_then(|k| k.as_str()) == Some("coefficients"))
}

/// Runs `elx inspect`.
pub fn run(a: Args) -> Result<()> {
    if let Some(p) = &a.plot {
        plot::check_extension(p)?;
    }
    if is_coeff_file(&a.file)? {
        if !a.adapters.is_empty() || a.plot.is_some() || a.random_control {
            return Err(Error::Usage(
                "--adapters, --random-control and --plot apply to bundles (.elxb), not coefficient files".into(),
            ));
        }
        return inspect_coeffs(&a.file);
    }
    let bundle = Bundle::read(&a.file)?;
    print_bundle(&bundle);
    let errors = if a.adapters.is_empty() {
        if a.random_control {
            warn("--random-control has nothing to compare without --adapters");
        }
        None
    } else {
        Some(measure_adapters(
            &bundle,
            &a.adapters,
            a.random_control,
            a.seed,
        )?)
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
                        explained_energy(&m.a.spectrum),
                        explained_energy(&m.b.spectrum),
                    )
                })
                .collect(),
            errors,
        };
        plot::write(p, &data)?;
        println!("wrote plot {} ({})", p.display(), file_size(p));
    }
    Ok(())
}

fn rule(r: &KRule) -> String {
    match r {
        KRule::Fixed(k) => format!("fixed K={k}"),
        KRule::Energy(e) => format!("energy {}", pct(*e)),
        KRule::GavishDonoho => "Gavish-Donoho".into(),
    }
}

fn side_k(k: usize, s: &eigenlorax::bundle::format::SideSummary) -> String {
    let mut extra = String::new();
    if s.mean_vector {
        extra.push_str("+mean");
    }
    if s.pseudo > 0 {
        extra.push_str(&format!("+{}p", s.pseudo));
    }
    if extra.is_empty() {
        k.to_string()
    } else {
        format!("{k} ({}{extra})", s.k_principal)
    }
}

fn print_bundle(b: &Bundle) {
    let m = &b.manifest;
    let o = &m.options;
    println!(
        "bundle:       {} ({})",
        b.path.display(),
        file_size(&b.path)
    );
    println!("subspace id:  {}", m.subspace_id);
    println!(
        "format:       version {}, bases stored as {}",
        m.format_version,
        m.dtype.name()
    );
    println!(
        "options:      canonicalize={} center={} K rule A: {}, B: {}; pseudo-PCs {} (seed {})",
        o.canonicalize,
        o.center,
        rule(&o.k_rule_a),
        rule(&o.k_rule_b),
        o.pseudo,
        o.seed
    );
    println!("sources:      {} adapters", m.sources.len());
    let mut t =
        Table::new(&["  path", "sha256", "format", "modules", "base model"]).left(&[1, 2, 4]);
    for s in &m.sources {
        t.row(vec![
            format!("  {}", s.path),
            s.sha256.clone(),
            format!("{:?}", s.format).to_lowercase(),
            s.modules.to_string(),
            s.base_model.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{}", t.render());
    let mut t = Table::new(&[
        "module",
        "in",
        "out",
        "n",
        "r_max",
        "K_A",
        "K_B",
        "energy A",
        "energy B",
        "storage bound",
    ]);
    for (name, mm) in &m.modules {
        t.row(vec![
            name.clone(),
            mm.in_features.to_string(),
            mm.out_features.to_string(),
            mm.n_adapters.to_string(),
            mm.r_max.to_string(),
            side_k(mm.k_a, &mm.a),
            side_k(mm.k_b, &mm.b),
            pct(mm.a.energy_kept),
            pct(mm.b.energy_kept),
            projection_error_bound(b, name)
                .map(sci)
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{}", t.render());
    println!(
        "(storage bound: worst relative ΔW loss that storing the bases as {} can cause an in-span adapter)",
        m.dtype.name()
    );
    match &m.binding {
        None => println!("binding:      none (run `elx bind` to bind it to a base ONNX model)"),
        Some(bd) => {
            println!(
                "binding:      {} (sha256 {}), {} modules",
                bd.base_file,
                bd.base_sha256,
                bd.modules.len()
            );
            let mut t = Table::new(&["  module", "node", "weight", "layout"]).left(&[1, 2, 3]);
            for (n, mb) in &bd.modules {
                t.row(vec![
                    format!("  {n}"),
                    mb.node.clone(),
                    mb.weight.clone(),
                    format!("{:?}", mb.layout),
                ]);
            }
            print!("{}", t.render());
        }
    }
}

fn inspect_coeffs(path: &Path) -> Result<()> {
    let c = CoeffFile::read(path)?;
    println!("coefficients: {} ({})", path.display(), file_size(path));
    println!("subspace id:  {}", c.subspace_id);
    println!("task:         {}", c.task);
    println!("provenance:   {}", c.provenance.name());
    let mut t = Table::new(&["module", "r", "K_A", "K_B", "parameters"]);
    let mut total = 0;
    for (n, co) in &c.modules {
        let params =
            co.alpha_a.nrows() * co.alpha_a.ncols() + co.alpha_b.nrows() * co.alpha_b.ncols();
        total += params;
        t.row(vec![
            n.clone(),
            co.alpha_a.nrows().to_string(),
            co.alpha_a.ncols().to_string(),
            co.alpha_b.nrows().to_string(),
            params.to_string(),
        ]);
    }
    print!("{}", t.render());
    println!("modules:      {} ({total} coefficients)", c.modules.len());
    match &c.head {
        None => println!("head:         none"),
        Some(h) => {
            println!(
                "head:         {} classes x {} features",
                h.weight.nrows(),
                h.weight.ncols()
            );
            println!("labels:       {}", h.labels.join(", "));
        }
    }
    Ok(())
}

/// Relative ΔW error and captured energy, in the bundle and (optionally) in the random control.
type Measured = (f64, f64, Option<(f64, f64)>);

/// Per-module measurements of one adapter.
fn measure_module(
    adapter: &Adapter,
    name: &str,
    s: &ModuleSubspace,
    random: Option<&ModuleSubspace>,
) -> Result<Measured> {
    let m = adapter.load_module(name)?;
    let err = |s: &ModuleSubspace| {
        subspace::relative_error(&m, &subspace::reconstruct(&subspace::project(&m, s), s))
    };
    let rand = random.map(|r| (err(r), subspace::captured_energy(&m, r)));
    Ok((err(s), subspace::captured_energy(&m, s), rand))
}

fn measure_adapters(
    b: &Bundle,
    paths: &[PathBuf],
    control: bool,
    seed: u64,
) -> Result<Vec<ErrorSeries>> {
    let random = control.then(|| random_subspace(&b.subspace, seed));
    let mut header = vec!["module", "rel. error", "captured"];
    if control {
        header.extend(["random error", "random captured"]);
    }
    let mut series = Vec::new();
    for p in paths {
        let adapter = Adapter::open(p)?;
        let mut t = Table::new(&header);
        let mut s = ErrorSeries {
            label: p.display().to_string(),
            points: Vec::new(),
            random: Vec::new(),
        };
        let mut skipped = Vec::new();
        let (mut sums, mut n) = ([0.0f64; 4], 0usize);
        for (name, info) in &adapter.modules {
            let Some(ms) = b.subspace.modules.get(name) else {
                skipped.push(name.clone());
                continue;
            };
            if info.in_features != ms.in_features || info.out_features != ms.out_features {
                return Err(Error::bad_tensor(
                    adapter.weights_path(),
                    &info.a_key,
                    format!(
                        "expected in={} out={} like `{name}` in the bundle, found in={} out={}",
                        ms.in_features, ms.out_features, info.in_features, info.out_features
                    ),
                ));
            }
            let (err, cap, rand) = measure_module(
                &adapter,
                name,
                ms,
                random.as_ref().and_then(|r| r.modules.get(name)),
            )?;
            let mut row = vec![name.clone(), sci(err), pct(cap)];
            if let Some((re, rc)) = rand {
                row.extend([sci(re), pct(rc)]);
                s.random.push((name.clone(), re));
                sums[2] += re;
                sums[3] += rc;
            }
            sums[0] += err;
            sums[1] += cap;
            n += 1;
            s.points.push((name.clone(), err));
            t.row(row);
        }
        if n > 0 {
            let k = n as f64;
            let mut row = vec!["mean".to_string(), sci(sums[0] / k), pct(sums[1] / k)];
            if control {
                row.extend([sci(sums[2] / k), pct(sums[3] / k)]);
            }
            t.row(row);
        }
        println!();
        println!("adapter {} ({n} modules measured)", p.display());
        print!("{}", t.render());
        if !skipped.is_empty() {
            warn(format!(
                "{}: {} module(s) not in the bundle: {}",
                p.display(),
                skipped.len(),
                skipped.join(", ")
            ));
        }
        series.push(s);
    }
    Ok(series)
}
