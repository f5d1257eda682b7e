//! Stage 2: per-module principal subspaces (the paper's Algorithm 1) and coefficients in them.
//!
//! Per module, the A side stacks the rows of every adapter's A' (Σr x in) and keeps the top
//! K_A right singular vectors as V_A [K_A x in] (orthonormal rows); the B side stacks the
//! columns of every B' (out x Σr) and keeps the top K_B left singular vectors as
//! V_B [out x K_B] (orthonormal columns).
//!
//! * [`decompose`]: exact decomposition of a stacked side, on the Gram in the smaller
//!   dimension, streaming the d x d Gram for very many adapters.
//! * [`topk`]: certified top-K eigenpairs (block Krylov; Davis–Kahan stopping test, with
//!   λ_{K+1} known or proven by an inertia test).
//! * [`select`]: the K rules (fixed, explained energy, Gavish–Donoho).
//! * [`augment`]: mean direction and pseudo-PCs, orthogonalized by modified Gram–Schmidt.
//! * [`project`]: coefficients of an adapter in a subspace, reconstruction, errors.

pub mod augment;
pub mod decompose;
pub mod project;
pub mod select;
pub mod topk;

use crate::adapter::{Adapter, LoraModule};
use crate::error::{Error, Result};
use crate::linalg;
use faer::Mat;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub use decompose::{Decomposition, Held, Route, SideAccumulator, SideStats};
pub use topk::Solver;

pub use project::{
    Coefficients, Remapped, captured_energy, project, reconstruct, relative_error, remap,
    try_project, try_reconstruct,
};

/// How many principal directions to keep on one side of one module.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "rule", content = "value", rename_all = "kebab-case")]
pub enum KRule {
    /// Exactly K (capped at the rank of the stack).
    Fixed(usize),
    /// The smallest K whose squared singular values reach this share of the total energy.
    Energy(f64),
    /// Gavish & Donoho (2014) optimal hard threshold for unknown noise level.
    GavishDonoho,
}

/// Options of [`extract`]; all of them are recorded in the bundle manifest.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExtractOptions {
    /// Replace each adapter's (A', B') by the balanced factorization of ΔW before stacking.
    pub canonicalize: bool,
    /// Subtract the mean vector before the decomposition and keep it as one more basis vector.
    pub center: bool,
    /// K rule for the A side.
    pub k_rule_a: KRule,
    /// K rule for the B side.
    pub k_rule_b: KRule,
    /// Pseudo-PCs appended per side.
    pub pseudo: usize,
    /// Seed of the pseudo-PC Gaussian draws.
    pub seed: u64,
    /// Compute and keep every singular value of each side (for plots and diagnostics that
    /// read the whole spectrum). Without it the fixed and energy rules are served from the
    /// trace plus the top values, and [`SideInfo::spectrum`] holds the K values kept.
    /// (Not written to the manifest when `false`, so that older manifests read the same.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full_spectrum: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self {
            canonicalize: true,
            center: false,
            k_rule_a: KRule::Energy(0.9),
            k_rule_b: KRule::Energy(0.9),
            pseudo: 0,
            seed: 0,
            full_spectrum: false,
        }
    }
}

/// What was kept on one side of one module, for the manifest and the plots.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SideInfo {
    /// Singular values of the stacked (and, if centered, mean-removed) side, descending: all
    /// of them when `full_spectrum` is true, else the top K kept.
    pub spectrum: Vec<f64>,
    /// Σσ² of the whole stack (the trace of its Gram), exact either way.
    pub total_energy: f64,
    /// Whether `spectrum` is complete (min(rows, cols) values) or the top K only.
    pub full_spectrum: bool,
    /// Principal directions kept (the K the rule chose).
    pub k_principal: usize,
    /// Whether the mean direction was appended (centering).
    pub mean_vector: bool,
    /// Pseudo-PCs appended (after dropping near-null draws).
    pub pseudo: usize,
    /// Share of the stack's energy (Σσ²) inside the kept principal directions.
    pub energy_kept: f64,
}

impl SideInfo {
    /// Total basis size on this side: principal + mean + pseudo.
    pub fn k_total(&self) -> usize {
        self.k_principal + usize::from(self.mean_vector) + self.pseudo
    }
}

