//! The extraction over a set of adapters: which modules ([`ModuleSelection`]: a pattern and a
//! shard), on how many threads (results in name order whatever the count), where each
//! finished module goes ([`ModuleSink`]: collected, or written and dropped), and the
//! statistics of earlier adapters it may continue from ([`PriorStats`]).

use super::is_zero_delta;
use super::module::{ModuleAccumulator, validate_options};
use super::{ExtractOptions, ModuleSubspace, Progress, Route, SideStats, Solver, Subspace};
use crate::adapter::Adapter;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
