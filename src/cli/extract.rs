//! `elx extract ADAPTER... -o domain.elxb`

use super::{Table, file_size, pct, progress_bar};
use eigenlorax::adapter::{Adapter, base};
use eigenlorax::bundle::stats::{self, BundleSink, StatsFile, StatsWriter};
use eigenlorax::bundle::{Bundle, BundleWriter, Manifest, SourceAdapter, StorageDtype};
use eigenlorax::subspace::{
    self, ExtractOptions, KRule, ModuleSelection, PriorStats, Route, Solver,
};
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
    /// Storage dtype of the bases: f32, f16, bf16 or int8 (per-vector absmax scale); default
    /// f32, or the old bundle's with --update.
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<StorageDtype>,
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
    /// Also write the sufficient statistics of the extraction beside the bundle (OUTPUT with
    /// extension .elxs; f64, per module and side d + d·Σr values while Σr ≤ d, else d + d(d+1)/2), so that
    /// `--update` can add adapters later without the old ones.
    #[arg(long)]
    pub keep_stats: bool,
    /// Add ADAPTERS to the bundle OLD.elxb from its statistics (OLD.elxs, written with
    /// --keep-stats) without reading the adapters it was extracted from; writes the new
    /// bundle and its statistics. The old bundle's options and modules are kept (K rule
    /// flags, --modules and --shard are refused). `elx project --remap` carries its tasks.
    #[arg(long, value_name = "OLD.elxb")]
    pub update: Option<PathBuf>,
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

/// What `--update` starts from: the old bundle's manifest and its statistics.
struct Update {
    old: Manifest,
    stats: StatsFile,
}

/// Opens the old bundle and its statistics for `--update` and refuses flags that would
/// change what the old extraction decided.
fn open_update(a: &Args, old_path: &Path) -> Result<Update> {
    let changed = a.k.is_some()
        || a.energy.is_some()
        || a.k_rule.is_some()
        || a.k_a.is_some()
        || a.k_b.is_some()
        || a.no_canonicalize
        || a.center
        || a.pseudo != 0
        || a.seed != 0
        || a.full_spectrum;
    if changed {
        return Err(Error::Usage(
            "--update keeps the old bundle's extraction options: drop the K rule, --no-canonicalize, --center, --pseudo, --seed and --full-spectrum flags".into(),
        ));
    }
    if a.modules.is_some() || a.shard.is_some() {
        return Err(Error::Usage(
            "--update extends every module of the old bundle: --modules and --shard are refused"
                .into(),
        ));
    }
    let old = Bundle::read_manifest(old_path)?;
    if old.binding.is_some() {
        // The new bundle is unbound (its modules may differ); say so rather than drop it.
        super::warn(format!(
            "{} is bound to a base model; the updated bundle is not: run `elx bind` on it",
            old_path.display()
        ))?;
    }
    let stats_path = stats::path_beside(old_path);
    if !stats_path.exists() {
        return Err(Error::bad_file(
            old_path,
            format!(
                "expected its statistics beside it ({}): extract with --keep-stats to update a bundle later",
                stats_path.display()
            ),
        ));
    }
    let stats = StatsFile::open(&stats_path)?;
    stats.check_for(&old)?;
    Ok(Update { old, stats })
}

/// Runs `elx extract`.
pub fn run(a: Args) -> Result<()> {
    // Process setup, not math: see `util::KeepFreedMemory` (the device runtime keeps glibc's
    // defaults; only `elx extract` asks for it).
    eigenlorax::util::KeepFreedMemory::start().for_the_process();
    let mut inputs: Vec<&Path> = a.adapters.iter().map(|p| p.as_path()).collect();
    let old_stats_path = a.update.as_deref().map(stats::path_beside);
    inputs.extend(a.update.as_deref());
    inputs.extend(old_stats_path.as_deref());
    super::refuse_clobber(&a.output, &inputs, "-o")?;
    let keep_stats = a.keep_stats || a.update.is_some();
    let stats_out = keep_stats.then(|| stats::path_beside(&a.output));
    if let Some(s) = &stats_out {
        super::refuse_clobber(s, &inputs, "-o (its statistics)")?;
    }
    let update = a
        .update
        .as_deref()
        .map(|p| open_update(&a, p))
        .transpose()?;
    let options = match &update {
        Some(u) => u.old.options.clone(),
        None => options(&a)?,
    };
    let dtype = match (&update, a.dtype) {
        (Some(u), Some(d)) if d != u.old.dtype => {
            return Err(Error::Usage(format!(
                "--dtype {} differs from the old bundle's {}: --update keeps it",
                d.name(),
                u.old.dtype.name()
            )));
        }
        (Some(u), _) => u.old.dtype,
        (None, d) => d.unwrap_or(StorageDtype::F32),
    };
    let adapters = a
        .adapters
        .iter()
        .map(|p| Adapter::open(p))
        .collect::<Result<Vec<_>>>()?;
    if let Some(u) = &update {
        let base = u.old.base_identity();
        let label = format!("bundle {}", u.old.subspace_id);
        for ad in &adapters {
            base.check_adapter(ad, &u.old.modules, &label)?;
        }
    }
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
    let mut sources: Vec<SourceAdapter> = update
        .as_ref()
        .map(|u| u.old.sources.clone())
        .unwrap_or_default();
    let n_old = sources.len();
    sources.extend(adapters.iter().map(SourceAdapter::from));
    // The same adapter twice weighs its directions double; say so (the bundle records both).
    for (i, s) in sources.iter().enumerate().skip(n_old) {
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
    // Each module is written (converted to the storage dtype, spooled to disk) as soon as it
    // is done, and the bundle is made atomic at the end: memory holds one module's work per
    // thread, not every module's bases.
    let sink = BundleSink::new(
        BundleWriter::create(&a.output, dtype)?,
        stats_out.as_deref().map(StatsWriter::create).transpose()?,
    );
    let prior = update.as_ref().map(|u| &u.stats as &dyn PriorStats);
    let report = subspace::extract_each(
        &adapters,
        prior,
        &options,
        &progress,
        Route::Auto,
        2,
        &selection,
        &sink,
    )?;
    bar.finish_and_clear();
    for (name, solvers) in &report.solvers {
        for (side, solver) in ["A", "B"].iter().zip(solvers) {
            if let Solver::Fallback(reason) = solver {
                errln!(
                    "note: {name} side {side}: full decomposition instead of the top-K solver: {reason}"
                )?;
            }
        }
    }
    for (&t, zeros) in &report.zero_delta {
        let Some(ad) = adapters.get(t) else { continue };
        let extracted = ad
            .modules
            .keys()
            .filter(|n| report.solvers.contains_key(n.as_str()))
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
    let manifest = sink.finish(&options, &sources, None)?;

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
    if let Some(u) = &update {
        outln!(
            "updated {} ({} adapters) with {} adapters",
            u.old.subspace_id,
            n_old,
            adapters.len()
        )?;
    }
    outln!(
        "wrote {} ({}, {} modules from {} adapters, {})",
        a.output.display(),
        manifest.dtype.name(),
        manifest.modules.len(),
        sources.len(),
        file_size(&a.output)
    )?;
    if let Some(s) = &stats_out {
        outln!(
            "wrote {} (sufficient statistics for --update, {})",
            s.display(),
            file_size(s)
        )?;
    }
    Ok(())
}