/// The subspace of one adapted module.
#[derive(Clone, Debug)]
pub struct ModuleSubspace {
    /// Input features of the module.
    pub in_features: usize,
    /// Output features of the module.
    pub out_features: usize,
    /// Largest rank among the adapters that had this module.
    pub r_max: usize,
    /// How many adapters had this module.
    pub n_adapters: usize,
    /// V_A [K_A x in], orthonormal rows (exactly so before quantization).
    pub v_a: Mat<f64>,
    /// V_B [out x K_B], orthonormal columns.
    pub v_b: Mat<f64>,
    /// A-side statistics.
    pub a: SideInfo,
    /// B-side statistics.
    pub b: SideInfo,
}

/// A whole subspace: one [`ModuleSubspace`] per module name.
#[derive(Clone, Debug)]
pub struct Subspace {
    /// Per-module subspaces by canonical module name.
    pub modules: BTreeMap<String, ModuleSubspace>,
    /// The options the subspace was extracted with.
    pub options: ExtractOptions,
}

/// Progress callback: (modules done, modules total, module name).
pub type Progress<'a> = &'a (dyn Fn(usize, usize, &str) + Sync);

/// Extracts the subspace of every module found in any adapter (a module present in only some
/// adapters uses those). Adapters are read one module at a time.
///
/// Before any math, every adapter's header is checked against the first adapter that has the
/// same module: a different `in` or `out` is an [`Error::BadInput`] naming the adapter's file
/// and tensor. Modules run on up to 2 threads (`std::thread::scope`); the result does not
/// depend on the thread count (each module is computed independently and stored by name). On
/// a failure the remaining modules are not started and the error of the lowest-indexed failed
/// module (in name order) is returned, the same error a single-threaded run gives. `progress` is called after each module with
/// (modules done, total, module name).
pub fn extract(
    adapters: &[Adapter],
    options: &ExtractOptions,
    progress: Progress<'_>,
) -> Result<Subspace> {
    extract_with(adapters, options, progress, Route::Auto, 2)
}

/// Which modules an extraction computes: those whose name matches `pattern` (all when `None`),
/// then of those, in name order, every `n`-th starting at `i` for `shard` = (i, n). Each
/// module's subspace depends only on that module's tensors, so the parts of a sharded
/// extraction are exactly the one-shot extraction's modules (the bundle stage joins them).
#[derive(Clone, Debug, Default)]
pub struct ModuleSelection {
    /// Keep the modules whose canonical name this regular expression matches (anywhere).
    pub pattern: Option<regex::Regex>,
    /// (i, n): keep the i-th of every n matching modules, 0 ≤ i < n.
    pub shard: Option<(usize, usize)>,
}

impl ModuleSelection {
    /// The selected names out of all module names in ascending order. An empty result or a
    /// bad shard is an [`Error::Usage`].
    pub fn select<'a>(&self, names: &[&'a str]) -> Result<Vec<&'a str>> {
        let matching: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| self.pattern.as_ref().is_none_or(|p| p.is_match(n)))
            .collect();
        let kept: Vec<&str> = match self.shard {
            Some((i, n)) if n == 0 || i >= n => {
                return Err(Error::Usage(format!(
                    "shard {i}/{n}: expected i/n with 0 <= i < n"
                )));
            }
            Some((i, n)) => matching.into_iter().skip(i).step_by(n).collect(),
            None => matching,
        };
        if kept.is_empty() {
            let pattern = self
                .pattern
                .as_ref()
                .map_or(String::new(), |p| format!(" matching `{p}`"));
            let shard = self
                .shard
                .map_or(String::new(), |(i, n)| format!(" in shard {i}/{n}"));
            return Err(Error::Usage(format!(
                "no module{pattern}{shard} among the {} modules of the adapters",
                names.len()
            )));
        }
        Ok(kept)
    }
}

/// [`extract`] with the decomposition route and the thread count chosen (benchmarks, tests).
pub fn extract_with(
    adapters: &[Adapter],
    options: &ExtractOptions,
    progress: Progress<'_>,
    route: Route,
    threads: usize,
) -> Result<Subspace> {
    extract_selected(
        adapters,
        options,
        progress,
        route,
        threads,
        &ModuleSelection::default(),
    )
    .map(|e| e.subspace)
}

