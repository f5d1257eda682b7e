//! `elx extract ADAPTER... -o domain.elxb`

use super::{Table, file_size, pct, progress_bar};
use eigenlorax::adapter::{Adapter, base};
use eigenlorax::bundle::{Bundle, SourceAdapter, StorageDtype};
use eigenlorax::subspace::{self, ExtractOptions, KRule, ModuleSelection, Route, Solver};
use eigenlorax::{Error, Result};
use std::path::{Path, PathBuf};

/// Arguments of `elx extract`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// LoRA adapters: PEFT folders or kohya/diffusers .safetensors files (all on one base model).
    #[arg(required = true)]
    pub adapters: Vec<PathBuf>,
    /// Output bundle (.elxb).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Keep exactly K principal directions per side (capped at the rank of the stack).
    #[arg(long, group = "krule")]
    pub k: Option<usize>,
    /// Keep the fewest directions whose σ² reach this share of the energy (default 0.9).
    #[arg(long, group = "krule")]
    pub energy: Option<f64>,
    /// Named K rule: `gavish-donoho` (optimal hard threshold, unknown noise).
    #[arg(long = "k-rule", group = "krule", value_parser = ["gavish-donoho"])]
    pub k_rule: Option<String>,
    /// K rule of the A side only: `N` (fixed), `energy=F` or `gavish-donoho`; overrides the above.
    #[arg(long = "k-a", value_parser = parse_k_rule)]
    pub k_a: Option<KRule>,
    /// K rule of the B side only (same syntax as --k-a).
    #[arg(long = "k-b", value_parser = parse_k_rule)]
    pub k_b: Option<KRule>,
    /// Stack the raw (A', B') instead of each adapter's balanced factorization of ΔW.
    #[arg(long)]
    pub no_canonicalize: bool,
    /// Remove the mean before the decomposition and keep it as one more basis vector.
    #[arg(long)]
    pub center: bool,
    /// Pseudo-PCs (seeded random orthogonal directions) appended per side.
    #[arg(long, default_value_t = 0)]
    pub pseudo: usize,
    /// Seed of the pseudo-PC draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute and store every singular value of each side (for `elx inspect`'s plots and
    /// null comparison). By default K is decided from the trace plus the top values, and the
    /// bundle stores the K values kept and each side's total energy.
    #[arg(long)]
    pub full_spectrum: bool,
    /// Storage dtype of the bases: f32, f16, bf16 or int8 (per-vector absmax scale).
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: StorageDtype,
    /// Only the modules whose name matches this regular expression (only their tensors are read).
    #[arg(long, value_name = "REGEX", value_parser = parse_regex)]
    pub modules: Option<regex::Regex>,
    /// Shard I of N: every N-th module in name order, starting at the I-th (after --modules);
    /// `elx bundle merge` joins the N parts into the one-shot bundle.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// Accept adapters of different base models (by `base_model_name_or_path`, module names
    /// and shapes) in one subspace; by default they are refused.
    #[arg(long)]
    pub allow_mixed_bases: bool,
}

/// Parses a regular expression.
fn parse_regex(s: &str) -> std::result::Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| format!("expected a regular expression: {e}"))
}

/// Parses `I/N` with 0 <= I < N.
pub fn parse_shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let parsed = s
        .split_once('/')
        .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)));
    match parsed {
        Some((i, n)) if i < n => Ok((i, n)),
        _ => Err(format!(
            "expected I/N with 0 <= I < N (e.g. 0/4), found `{s}`"
        )),
    }
}

/// Parses `8`, `energy=0.9` or `gavish-donoho`.
pub fn parse_k_rule(s: &str) -> std::result::Result<KRule, String> {
    if s == "gavish-donoho" {
        return Ok(KRule::GavishDonoho);
    }
    if let Some(v) = s.strip_prefix("energy=") {
        return match v.parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 1.0 => Ok(KRule::Energy(f)),
            _ => Err(format!("expected an energy share in (0, 1], found `{v}`")),
        };
    }
    match s.parse::<usize>() {
        Ok(k) if k > 0 => Ok(KRule::Fixed(k)),
        _ => Err(format!(
            "expected N >= 1, energy=F or gavish-donoho, found `{s}`"
        )),
    }
}

/// Parses a storage dtype name.
pub fn parse_dtype(s: &str) -> std::result::Result<StorageDtype, String> {
    StorageDtype::parse(s).ok_or_else(|| format!("expected f32, f16, bf16 or int8, found `{s}`"))
}

/// The options these arguments ask for.
pub fn options(a: &Args) -> Result<ExtractOptions> {
    let rule = match (a.k, a.energy, a.k_rule.as_deref()) {
        (Some(0), ..) => return Err(Error::Usage("--k must be at least 1".into())),
        (Some(k), ..) => KRule::Fixed(k),
        (_, Some(e), _) if !(e > 0.0 && e <= 1.0) => {
            return Err(Error::Usage(format!(
                "--energy must be in (0, 1], found {e}"
            )));
        }
        (_, Some(e), _) => KRule::Energy(e),
        (_, _, Some(_)) => KRule::GavishDonoho,
        _ => ExtractOptions::default().k_rule_a,
    };
    Ok(ExtractOptions {
        canonicalize: !a.no_canonicalize,
        center: a.center,
        k_rule_a: a.k_a.unwrap_or(rule),
        k_rule_b: a.k_b.unwrap_or(rule),
        pseudo: a.pseudo,
        seed: a.seed,
        full_spectrum: a.full_spectrum,
    })
}

