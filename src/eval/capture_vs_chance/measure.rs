//! One adapter measured in a subspace ([`capture_summary`]: the share of its ΔW inside,
//! beside a random control and chance, and each side alone), and one module
//! ([`measure_module`]: projection error and captured share), combined over modules by
//! ‖ΔW‖² weight ([`combine`]).

use super::chance_capture;
use crate::adapter::LoraModule;
use crate::bundle::random_control::{module_seed, random_subspace_like};
use crate::error::Result;
use crate::linalg;
use crate::subspace::{self, Coefficients, ModuleSubspace, Subspace};
use std::collections::BTreeMap;

/// The share of an adapter's ΔW inside a subspace, beside a random subspace of the same size
/// and the chance expectation, all weighted by each module's ‖ΔW‖²_F.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct CaptureSummary {
    /// Inside the subspace.
    pub captured: f64,
    /// Inside the input side alone, ‖ΔW·P_A‖² / ‖ΔW‖² (the rows of A the others span).
    pub input_side: f64,
    /// Inside the output side alone, ‖P_B·ΔW‖² / ‖ΔW‖² (the columns of B the others span).
    pub output_side: f64,
    /// Inside a seeded random orthonormal subspace of the same K per module and side.
    pub random: f64,
    /// The expectation for random subspaces, (K_A/in)·(K_B/out) per module.
    pub chance: f64,
    /// Σ ‖ΔW‖²_F over the modules measured (0: nothing to measure).
    pub energy: f64,
    /// Modules measured (present in both the adapter and the subspace).
    pub modules: usize,
}

/// Measures `modules` (one adapter) in `space`; the random control of each module is drawn
/// with [`module_seed`]`(seed, module)`, as `elx inspect --random-control` does.
pub fn capture_summary(
    modules: &BTreeMap<String, LoraModule>,
    space: &Subspace,
    seed: u64,
) -> CaptureSummary {
    let mut s = CaptureSummary::default();
    for (name, m) in modules {
        let Some(ms) = space.modules.get(name) else {
            continue;
        };
        if m.in_features() != ms.in_features || m.out_features() != ms.out_features {
            continue;
        }
        let e = linalg::lowrank_frob(m.b.as_ref(), m.a.as_ref()).powi(2);
        let random = random_subspace_like(ms, module_seed(seed, name));
        s.captured += e * subspace::captured_energy(m, ms);
        let (input, output) = one_sided(m, ms);
        s.input_side += e * input;
        s.output_side += e * output;
        s.random += e * subspace::captured_energy(m, &random);
        s.chance += e * chance_capture(
            ms.v_a.nrows(),
            ms.in_features,
            ms.v_b.ncols(),
            ms.out_features,
        );
        s.energy += e;
        s.modules += 1;
    }
    if s.energy > 0.0 {
        s.captured /= s.energy;
        s.input_side /= s.energy;
        s.output_side /= s.energy;
        s.random /= s.energy;
        s.chance /= s.energy;
    }
    s
}

/// The shares of ‖ΔW‖² inside each side of `s` alone: (‖ΔW·P_A‖², ‖P_B·ΔW‖²) / ‖ΔW‖²,
/// computed from the factors, with V_A's rows and V_B's columns taken as orthonormal (exact
/// for extracted subspaces; within the storage bound for dequantized bundles). Which side
/// falls short says why a capture is low: LoRA's A starts random and B at zero, so after
/// short training the input side is mostly each adapter's own random draw.
pub fn one_sided(m: &LoraModule, s: &ModuleSubspace) -> (f64, f64) {
    let total = linalg::lowrank_frob(m.b.as_ref(), m.a.as_ref()).powi(2);
    if total.is_nan() || total <= 0.0 {
        return (0.0, 0.0);
    }
    // A·V_Aᵀ·V_A [r x in] and V_Bᵀ·B [K_B x r] (‖P_B·B·A‖ = ‖V_Bᵀ·B·A‖).
    let a_coef = linalg::mul(m.a.as_ref(), s.v_a.transpose());
    let a_proj = linalg::mul(a_coef.as_ref(), s.v_a.as_ref());
    let b_coef = linalg::mul(s.v_b.transpose(), m.b.as_ref());
    let input = linalg::lowrank_frob(m.b.as_ref(), a_proj.as_ref()).powi(2) / total;
    let output = linalg::lowrank_frob(b_coef.as_ref(), m.a.as_ref()).powi(2) / total;
    (input.min(1.0), output.min(1.0))
}