/// What [`extract_selected`] returns: the subspace, and per module how each side's basis
/// vectors were found ([A side, B side]), so that a caller can say where the top-K solver fell
/// back to the full decomposition and why.
#[derive(Clone, Debug)]
pub struct Extraction {
    /// The extracted subspace.
    pub subspace: Subspace,
    /// Module name -> [A-side solver, B-side solver].
    pub solvers: BTreeMap<String, [Solver; 2]>,
    /// Adapter index -> the extracted modules whose ΔW = B'·A' is exactly zero in it (A or B
    /// all zeros: an untrained adapter, PEFT starts B at zero). Such a module adds nothing to
    /// the stack, so `elx extract` warns about it.
    pub zero_delta: BTreeMap<usize, Vec<String>>,
}

/// [`extract_with`] over the modules `selection` keeps: only those modules' tensors are
/// read (every adapter's header is still checked).
pub fn extract_selected(
    adapters: &[Adapter],
    options: &ExtractOptions,
    progress: Progress<'_>,
    route: Route,
    threads: usize,
    selection: &ModuleSelection,
) -> Result<Extraction> {
    let collected = std::sync::Mutex::new(BTreeMap::new());
    let sink = CollectModules(&collected);
    let report = extract_each(
        adapters, None, options, progress, route, threads, selection, &sink,
    )?;
    let modules = collected
        .into_inner()
        .map_err(|_| Error::Numeric("an extraction thread panicked".into()))?;
    Ok(Extraction {
        subspace: Subspace {
            modules,
            options: options.clone(),
        },
        solvers: report.solvers,
        zero_delta: report.zero_delta,
    })
}

/// The sink of [`extract_selected`]: keeps every module in memory.
struct CollectModules<'a>(&'a std::sync::Mutex<BTreeMap<String, ModuleSubspace>>);

impl ModuleSink for CollectModules<'_> {
    fn module(&self, name: &str, module: ModuleSubspace) -> Result<()> {
        self.0
            .lock()
            .map_err(|_| Error::Numeric("an extraction thread panicked".into()))?
            .insert(name.to_string(), module);
        Ok(())
    }
}

/// Where [`extract_each`] hands each module as soon as it is done (from the worker threads,
/// one module at a time per thread): a bundle writer that stores it and drops it
/// (`crate::bundle::BundleWriter`), or a collector.
pub trait ModuleSink: Sync {
    /// Whether [`ModuleSink::stats`] wants each module's sufficient statistics (the default:
    /// no, and none are built).
    fn wants_stats(&self) -> bool {
        false
    }

    /// A module's sufficient statistics after all its adapters were folded in (prior plus
    /// new ones), before its decomposition; only called when [`ModuleSink::wants_stats`].
    fn stats(&self, _name: &str, _stats: &ModuleStats) -> Result<()> {
        Ok(())
    }

    /// A finished module. An error stops the extraction like a failed module.
    fn module(&self, name: &str, module: ModuleSubspace) -> Result<()>;
}

/// Sufficient statistics of earlier adapters, per module, that an extraction continues from
/// (`elx extract --update`; `crate::bundle::StatsFile` reads them beside a bundle). Modules
/// are loaded one at a time, when their turn comes.
pub trait PriorStats: Sync {
    /// Every module with its (in, out) features.
    fn modules(&self) -> Vec<(String, usize, usize)>;
    /// The statistics of one module.
    fn load(&self, name: &str) -> Result<ModuleStats>;
}

/// The exact state of one module's extraction after some adapters: both sides'
/// [`SideStats`] and the counts the manifest records. Folding more adapters into it and
/// decomposing gives the extraction over all of them (see [`extract_each`]).
#[derive(Clone, Debug)]
pub struct ModuleStats {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Largest adapter rank so far.
    pub r_max: usize,
    /// Adapters folded in so far.
    pub n_adapters: usize,
    /// A side (vectors of length `in_features`).
    pub a: SideStats,
    /// B side (vectors of length `out_features`).
    pub b: SideStats,
}

