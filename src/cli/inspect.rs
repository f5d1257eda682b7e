//! `elx inspect FILE [--adapters DIR... [--random-control --seed S] [--held-out]] [--plot OUT.png|OUT.svg]`

use super::plot::{self, ErrorSeries, PlotData};
use super::{Table, file_size, pct, plot_capture, plot_curve, sci, warn};
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::diagnostics::{
    explained_energy_of, projection_error_bound, random_subspace,
};
use eigenlorax::bundle::{Bundle, CoeffFile};
use eigenlorax::eval::diagnostics::{self, CaptureSummary};
use eigenlorax::eval::project_adapter;
use eigenlorax::subspace::KRule;
use eigenlorax::tensorfile::TensorFile;
use eigenlorax::{Error, Result};
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
            verdict = Some(diagnostics::verdict(
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

fn print_bundle(b: &Bundle) -> Result<()> {
    let m = &b.manifest;
    let o = &m.options;
    outln!(
        "bundle:       {} ({})",
        b.path.display(),
        file_size(&b.path)
    )?;
    outln!("subspace id:  {}", m.subspace_id)?;
    outln!(
        "format:       version {}, bases stored as {}",
        m.format_version,
        m.dtype.name()
    )?;
    outln!(
        "options:      canonicalize={} center={} K rule A: {}, B: {}; pseudo-PCs {} (seed {})",
        o.canonicalize,
        o.center,
        rule(&o.k_rule_a),
        rule(&o.k_rule_b),
        o.pseudo,
        o.seed
    )?;
    outln!(
        "base:         {}{}",
        m.base_identity().describe(),
        if m.base.is_none() {
            " (derived: this format stores none)"
        } else {
            ""
        }
    )?;
    outln!("sources:      {} adapters", m.sources.len())?;
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
    out!("{}", t.render())?;
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
    out!("{}", t.render())?;
    outln!(
        "(storage bound: worst relative ΔW loss that storing the bases as {} can cause an in-span adapter)",
        m.dtype.name()
    )?;
    match &m.binding {
        None => outln!("binding:      none (run `elx bind` to bind it to a base ONNX model)")?,
        Some(bd) => {
            outln!(
                "binding:      {} (sha256 {}), {} modules",
                bd.base_file,
                bd.base_sha256,
                bd.modules.len()
            )?;
            let mut t = Table::new(&["  module", "node", "weight", "layout"]).left(&[1, 2, 3]);
            for (n, mb) in &bd.modules {
                t.row(vec![
                    format!("  {n}"),
                    mb.node.clone(),
                    mb.weight.clone(),
                    format!("{:?}", mb.layout),
                ]);
            }
            out!("{}", t.render())?;
        }
    }
    Ok(())
}

/// `elx inspect ADAPTER`: what the adapter holds, read the way `elx extract` reads it.
fn inspect_adapter(path: &Path) -> Result<()> {
    let ad = Adapter::open(path).map_err(|e| match e {
        Error::BadInput {
            path: p,
            tensor,
            message,
        } if !path.is_dir() && p == path && tensor.is_none() => Error::BadInput {
            path: p,
            tensor,
            message: format!(
                "expected an eigenlorax bundle or coefficient file, or a LoRA adapter: {message}"
            ),
        },
        other => other,
    })?;
    let norms = ad.delta_norms()?;
    let weights = ad.weights_path();
    outln!(
        "adapter:      {} ({})",
        ad.path.display(),
        format!("{:?}", ad.format).to_lowercase()
    )?;
    outln!(
        "weights:      {} ({}, sha256 {})",
        weights.display(),
        file_size(weights),
        ad.sha256
    )?;
    outln!(
        "base model:   {} (fingerprint {} over {} modules)",
        ad.base_model.as_deref().unwrap_or("-"),
        ad.fingerprint(),
        ad.modules.len()
    )?;
    let c = &ad.config;
    let json = |k: &str| match c.get(k) {
        None | Some(serde_json::Value::Null) => "-".to_string(),
        Some(serde_json::Value::String(s)) => super::printable(s).into_owned(),
        Some(v) => super::printable(&v.to_string()).into_owned(),
    };
    if ad.format == eigenlorax::adapter::AdapterFormat::Peft {
        outln!(
            "config:       task_type {}, r {}, lora_alpha {}, use_rslora {}, fan_in_fan_out {}",
            json("task_type"),
            json("r"),
            json("lora_alpha"),
            json("use_rslora"),
            json("fan_in_fan_out"),
        )?;
        outln!("              target_modules {}", json("target_modules"))?;
        outln!("              modules_to_save {}", json("modules_to_save"))?;
    }
    let mut t = Table::new(&["module", "r", "in", "out", "scale", "‖ΔW‖_F"]);
    for (name, m) in &ad.modules {
        t.row(vec![
            name.clone(),
            m.rank.to_string(),
            m.in_features.to_string(),
            m.out_features.to_string(),
            format!("{:.4}", m.scale),
            norms.get(name).map_or("-".into(), |x| sci(*x)),
        ]);
    }
    out!("{}", t.render())?;
    let params: usize = ad
        .modules
        .values()
        .map(|m| (m.in_features + m.out_features) * m.rank)
        .sum();
    outln!(
        "modules:      {} LoRA modules ({params} parameters)",
        ad.modules.len()
    )?;
    if ad.extras.is_empty() {
        outln!("extras:       none (no tensors besides the LoRA pairs)")?;
    } else {
        let bytes: usize = ad.extras.iter().map(|e| e.bytes).sum();
        outln!(
            "extras:       {} non-LoRA tensors, {bytes} B (heads, modules_to_save copies; not part of any subspace)",
            ad.extras.len()
        )?;
        let mut t = Table::new(&["  tensor", "shape", "dtype", "bytes"]).left(&[1, 2, 3]);
        for e in &ad.extras {
            t.row(vec![
                format!("  {}", super::printable(&e.key)),
                format!("{:?}", e.shape),
                e.dtype.clone(),
                e.bytes.to_string(),
            ]);
        }
        out!("{}", t.render())?;
    }
    let zero: Vec<&str> = norms
        .iter()
        .filter(|(_, n)| **n == 0.0)
        .map(|(k, _)| k.as_str())
        .collect();
    if !zero.is_empty() && zero.len() == norms.len() {
        warn(format!(
            "{}: every ΔW is zero (an untrained adapter, B = 0?): it adds nothing to a subspace",
            path.display()
        ))?;
    } else if !zero.is_empty() {
        warn(format!(
            "{}: {} of its {} modules have a zero ΔW: {}",
            path.display(),
            zero.len(),
            norms.len(),
            zero.join(", ")
        ))?;
    }
    Ok(())
}

fn inspect_coeffs(path: &Path) -> Result<()> {
    let c = CoeffFile::read(path)?;
    outln!("coefficients: {} ({})", path.display(), file_size(path))?;
    outln!("subspace id:  {}", c.subspace_id)?;
    outln!("task:         {}", super::printable(&c.task))?;
    outln!("provenance:   {}", c.provenance.name())?;
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
    out!("{}", t.render())?;
    outln!("modules:      {} ({total} coefficients)", c.modules.len())?;
    match &c.head {
        None => outln!("head:         none")?,
        Some(h) => {
            outln!(
                "head:         {} classes x {} features",
                h.weight.nrows(),
                h.weight.ncols()
            )?;
            let labels: Vec<_> = h.labels.iter().map(|l| super::printable(l)).collect();
            outln!("labels:       {}", labels.join(", "))?;
        }
    }
    Ok(())
}

fn measure_adapters(
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
        let summary = diagnostics::capture_summary(loaded, &b.subspace, seed);
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
struct Candidate {
    capture: CaptureSummary,
    in_sample: bool,
}

/// A share with two decimals (chance and random captures are often well below 1%).
fn pct2(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2}%", 100.0 * x)
    } else {
        "n/a".into()
    }
}

/// Per module and side: directions above a Gaussian null of the stack's shape and energy.
fn print_null(b: &Bundle) -> Result<()> {
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
        let ((ra, ca), (rb, cb)) = diagnostics::stack_shapes(m);
        let null = |s: &eigenlorax::subspace::SideInfo, rows, cols| {
            diagnostics::spectrum_vs_null_of(
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
        let at_least = |n: &diagnostics::NullComparison, x: String| {
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

/// `--held-out`: the adapters as a pool, each against the others' subspace, then capture vs N.
fn held_out_report(
    b: &Bundle,
    paths: &[PathBuf],
    seed: u64,
    plot: Option<&Path>,
    allow_mixed_bases: bool,
) -> Result<diagnostics::Verdict> {
    let pool = diagnostics::Pool::load_with(paths, allow_mixed_bases)?;
    let options = &b.manifest.options;
    let rows = diagnostics::held_out(&pool, options, seed)?;
    outln!()?;
    outln!(
        "held out, each adapter against the subspace of the other {} (extracted like this bundle):",
        pool.len() - 1
    )?;
    let mut t = Table::new(&[
        "adapter",
        "K_A+K_B",
        "captured",
        "input side",
        "output side",
        "random",
        "chance",
        "mean only",
        "basis only",
        "mean+basis",
    ]);
    for h in &rows {
        t.row(vec![
            h.name.clone(),
            h.k_total.to_string(),
            pct(h.recycled.captured),
            pct(h.recycled.input_side),
            pct(h.recycled.output_side),
            pct2(h.recycled.random),
            pct2(h.recycled.chance),
            pct(h.mean_only),
            pct(h.basis_only),
            pct(h.mean_plus_basis),
        ]);
    }
    let m = diagnostics::HeldOutMean::of(&rows);
    t.row(vec![
        "mean".into(),
        format!("{:.0}", m.k_total),
        pct(m.recycled.captured),
        pct(m.recycled.input_side),
        pct(m.recycled.output_side),
        pct2(m.recycled.random),
        pct2(m.recycled.chance),
        pct(m.mean_only),
        pct(m.basis_only),
        pct(m.mean_plus_basis),
    ]);
    out!("{}", t.render())?;
    outln!(
        "(input / output side: the share inside V_A alone (rows of A) or V_B alone (columns of B); \
         mean only / basis only / mean+basis: the others' centered subspace split into its mean direction and its principal directions)"
    )?;
    let curve = diagnostics::capture_vs_n(
        &pool,
        &diagnostics::doubling_sizes(pool.len() - 1),
        options,
        seed,
    )?;
    outln!()?;
    outln!("capture vs N (every adapter held out against N of the others):")?;
    let mut t = Table::new(&["N", "K_A+K_B", "captured", "min", "max", "random", "chance"]);
    for c in &curve {
        t.row(vec![
            c.n.to_string(),
            format!("{:.0}", c.k_total),
            pct(c.captured),
            pct(c.min),
            pct(c.max),
            pct2(c.random),
            pct2(c.chance),
        ]);
    }
    out!("{}", t.render())?;
    let pair = diagnostics::pairwise_capture(&pool)?;
    let st = diagnostics::structure(&rows, &pair, &pool.names);
    let d = &st.all;
    outln!()?;
    outln!(
        "distribution of the held-out capture: median {}, quartiles {} – {}, min {}, max {}; {} of {} at or above the gain threshold {} (random: median {})",
        pct(d.median),
        pct(d.q1),
        pct(d.q3),
        pct(d.min),
        pct(d.max),
        d.above_gain,
        d.n,
        pct(diagnostics::GAIN_CAPTURE),
        pct2(d.random_median)
    )?;
    if st.clusters.is_empty() {
        outln!(
            "clusters: none (no two adapters put {} or more of their ΔW in each other's span, {}x chance)",
            pct(diagnostics::CLUSTER_EDGE_CAPTURE),
            diagnostics::CLUSTER_EDGE_OVER_CHANCE
        )?;
    } else {
        outln!(
            "clusters (adapters that each put {} or more of their ΔW in the other's span, {}x chance, linked):",
            pct(diagnostics::CLUSTER_EDGE_CAPTURE),
            diagnostics::CLUSTER_EDGE_OVER_CHANCE
        )?;
        let mut t =
            Table::new(&["cluster", "adapters", "median", "min", "max", "verdict"]).left(&[5]);
        for (i, c) in st.clusters.iter().enumerate() {
            t.row(vec![
                (i + 1).to_string(),
                c.members.len().to_string(),
                pct(c.distribution.median),
                pct(c.distribution.min),
                pct(c.distribution.max),
                format!("{:?}", c.verdict.gain).to_lowercase(),
            ]);
        }
        let r = &st.rest_distribution;
        if r.n > 0 {
            t.row(vec![
                "rest".into(),
                r.n.to_string(),
                pct(r.median),
                pct(r.min),
                pct(r.max),
                format!("{:?}", st.verdict.gain).to_lowercase(),
            ]);
        }
        out!("{}", t.render())?;
        for (i, c) in st.clusters.iter().enumerate() {
            let names: Vec<&str> = c
                .members
                .iter()
                .filter_map(|&k| pool.names.get(k).map(String::as_str))
                .collect();
            outln!("  cluster {}: {}", i + 1, names.join(", "))?;
        }
    }
    if let Some(p) = plot {
        let out = plot_curve::path_beside(p, "capture-vs-n");
        plot_curve::write(
            &out,
            &format!("held-out capture vs N ({} adapters)", pool.len()),
            &curve,
        )?;
        outln!("wrote plot {} ({})", out.display(), file_size(&out))?;
        let bars: Vec<plot_capture::Bar> = rows
            .iter()
            .enumerate()
            .map(|(i, h)| plot_capture::Bar {
                name: diagnostics::short_name(Path::new(&h.name)),
                captured: h.recycled.captured,
                random: h.recycled.random,
                cluster: st.clusters.iter().position(|c| c.members.contains(&i)),
            })
            .collect();
        let out = plot_curve::path_beside(p, "capture-per-adapter");
        plot_capture::write(
            &out,
            &format!("held-out capture per adapter ({} adapters)", pool.len()),
            &bars,
        )?;
        outln!("wrote plot {} ({})", out.display(), file_size(&out))?;
    }
    Ok(diagnostics::Verdict {
        gain: st.verdict.gain,
        line: st.line,
    })
}
