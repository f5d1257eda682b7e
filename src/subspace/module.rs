//! One module's extraction: its adapters' matrices folded one at a time into the
//! accumulators of both sides (canonicalized first, by default), then each side decomposed,
//! K chosen by its rule, and the mean direction and pseudo-PCs appended.

use super::canonical::canonical_factors;
use super::decompose::SideAccumulator;
use super::{
    ExtractOptions, KRule, ModuleStats, ModuleSubspace, Route, SideInfo, Solver, augment, select,
};
use crate::adapter::LoraModule;
use crate::error::{Error, Result};
use crate::linalg;
use faer::Mat;

/// Whether ΔW = B·A is exactly zero because A or B holds only zeros (an untrained adapter).
pub fn is_zero_delta(m: &LoraModule) -> bool {
    let all_zero =
        |x: faer::MatRef<'_, f64>| (0..x.ncols()).all(|j| (0..x.nrows()).all(|i| x[(i, j)] == 0.0));
    all_zero(m.a.as_ref()) || all_zero(m.b.as_ref())
}

/// Extracts one module's subspace from modules handed over one at a time, the way [`extract`](super::extract())
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
/// values, is an [`Error::Usage`] naming the module's index (the caller [`extract`](super::extract()) knows the
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

pub(super) fn validate_options(options: &ExtractOptions) -> Result<()> {
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
pub(super) struct ModuleAccumulator {
    in_f: usize,
    out_f: usize,
    canonicalize: bool,
    a: SideAccumulator,
    b: SideAccumulator,
    r_max: usize,
    n_adapters: usize,
}

impl ModuleAccumulator {
    pub(super) fn new(in_f: usize, out_f: usize, canonicalize: bool, route: Route) -> Self {
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
    pub(super) fn into_stats(self) -> ModuleStats {
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
    pub(super) fn from_stats(st: ModuleStats, canonicalize: bool) -> Result<Self> {
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

    pub(super) fn add(&mut self, m: &LoraModule) -> Result<()> {
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

    pub(super) fn finish(self, options: &ExtractOptions) -> Result<(ModuleSubspace, [Solver; 2])> {
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