/// What [`extract_each`] reports besides the modules it handed to its sink.
#[derive(Clone, Debug, Default)]
pub struct ExtractionReport {
    /// Module name -> [A-side solver, B-side solver].
    pub solvers: BTreeMap<String, [Solver; 2]>,
    /// Adapter index -> the extracted modules whose ΔW is exactly zero in it.
    pub zero_delta: BTreeMap<usize, Vec<String>>,
}

/// The extraction, streaming: each module of `selection` is computed from `prior`'s
/// statistics (when given) plus every adapter that has it, handed to `sink` and dropped, so
/// memory holds at most one module's work per thread. Modules are the union of `prior`'s and
/// the adapters'; an adapter whose module shape differs from `prior`'s or another adapter's
/// is an [`Error::BadInput`] naming its file and tensor. Threads, ordering and errors as
/// [`extract_selected`] (which is this function with a sink that collects).
///
/// With `prior` the statistics are those an extraction over the earlier adapters held when
/// it finished folding them, so the result is the extraction over earlier plus new adapters
/// up to the rounding of a different summation order (`tests/subspace/update.rs`).
#[allow(clippy::too_many_arguments)]
pub fn extract_each(
    adapters: &[Adapter],
    prior: Option<&dyn PriorStats>,
    options: &ExtractOptions,
    progress: Progress<'_>,
    route: Route,
    threads: usize,
    selection: &ModuleSelection,
    sink: &dyn ModuleSink,
) -> Result<ExtractionReport> {
    validate_options(options)?;
    let prior_modules = prior.map(|p| p.modules()).unwrap_or_default();
    if adapters.is_empty() && prior_modules.is_empty() {
        return Err(Error::Usage(
            "no adapters to extract a subspace from".into(),
        ));
    }
    if prior.is_some() && route != Route::Auto {
        return Err(Error::Usage(
            "an extraction that continues from statistics takes the automatic route".into(),
        ));
    }
    // Union of module names, and per module the (in, out) of the statistics, else of the
    // first adapter that has it (usize::MAX: the statistics).
    let mut shapes: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for (name, i, o) in &prior_modules {
        shapes.insert(name.as_str(), (*i, *o, usize::MAX));
    }
    for (t, ad) in adapters.iter().enumerate() {
        for (name, info) in &ad.modules {
            let &mut (in_f, out_f, first) =
                shapes
                    .entry(name.as_str())
                    .or_insert((info.in_features, info.out_features, t));
            let first_path = adapters
                .get(first)
                .map(|a| a.path.display().to_string())
                .unwrap_or_else(|| "the earlier adapters' statistics".to_string());
            if info.in_features != in_f {
                return Err(Error::bad_tensor(
                    ad.weights_path(),
                    info.a_key.clone(),
                    format!(
                        "expected [r, in={in_f}] like the other adapters (first: {first_path}), found [{}, {}]",
                        info.rank, info.in_features
                    ),
                ));
            }
            if info.out_features != out_f {
                return Err(Error::bad_tensor(
                    ad.weights_path(),
                    info.b_key.clone(),
                    format!(
                        "expected [out={out_f}, r] like the other adapters (first: {first_path}), found [{}, {}]",
                        info.out_features, info.rank
                    ),
                ));
            }
        }
    }
    let all: Vec<&str> = shapes.keys().copied().collect();
    let names: Vec<(&str, usize, usize, bool)> = selection
        .select(&all)?
        .into_iter()
        .filter_map(|n| {
            shapes
                .get(n)
                .map(|&(i, o, first)| (n, i, o, first == usize::MAX))
        })
        .collect();
    let total = names.len();
    let done = run_ordered(
        total,
        threads,
        |idx| {
            let &(name, in_f, out_f, has_prior) = names
                .get(idx)
                .ok_or_else(|| Error::Numeric(format!("module index {idx} out of range")))?;
            let res = (|| {
                let start = match prior {
                    Some(p) if has_prior => Some(p.load(name)?),
                    _ => None,
                };
                let (sub, solver, zeros) =
                    extract_named(adapters, start, name, in_f, out_f, options, route, sink)?;
                sink.module(name, sub)?;
                Ok((solver, zeros))
            })();
            Ok((name, res))
        },
        progress,
    )?;
    let mut report = ExtractionReport::default();
    for ((name, _, _, _), (solver, zeros)) in names.iter().zip(done) {
        report.solvers.insert(name.to_string(), solver);
        for t in zeros {
            report
                .zero_delta
                .entry(t)
                .or_default()
                .push(name.to_string());
        }
    }
    Ok(report)
}