/// glibc's malloc hands blocks above its mmap threshold (dynamic, from 128 KiB) straight back
/// to the kernel and trims freed heap tops with `madvise`, so the extraction's many
/// short-lived matrices of a few MiB were faulted in and zeroed again each time: about a fifth
/// of the CPU of a 50-adapter extraction went to page faults (`perf`, BENCHMARKS.md). Keeping
/// blocks up to 32 MiB (glibc's largest threshold) on the heap and not trimming makes them
/// reusable, at the price of holding freed memory until the process ends. Process setup, not
/// math; only `elx extract` asks for it (the device runtime keeps glibc's defaults).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only changes allocator parameters; it is called before this command
    // starts any thread, and a refused value (return 0) leaves glibc's defaults in place.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Runs `elx extract`.
pub fn run(a: Args) -> Result<()> {
    keep_freed_memory();
    let inputs: Vec<&Path> = a.adapters.iter().map(|p| p.as_path()).collect();
    super::refuse_clobber(&a.output, &inputs, "-o")?;
    let options = options(&a)?;
    let adapters = a
        .adapters
        .iter()
        .map(|p| Adapter::open(p))
        .collect::<Result<Vec<_>>>()?;
    if a.allow_mixed_bases {
        let groups = base::group_by_base(&adapters);
        if groups.len() > 1 {
            let paths: Vec<PathBuf> = adapters.iter().map(|x| x.path.clone()).collect();
            let listed: Vec<String> = groups
                .iter()
                .map(|g| base::describe_group(g, &paths))
                .collect();
            super::warn(format!(
                "--allow-mixed-bases: {} base models in one subspace: {}",
                groups.len(),
                listed.join("; and ")
            ))?;
        }
    } else {
        base::refuse_mixed(&adapters, "--allow-mixed-bases")?;
    }
    let sources: Vec<SourceAdapter> = adapters.iter().map(SourceAdapter::from).collect();
    // The same adapter twice weighs its directions double; say so (the bundle records both).
    for (i, s) in sources.iter().enumerate() {
        if let Some(first) = sources[..i].iter().find(|f| f.sha256 == s.sha256) {
            super::warn(format!(
                "{} is the same adapter as {} (SHA-256 {}…): it counts twice in the subspace",
                s.path,
                first.path,
                &s.sha256[..12.min(s.sha256.len())]
            ))?;
        }
    }
    let bar = progress_bar(0);
    let progress = |done: usize, total: usize, name: &str| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    };
    let selection = ModuleSelection {
        pattern: a.modules.clone(),
        shard: a.shard,
    };
    let extraction =
        subspace::extract_selected(&adapters, &options, &progress, Route::Auto, 2, &selection)?;
    bar.finish_and_clear();
    let sub = extraction.subspace;
    for (name, solvers) in &extraction.solvers {
        for (side, solver) in ["A", "B"].iter().zip(solvers) {
            if let Solver::Fallback(reason) = solver {
                errln!(
                    "note: {name} side {side}: full decomposition instead of the top-K solver: {reason}"
                )?;
            }
        }
    }
    for (&t, zeros) in &extraction.zero_delta {
        let Some(ad) = adapters.get(t) else { continue };
        let extracted = ad
            .modules
            .keys()
            .filter(|n| sub.modules.contains_key(n.as_str()))
            .count();
        if zeros.len() == extracted {
            super::warn(format!(
                "{}: every ΔW is zero (an untrained adapter, B = 0?): it adds nothing to the subspace",
                ad.path.display()
            ))?;
        } else {
            super::warn(format!(
                "{}: {} of its {extracted} modules have a zero ΔW (A or B all zeros): {}",
                ad.path.display(),
                zeros.len(),
                zeros.join(", ")
            ))?;
        }
    }
    for ad in &adapters {
        if !ad.extras.is_empty() {
            let bytes: usize = ad.extras.iter().map(|e| e.bytes).sum();
            errln!(
                "note: {}: {} non-LoRA tensors ({bytes} B: {}) are not part of the subspace; \
                 `elx project` carries them into the task's .elxc and `elx reconstruct` writes them back",
                ad.path.display(),
                ad.extras.len(),
                ad.extras
                    .iter()
                    .take(4)
                    .map(|e| super::printable(&e.key).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
                    + if ad.extras.len() > 4 { ", …" } else { "" }
            )?;
        }
    }
    let manifest = Bundle::write(&a.output, &sub, &sources, a.dtype, None)?;

    let mut t = Table::new(&[
        "module", "in", "out", "n", "K_A", "K_B", "energy A", "energy B",
    ]);
    for (name, m) in &manifest.modules {
        t.row(vec![
            name.clone(),
            m.in_features.to_string(),
            m.out_features.to_string(),
            m.n_adapters.to_string(),
            m.k_a.to_string(),
            m.k_b.to_string(),
            pct(m.a.energy_kept),
            pct(m.b.energy_kept),
        ]);
    }
    out!("{}", t.render())?;
    outln!("subspace id: {}", manifest.subspace_id)?;
    outln!(
        "wrote {} ({}, {} modules from {} adapters, {})",
        a.output.display(),
        manifest.dtype.name(),
        manifest.modules.len(),
        sources.len(),
        file_size(&a.output)
    )?;
    Ok(())
}