/// One module of one adapter measured in a subspace (and, optionally, a random control).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ModuleMeasure {
    /// ‖ΔW − ΔŴ‖_F / ‖ΔW‖_F after projecting into the subspace.
    pub error: f64,
    /// Share of ‖ΔW‖²_F inside the subspace.
    pub captured: f64,
    /// ‖ΔW‖²_F, the module's weight in whole-adapter figures.
    pub energy: f64,
    /// (error, captured) in the random control, when one was given.
    pub random: Option<(f64, f64)>,
}

/// Measures one module in `space` (and `random`): the projection error and the captured
/// share. Shapes must match (see [`subspace::try_project`]).
pub fn measure_module(
    m: &LoraModule,
    space: &ModuleSubspace,
    random: Option<&ModuleSubspace>,
) -> Result<ModuleMeasure> {
    measure_module_with(m, space, random).map(|(_, measure)| measure)
}

/// [`measure_module`], also returning the module's coefficients in `space`.
pub fn measure_module_with(
    m: &LoraModule,
    space: &ModuleSubspace,
    random: Option<&ModuleSubspace>,
) -> Result<(Coefficients, ModuleMeasure)> {
    let project = |s: &ModuleSubspace| -> Result<(Coefficients, f64)> {
        let c = subspace::try_project(m, s)?;
        let error = subspace::relative_error(m, &subspace::try_reconstruct(&c, s)?);
        Ok((c, error))
    };
    let energy = linalg::lowrank_frob(m.b.as_ref(), m.a.as_ref()).powi(2);
    // A zero ΔW (an untrained adapter: B = 0) has no share to capture: "n/a", not 100%.
    let share = |c: f64| if energy > 0.0 { c } else { f64::NAN };
    let random = match random {
        Some(r) => Some((project(r)?.1, share(subspace::captured_energy(m, r)))),
        None => None,
    };
    let (c, error) = project(space)?;
    Ok((
        c,
        ModuleMeasure {
            error,
            captured: share(subspace::captured_energy(m, space)),
            energy,
            random,
        },
    ))
}

/// Whole-adapter figures from per-module ones, weighted by ‖ΔW‖²_F (as [`crate::eval::capture`]):
/// (error as an energy-weighted root mean square, captured share), and the same for the
/// random control when every module has one.
pub fn combine(measures: &[ModuleMeasure]) -> ((f64, f64), Option<(f64, f64)>) {
    // Modules with a zero ΔW weigh nothing (and their shares are NaN): leave them out.
    let nonzero: Vec<ModuleMeasure> = measures
        .iter()
        .filter(|m| m.energy > 0.0)
        .copied()
        .collect();
    let measures = &nonzero[..];
    let total: f64 = measures.iter().map(|m| m.energy).sum();
    if total <= 0.0 {
        // Nothing to capture (every ΔW is zero): no share to report.
        return ((0.0, f64::NAN), None);
    }
    let err = (measures
        .iter()
        .map(|m| m.error * m.error * m.energy)
        .sum::<f64>()
        / total)
        .sqrt();
    let cap = measures.iter().map(|m| m.captured * m.energy).sum::<f64>() / total;
    let random = measures
        .iter()
        .map(|m| m.random.map(|r| (r, m.energy)))
        .collect::<Option<Vec<_>>>()
        .filter(|v| !v.is_empty())
        .map(|v| {
            (
                (v.iter().map(|((e, _), w)| e * e * w).sum::<f64>() / total).sqrt(),
                v.iter().map(|((_, c), w)| c * w).sum::<f64>() / total,
            )
        });
    ((err, cap), random)
}