/// Runs `job(0..total)` on up to `threads` scoped threads and returns the results in index
/// order, whatever the thread count. Each job returns its item's name (for `progress`) and its
/// result. After a failure no new index is started, and the error of the lowest failing index
/// is returned: indices are handed out in increasing order, so every index below one that
/// failed has been started and finished; the error is the same as a single-threaded run's.
fn run_ordered<'n, T: Send>(
    total: usize,
    threads: usize,
    job: impl Fn(usize) -> Result<(&'n str, Result<T>)> + Sync,
    progress: Progress<'_>,
) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let threads = threads.clamp(1, total.max(1));
    let work = || {
        let mut out: Vec<(usize, Result<T>)> = Vec::new();
        while !failed.load(Ordering::SeqCst) {
            let idx = next.fetch_add(1, Ordering::SeqCst);
            if idx >= total {
                break;
            }
            let (name, res) = match job(idx) {
                Ok(x) => x,
                Err(e) => ("", Err(e)),
            };
            if res.is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            out.push((idx, res));
            let d = done.fetch_add(1, Ordering::SeqCst) + 1;
            progress(d, total, name);
        }
        out
    };
    let mut results: Vec<(usize, Result<T>)> = if threads <= 1 {
        work()
    } else {
        std::thread::scope(|sc| {
            let handles: Vec<_> = (0..threads).map(|_| sc.spawn(work)).collect();
            let mut all = Vec::new();
            for h in handles {
                match h.join() {
                    Ok(v) => all.extend(v),
                    Err(_) => all.push((
                        usize::MAX,
                        Err(Error::Numeric("an extraction thread panicked".into())),
                    )),
                }
            }
            all
        })
    };
    results.sort_by_key(|(i, _)| *i);
    let mut out = Vec::with_capacity(total);
    for (_, res) in results {
        out.push(res?);
    }
    if out.len() != total {
        return Err(Error::Numeric(format!(
            "finished {} of {} modules",
            out.len(),
            total
        )));
    }
    Ok(out)
}

/// One module over every adapter that has it, loading one adapter's matrices at a time.
/// Also returns the indices of the adapters whose module has ΔW = 0.
#[allow(clippy::too_many_arguments)]
fn extract_named(
    adapters: &[Adapter],
    start: Option<ModuleStats>,
    name: &str,
    in_f: usize,
    out_f: usize,
    options: &ExtractOptions,
    route: Route,
    sink: &dyn ModuleSink,
) -> Result<(ModuleSubspace, [Solver; 2], Vec<usize>)> {
    let in_module = |e: Error| match e {
        Error::Usage(msg) => Error::Usage(format!("statistics of module {name}: {msg}")),
        other => other,
    };
    let mut acc = match start {
        Some(st) => {
            if (st.in_features, st.out_features) != (in_f, out_f) {
                return Err(Error::Usage(format!(
                    "statistics of module {name}: expected in={in_f} out={out_f}, found in={} out={}",
                    st.in_features, st.out_features
                )));
            }
            ModuleAccumulator::from_stats(st, options.canonicalize).map_err(in_module)?
        }
        None => ModuleAccumulator::new(in_f, out_f, options.canonicalize, route),
    };
    let mut zeros = Vec::new();
    for (t, ad) in adapters.iter().enumerate() {
        let Some(info) = ad.modules.get(name) else {
            continue;
        };
        let m = ad.load_module(name)?;
        if is_zero_delta(&m) {
            zeros.push(t);
        }
        // The reader checks shapes against the header; this guards the math against a reader
        // that disagrees with its own header.
        if m.in_features() != in_f || m.out_features() != out_f || m.b.ncols() != m.rank() {
            return Err(Error::bad_tensor(
                ad.weights_path(),
                info.a_key.clone(),
                format!(
                    "expected A [r, in={in_f}] and B [out={out_f}, r] like the other adapters, found A [{}, {}] and B [{}, {}]",
                    m.a.nrows(),
                    m.a.ncols(),
                    m.b.nrows(),
                    m.b.ncols()
                ),
            ));
        }
        acc.add(&m).map_err(|e| match e {
            Error::Usage(msg) => Error::bad_tensor(ad.weights_path(), info.a_key.clone(), msg),
            Error::Numeric(msg) => Error::Numeric(format!("module {name}: {msg}")),
            other => other,
        })?;
    }
    if sink.wants_stats() {
        // Handed over and taken back by move: the statistics are not copied.
        let st = acc.into_stats();
        sink.stats(name, &st)?;
        acc = ModuleAccumulator::from_stats(st, options.canonicalize).map_err(in_module)?;
    }
    let (sub, solver) = acc.finish(options).map_err(|e| match e {
        Error::Numeric(msg) => Error::Numeric(format!("module {name}: {msg}")),
        other => other,
    })?;
    Ok((sub, solver, zeros))
}

/// Whether ΔW = B·A is exactly zero because A or B holds only zeros (an untrained adapter).
pub fn is_zero_delta(m: &LoraModule) -> bool {
    let all_zero =
        |x: faer::MatRef<'_, f64>| (0..x.ncols()).all(|j| (0..x.nrows()).all(|i| x[(i, j)] == 0.0));
    all_zero(m.a.as_ref()) || all_zero(m.b.as_ref())
}

/// Extracts one module's subspace from modules handed over one at a time, the way [`extract`]
/// reads files: each module is canonicalized and folded into the side accumulators, then
/// dropped, so memory stays about d·(d + r) values per side however many modules stream by.
/// An `Err` item stops the extraction and is returned as is.
pub fn extract_module_stream<I>(
    in_features: usize,
    out_features: usize,
    options: &ExtractOptions,
    route: Route,
    modules: I,
) -> Result<ModuleSubspace>
where
    I: IntoIterator<Item = Result<LoraModule>>,
{
    validate_options(options)?;
    let mut acc = ModuleAccumulator::new(in_features, out_features, options.canonicalize, route);
    for (i, m) in modules.into_iter().enumerate() {
        acc.add(&m?).map_err(|e| match e {
            Error::Usage(msg) => Error::Usage(format!("adapter module {i}: {msg}")),
            other => other,
        })?;
    }
    if acc.n_adapters == 0 {
        return Err(Error::Usage("no adapter modules to extract from".into()));
    }
    acc.finish(options).map(|(m, _)| m)
}

/// Extracts one module's subspace from its adapters' matrices (pure math; all modules must
/// agree on in/out features).
///
/// Errors: no modules, or a module whose shape differs from module 0's, or one with NaN/Inf
/// values, is an [`Error::Usage`] naming the module's index (the caller [`extract`] knows the
/// files and reports them as [`Error::BadInput`]).
pub fn extract_module(modules: &[LoraModule], options: &ExtractOptions) -> Result<ModuleSubspace> {
    extract_module_with(modules, options, Route::Auto)
}

/// [`extract_module`] with the decomposition route forced (tests compare the SVD and Gram routes).
pub fn extract_module_with(
    modules: &[LoraModule],
    options: &ExtractOptions,
    route: Route,
) -> Result<ModuleSubspace> {
    let first = modules
        .first()
        .ok_or_else(|| Error::Usage("no adapter modules to extract from".into()))?;
    extract_module_stream(
        first.in_features(),
        first.out_features(),
        options,
        route,
        modules.iter().map(|m| Ok(m.clone())),
    )
}

fn validate_options(options: &ExtractOptions) -> Result<()> {
    for rule in [options.k_rule_a, options.k_rule_b] {
        if let KRule::Energy(t) = rule
            && !(t > 0.0 && t <= 1.0)
        {
            return Err(Error::Usage(format!(
                "energy threshold must be in (0, 1], got {t}"
            )));
        }
    }
    Ok(())
}

/// Both sides of one module, fed one adapter at a time.
struct ModuleAccumulator {
    in_f: usize,
    out_f: usize,
    canonicalize: bool,
    a: SideAccumulator,
    b: SideAccumulator,
    r_max: usize,
    n_adapters: usize,
}

impl ModuleAccumulator {
    fn new(in_f: usize, out_f: usize, canonicalize: bool, route: Route) -> Self {
        Self {
            in_f,
            out_f,
            canonicalize,
            a: SideAccumulator::new(in_f, route),
            b: SideAccumulator::new(out_f, route),
            r_max: 0,
            n_adapters: 0,
        }
    }

    /// The state as [`ModuleStats`] (no copy).
    fn into_stats(self) -> ModuleStats {
        ModuleStats {
            in_features: self.in_f,
            out_features: self.out_f,
            r_max: self.r_max,
            n_adapters: self.n_adapters,
            a: self.a.into_stats(),
            b: self.b.into_stats(),
        }
    }

    /// Continues from `st` (automatic route); sizes that disagree are an [`Error::Usage`].
    fn from_stats(st: ModuleStats, canonicalize: bool) -> Result<Self> {
        if st.a.dim != st.in_features || st.b.dim != st.out_features {
            return Err(Error::Usage(format!(
                "expected sides of {} and {} values, found {} and {}",
                st.in_features, st.out_features, st.a.dim, st.b.dim
            )));
        }
        Ok(Self {
            in_f: st.in_features,
            out_f: st.out_features,
            canonicalize,
            a: SideAccumulator::from_stats(st.a)?,
            b: SideAccumulator::from_stats(st.b)?,
            r_max: st.r_max,
            n_adapters: st.n_adapters,
        })
    }

    fn add(&mut self, m: &LoraModule) -> Result<()> {
        if m.in_features() != self.in_f || m.out_features() != self.out_f || m.b.ncols() != m.rank()
        {
            return Err(Error::Usage(format!(
                "expected A [r, in={}] and B [out={}, r], found A [{}, {}] and B [{}, {}]",
                self.in_f,
                self.out_f,
                m.a.nrows(),
                m.a.ncols(),
                m.b.nrows(),
                m.b.ncols()
            )));
        }
        if !linalg::all_finite(m.a.as_ref()) || !linalg::all_finite(m.b.as_ref()) {
            return Err(Error::Usage(
                "expected finite values, found NaN or Inf".into(),
            ));
        }
        self.r_max = self.r_max.max(m.rank());
        self.n_adapters += 1;
        if self.canonicalize {
            let (b, a_t) = canonical_factors(m)?;
            self.a.add(a_t.as_ref())?;
            self.b.add(b.as_ref())?;
        } else {
            self.a.add(m.a.transpose())?;
            self.b.add(m.b.as_ref())?;
        }
        Ok(())
    }

    fn finish(self, options: &ExtractOptions) -> Result<(ModuleSubspace, [Solver; 2])> {
        let (basis_a, info_a, solver_a) = finish_side(self.a, options.k_rule_a, options)?;
        let (v_b, info_b, solver_b) = finish_side(self.b, options.k_rule_b, options)?;
        let module = ModuleSubspace {
            in_features: self.in_f,
            out_features: self.out_f,
            r_max: self.r_max,
            n_adapters: self.n_adapters,
            v_a: basis_a.transpose().to_owned(),
            v_b,
            a: info_a,
            b: info_b,
        };
        Ok((module, [solver_a, solver_b]))
    }
}

/// Decomposes one side, keeps K by the rule, appends the mean direction and pseudo-PCs.
/// Returns the basis as orthonormal columns [d x k_total], its statistics and how the
/// principal directions were found.
fn finish_side(
    acc: SideAccumulator,
    rule: KRule,
    options: &ExtractOptions,
) -> Result<(Mat<f64>, SideInfo, Solver)> {
    let dec = acc.finish_top(options.center, rule, options.full_spectrum)?;
    let k = dec.basis.ncols();
    let mut basis = dec.basis;
    let mean_vector = match &dec.mean {
        Some(mu) => augment::append_mean(&mut basis, mu),
        None => false,
    };
    let pseudo = augment::append_pseudo(&mut basis, options.pseudo, options.seed);
    let energy_kept = select::energy_kept_of(&dec.spectrum, k, dec.total_energy);
    Ok((
        basis,
        SideInfo {
            spectrum: dec.spectrum,
            total_energy: dec.total_energy,
            full_spectrum: dec.spectrum_complete,
            k_principal: k,
            mean_vector,
            pseudo,
            energy_kept,
        },
        dec.solver,
    ))
}

/// The balanced factorization of ΔW = B'·A' (the default gauge before stacking).
///
/// With thin QRs B' = Q_B·R_B and A'ᵀ = Q_A·R_A and the SVD of the small core
/// R_B·R_Aᵀ = U·S·Vᵀ, it returns B'' = Q_B·U·√S and A'' = √S·Vᵀ·Q_Aᵀ, so B''·A'' = B'·A' and
/// B''ᵀB'' = A''A''ᵀ = S. Cost O((in+out)·r²); ΔW is never formed.
///
/// Sign convention: applied to the columns of Q_B·U (the left singular vectors of ΔW), with V
/// flipped alongside. Applying it to U itself would make the result depend on the signs the
/// QR happened to choose, which differ between faer and LAPACK. Rank is kept: when
/// r > min(in, out) the extra rows of A'' and columns of B'' are zero.
pub fn canonicalize(m: &LoraModule) -> Result<LoraModule> {
    let (b, a_t) = canonical_factors(m)?;
    Ok(LoraModule {
        a: a_t.transpose().to_owned(),
        b,
    })
}

/// [`canonicalize`]'s B'' [out x r] and A''ᵀ [in x r]: the A side is stacked as the columns
/// of A''ᵀ, so the extraction takes it in that layout (contiguous columns) without a copy.
fn canonical_factors(m: &LoraModule) -> Result<(Mat<f64>, Mat<f64>)> {
    let r = m.rank();
    let (in_f, out_f) = (m.in_features(), m.out_features());
    let (qb, rb) = linalg::thin_qr(m.b.as_ref());
    let (qa, ra) = linalg::thin_qr(m.a.transpose());
    let core = linalg::mul(rb.as_ref(), ra.transpose());
    let sv = linalg::thin_svd(core.as_ref())?;
    let mut left = linalg::mul(qb.as_ref(), sv.u.as_ref()); // out x p
    let mut right = linalg::mul(qa.as_ref(), sv.v.as_ref()); // in x p
    for (j, flipped) in linalg::fix_sign_columns(&mut left).into_iter().enumerate() {
        if flipped {
            for x in right.col_as_slice_mut(j) {
                *x = -*x;
            }
        }
    }
    let p = sv.s.len().min(r);
    let root: Vec<f64> = sv.s.iter().map(|s| s.max(0.0).sqrt()).collect();
    let b = Mat::from_fn(
        out_f,
        r,
        |i, k| if k < p { left[(i, k)] * root[k] } else { 0.0 },
    );
    let a_t = Mat::from_fn(
        in_f,
        r,
        |j, k| if k < p { root[k] * right[(j, k)] } else { 0.0 },
    );
    Ok((b, a_t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Results come back in index order for any thread count, every item reports progress, and
    /// with several failing items the error is always the lowest failing index's.
    #[test]
    fn run_ordered_is_deterministic() {
        let names: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
        for threads in [1, 2, 3] {
            let seen = Mutex::new(Vec::new());
            let prog = |d: usize, t: usize, n: &str| {
                if let Ok(mut s) = seen.lock() {
                    s.push((d, t, n.to_string()));
                }
            };
            let out =
                run_ordered(40, threads, |i| Ok((names[i].as_str(), Ok(i * i))), &prog).unwrap();
            assert_eq!(out, (0..40).map(|i| i * i).collect::<Vec<_>>());
            let seen = seen.into_inner().unwrap();
            assert_eq!(seen.len(), 40);
            let mut ds: Vec<usize> = seen.iter().map(|x| x.0).collect();
            ds.sort();
            assert_eq!(ds, (1..=40).collect::<Vec<_>>());

            for _ in 0..20 {
                let err = run_ordered(
                    40,
                    threads,
                    |i| {
                        let r = if i == 7 || i == 9 || i == 30 {
                            Err(Error::Numeric(format!("fail {i}")))
                        } else {
                            Ok(i)
                        };
                        Ok((names[i].as_str(), r))
                    },
                    &|_, _, _| {},
                )
                .unwrap_err();
                assert_eq!(err.to_string(), "numerical failure: fail 7");
            }
        }
    }
}
