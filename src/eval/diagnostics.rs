//! Will recycling pay? Diagnostics computed from adapter and bundle files alone, before any
//! training or serving.
//!
//! A recycled subspace helps a new task only when the new task's ΔW lies inside it. These
//! measurements say how much does, each next to what chance alone would give:
//!
//! * [`chance_capture`]: the expected share of a ΔW inside independent random subspaces of
//!   the same size, (K_A/in)·(K_B/out); the seeded random-basis control measures the same.
//! * [`spectrum_vs_null`]: how many directions of a stacked side stand above a Gaussian matrix
//!   of the same shape and energy (the Bai–Yin edge), i.e. carry signal rather than spread.
//! * [`held_out`]: each adapter of a pool against the subspace of all the others
//!   (leave-one-out), recycled vs random vs chance, and split into the mean direction alone,
//!   the centered basis alone, and both (the `--center` mean vector).
//! * [`capture_vs_n`]: the held-out capture against subspaces of N = 1, 2, 4, … of the others:
//!   whether more adapters of this kind keep adding.
//! * [`verdict`]: one line, from the captures above.
//!
//! Captures over several modules are weighted by each module's ‖ΔW‖²_F, the same definition
//! as [`super::capture`], so `elx inspect` and `elx demo` report one number for one question.

use crate::adapter::{Adapter, LoraModule};
use crate::bundle::diagnostics::{module_seed, random_subspace_like};
use crate::error::{Error, Result};
use crate::linalg;
use crate::subspace::{self, Coefficients, ExtractOptions, KRule, ModuleSubspace, Subspace};
use crate::util::GaussianRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Expected share of a ΔW [out x in] inside independent, uniformly random subspaces of
/// dimensions `k_a` in R^in and `k_b` in R^out: (K_A/in)·(K_B/out).
pub fn chance_capture(k_a: usize, in_features: usize, k_b: usize, out_features: usize) -> f64 {
    if in_features == 0 || out_features == 0 {
        return 0.0;
    }
    (k_a.min(in_features) as f64 / in_features as f64)
        * (k_b.min(out_features) as f64 / out_features as f64)
}

/// One side's spectrum against a Gaussian matrix of the same shape and total energy.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct NullComparison {
    /// Singular values above the null's largest one.
    pub signal_directions: usize,
    /// Share of the side's energy (Σσ²) in those directions.
    pub signal_energy: f64,
    /// The null's largest singular value, σ·(√rows + √cols) with σ² = Σσᵢ²/(rows·cols).
    pub null_edge: f64,
    /// σ₁ over the null edge (> 1: the top direction stands out).
    pub top_over_edge: f64,
    /// The spectrum held only the top values and every one of them stands above the edge:
    /// `signal_directions` and `signal_energy` are then lower bounds (extract with
    /// `--full-spectrum` for the exact figures).
    pub lower_bound: bool,
}

/// Compares a stacked side's `spectrum` (singular values, descending) with an i.i.d.
/// Gaussian matrix of the same shape [`rows` x `cols`] and the same energy: for such a matrix
/// the largest singular value is σ·(√rows + √cols) in the large-size limit (Bai–Yin; the
/// finite-size fluctuation is of order σ·(√rows+√cols)^(1/3), small against the edge at the
/// sizes here). Directions above that edge carry structure a random stack would not have.
pub fn spectrum_vs_null(spectrum: &[f64], rows: usize, cols: usize) -> NullComparison {
    let total: f64 = spectrum.iter().map(|s| s * s).sum();
    spectrum_vs_null_of(spectrum, total, true, rows, cols)
}

/// [`spectrum_vs_null`] with the side's total energy Σσ² given, for a spectrum that may hold
/// only the top values (`complete` false: a bundle extracted without `--full-spectrum`). The
/// edge depends only on the total, so it is exact; the directions above it are exact unless
/// every stored value is above it ([`NullComparison::lower_bound`]).
pub fn spectrum_vs_null_of(
    spectrum: &[f64],
    total: f64,
    complete: bool,
    rows: usize,
    cols: usize,
) -> NullComparison {
    if rows == 0 || cols == 0 || !total.is_finite() || total <= 0.0 {
        return NullComparison {
            signal_directions: 0,
            signal_energy: 0.0,
            null_edge: 0.0,
            top_over_edge: 0.0,
            lower_bound: false,
        };
    }
    let sigma = (total / (rows as f64 * cols as f64)).sqrt();
    let edge = sigma * ((rows as f64).sqrt() + (cols as f64).sqrt());
    let above: Vec<f64> = spectrum.iter().copied().filter(|&s| s > edge).collect();
    NullComparison {
        signal_directions: above.len(),
        signal_energy: above.iter().map(|s| s * s).sum::<f64>() / total,
        null_edge: edge,
        top_over_edge: spectrum.first().map_or(0.0, |s| s / edge),
        lower_bound: !complete && above.len() == spectrum.len(),
    }
}

/// Rows of the stacked side of `m` (Σ r over the adapters; the bundle records n and r_max,
/// so this is exact when the adapters share one rank, an upper bound otherwise) and its
/// columns, per side: (A rows, in), (B rows, out).
pub fn stack_shapes(m: &ModuleSubspace) -> ((usize, usize), (usize, usize)) {
    let rows = m.n_adapters * m.r_max;
    ((rows, m.in_features), (rows, m.out_features))
}

/// A pool of adapters loaded once into memory (per module, the scale folded in).
#[derive(Clone, Debug)]
pub struct Pool {
    /// Display names (the paths as given).
    pub names: Vec<String>,
    /// The paths, in the same order.
    pub paths: Vec<PathBuf>,
    /// Per adapter, its modules by canonical name.
    pub modules: Vec<BTreeMap<String, LoraModule>>,
}

impl Pool {
    /// Reads every module of every adapter. The adapters must be of one base model
    /// ([`crate::adapter::base::refuse_mixed`]) and agree on each shared module's shape; a
    /// mismatch names the file and module.
    pub fn load(paths: &[PathBuf]) -> Result<Pool> {
        Pool::load_with(paths, false)
    }

    /// [`Pool::load`]; with `allow_mixed_bases`, adapters of several base models are accepted
    /// (`elx inspect --allow-mixed-bases`).
    pub fn load_with(paths: &[PathBuf], allow_mixed_bases: bool) -> Result<Pool> {
        let mut modules = Vec::with_capacity(paths.len());
        let mut shapes: BTreeMap<String, (usize, usize, PathBuf)> = BTreeMap::new();
        let opened = paths
            .iter()
            .map(|p| Adapter::open(p))
            .collect::<Result<Vec<_>>>()?;
        if !allow_mixed_bases {
            crate::adapter::base::refuse_mixed(&opened, "--allow-mixed-bases")?;
        }
        for (p, a) in paths.iter().zip(opened) {
            let mut mods = BTreeMap::new();
            for name in a.modules.keys() {
                let m = a.load_module(name)?;
                let shape = (m.in_features(), m.out_features());
                match shapes.get(name) {
                    Some(&(i, o, ref first)) if (i, o) != shape => {
                        return Err(Error::bad_file(
                            a.weights_path(),
                            format!(
                                "module `{name}`: expected in={i} out={o} like {}, found in={} out={}",
                                first.display(),
                                shape.0,
                                shape.1
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        shapes.insert(name.clone(), (shape.0, shape.1, p.clone()));
                    }
                }
                mods.insert(name.clone(), m);
            }
            modules.push(mods);
        }
        Ok(Pool {
            names: paths.iter().map(|p| p.display().to_string()).collect(),
            paths: paths.to_vec(),
            modules,
        })
    }

    /// Number of adapters.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// The subspace of the adapters `members` (indices into the pool), one module at a time.
    pub fn extract(&self, members: &[usize], options: &ExtractOptions) -> Result<Subspace> {
        let mut names: Vec<&String> = members
            .iter()
            .flat_map(|&i| self.modules[i].keys())
            .collect();
        names.sort();
        names.dedup();
        let mut modules = BTreeMap::new();
        for name in names {
            let stack: Vec<LoraModule> = members
                .iter()
                .filter_map(|&i| self.modules[i].get(name).cloned())
                .collect();
            modules.insert(name.clone(), subspace::extract_module(&stack, options)?);
        }
        Ok(Subspace {
            modules,
            options: options.clone(),
        })
    }
}

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

/// Whole-adapter figures from per-module ones, weighted by ‖ΔW‖²_F (as [`super::capture`]):
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

/// One adapter of a pool against the subspace of all the others.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HeldOut {
    /// The held-out adapter.
    pub name: String,
    /// In the others' subspace extracted with the given options (the recycled subspace).
    pub recycled: CaptureSummary,
    /// In the span of the others' mean direction alone (one vector per side).
    pub mean_only: f64,
    /// In the principal directions of the others' centered stack, without the mean.
    pub basis_only: f64,
    /// In both (the subspace `--center` extracts).
    pub mean_plus_basis: f64,
    /// Σ (K_A + K_B) of the recycled subspace.
    pub k_total: usize,
}

/// Leave-one-out capture for every adapter of `pool` (at least two): the subspace of the
/// others is extracted with `options` (recycled), and again centered for the mean / basis
/// split. `seed` draws the random controls.
pub fn held_out(pool: &Pool, options: &ExtractOptions, seed: u64) -> Result<Vec<HeldOut>> {
    if pool.len() < 2 {
        return Err(Error::Usage(format!(
            "held-out capture needs at least two adapters, found {}",
            pool.len()
        )));
    }
    let plain = ExtractOptions {
        pseudo: 0,
        ..options.clone()
    };
    let centered = ExtractOptions {
        center: true,
        ..plain.clone()
    };
    let mean_only = ExtractOptions {
        center: true,
        k_rule_a: KRule::Fixed(0),
        k_rule_b: KRule::Fixed(0),
        ..plain.clone()
    };
    (0..pool.len())
        .map(|h| {
            let others: Vec<usize> = (0..pool.len()).filter(|&i| i != h).collect();
            let own = &pool.modules[h];
            let recycled_space = pool.extract(&others, options)?;
            let recycled = capture_summary(own, &recycled_space, seed);
            let both = pool.extract(&others, &centered)?;
            let mean = pool.extract(&others, &mean_only)?;
            let basis = without_mean(&both);
            Ok(HeldOut {
                name: pool.names[h].clone(),
                recycled,
                mean_only: capture_summary(own, &mean, seed).captured,
                basis_only: capture_summary(own, &basis, seed).captured,
                mean_plus_basis: capture_summary(own, &both, seed).captured,
                k_total: recycled_space
                    .modules
                    .values()
                    .map(|m| m.v_a.nrows() + m.v_b.ncols())
                    .sum(),
            })
        })
        .collect()
}

/// The mean of every [`HeldOut`] figure over the adapters of a pool (`elx inspect
/// --held-out` and `elx demo` print these and base the verdict on them).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct HeldOutMean {
    /// Recycled capture, with its random control, chance and one-sided shares.
    pub recycled: CaptureSummary,
    /// Smallest and largest recycled capture.
    pub min: f64,
    /// See `min`.
    pub max: f64,
    /// Mean direction alone.
    pub mean_only: f64,
    /// Centered basis alone.
    pub basis_only: f64,
    /// Both.
    pub mean_plus_basis: f64,
    /// Σ (K_A + K_B).
    pub k_total: f64,
}

impl HeldOutMean {
    /// The means of `rows` (all zero for none).
    pub fn of(rows: &[HeldOut]) -> HeldOutMean {
        let n = rows.len().max(1) as f64;
        let mean = |f: &dyn Fn(&HeldOut) -> f64| rows.iter().map(f).sum::<f64>() / n;
        let caps = rows.iter().map(|h| h.recycled.captured);
        HeldOutMean {
            recycled: CaptureSummary {
                captured: mean(&|h| h.recycled.captured),
                input_side: mean(&|h| h.recycled.input_side),
                output_side: mean(&|h| h.recycled.output_side),
                random: mean(&|h| h.recycled.random),
                chance: mean(&|h| h.recycled.chance),
                energy: mean(&|h| h.recycled.energy),
                modules: rows.first().map_or(0, |h| h.recycled.modules),
            },
            min: caps.clone().fold(f64::INFINITY, f64::min),
            max: caps.fold(0.0, f64::max),
            mean_only: mean(&|h| h.mean_only),
            basis_only: mean(&|h| h.basis_only),
            mean_plus_basis: mean(&|h| h.mean_plus_basis),
            k_total: mean(&|h| h.k_total as f64),
        }
    }

    /// The verdict for new tasks like the pool's.
    pub fn verdict(&self) -> Verdict {
        verdict(self.recycled.captured, self.recycled.random)
    }
}

/// A centered subspace with its mean direction removed from both sides (the principal
/// directions of the centered stack alone).
fn without_mean(s: &Subspace) -> Subspace {
    let mut out = s.clone();
    for m in out.modules.values_mut() {
        if m.a.mean_vector {
            let k = m.a.k_principal;
            let keep: Vec<usize> = (0..m.v_a.nrows()).filter(|&i| i != k).collect();
            m.v_a = faer::Mat::from_fn(keep.len(), m.in_features, |i, j| m.v_a[(keep[i], j)]);
            m.a.mean_vector = false;
        }
        if m.b.mean_vector {
            let k = m.b.k_principal;
            let keep: Vec<usize> = (0..m.v_b.ncols()).filter(|&j| j != k).collect();
            m.v_b = faer::Mat::from_fn(m.out_features, keep.len(), |i, j| m.v_b[(i, keep[j])]);
            m.b.mean_vector = false;
        }
    }
    out
}

/// Held-out capture against subspaces of N of the other adapters, averaged over the held-out
/// adapters.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CurvePoint {
    /// Adapters in the subspace.
    pub n: usize,
    /// Mean held-out capture.
    pub captured: f64,
    /// Smallest and largest held-out capture.
    pub min: f64,
    /// See `min`.
    pub max: f64,
    /// Mean capture in the random control.
    pub random: f64,
    /// Mean chance expectation.
    pub chance: f64,
    /// Mean Σ (K_A + K_B).
    pub k_total: f64,
}

/// The sizes 1, 2, 4, … below `others`, and `others` itself.
pub fn doubling_sizes(others: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut n = 1;
    while n < others {
        v.push(n);
        n *= 2;
    }
    if others > 0 {
        v.push(others);
    }
    v
}

/// For each N in `sizes` (each at most `pool.len() − 1`): every adapter of the pool held out
/// in turn, against the subspace (extracted with `options`) of N others, drawn as the first N
/// of a seeded shuffle of the others (seed `seed` + the held-out index), so the N-adapter set
/// is a prefix of the 2N-adapter set.
pub fn capture_vs_n(
    pool: &Pool,
    sizes: &[usize],
    options: &ExtractOptions,
    seed: u64,
) -> Result<Vec<CurvePoint>> {
    let others = pool.len().saturating_sub(1);
    if others == 0 {
        return Err(Error::Usage(
            "capture vs N needs at least two adapters".into(),
        ));
    }
    if let Some(&n) = sizes.iter().find(|&&n| n == 0 || n > others) {
        return Err(Error::Usage(format!(
            "capture vs N: N = {n} is outside 1..={others} (the other adapters of the pool)"
        )));
    }
    let orders: Vec<Vec<usize>> = (0..pool.len())
        .map(|h| {
            let mut o: Vec<usize> = (0..pool.len()).filter(|&i| i != h).collect();
            shuffle(&mut o, seed.wrapping_add(h as u64));
            o
        })
        .collect();
    sizes
        .iter()
        .map(|&n| {
            let mut pts = Vec::with_capacity(pool.len());
            let mut k_total = 0.0;
            for (h, order) in orders.iter().enumerate() {
                let space = pool.extract(&order[..n], options)?;
                k_total += space
                    .modules
                    .values()
                    .map(|m| (m.v_a.nrows() + m.v_b.ncols()) as f64)
                    .sum::<f64>();
                pts.push(capture_summary(&pool.modules[h], &space, seed));
            }
            let k = pts.len() as f64;
            Ok(CurvePoint {
                n,
                captured: pts.iter().map(|p| p.captured).sum::<f64>() / k,
                min: pts.iter().map(|p| p.captured).fold(f64::INFINITY, f64::min),
                max: pts.iter().map(|p| p.captured).fold(0.0, f64::max),
                random: pts.iter().map(|p| p.random).sum::<f64>() / k,
                chance: pts.iter().map(|p| p.chance).sum::<f64>() / k,
                k_total: k_total / k,
            })
        })
        .collect()
}

/// Fisher–Yates with the crate's seeded generator.
fn shuffle(v: &mut [usize], seed: u64) {
    let mut rng = GaussianRng::new(seed);
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// What the captures predict for new tasks like the measured ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Gain {
    /// Most of a new task's ΔW is already inside: zero-shot projection and training in the
    /// subspace should start far ahead of a random basis.
    Expected,
    /// Some of it is inside: a partial head start.
    Partial,
    /// About as much as a random subspace holds: no gain over a random basis.
    None,
}

/// A verdict and the sentence that explains it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Verdict {
    /// The prediction.
    pub gain: Gain,
    /// One line for people: the prediction and the numbers behind it.
    pub line: String,
}

/// Capture at or above which a gain is expected (with the capture at least
/// [`GAIN_OVER_CHANCE`] times the random control). Chosen before any workload was measured
/// against it: a projected adapter then keeps 30% of its update's energy, a head start that a
/// random subspace of the same size cannot give.
pub const GAIN_CAPTURE: f64 = 0.30;
/// Capture below which no gain is expected, whatever the ratio to chance.
pub const NO_GAIN_CAPTURE: f64 = 0.10;
/// How many times the random control the capture must be for an expected gain; below 3x
/// there is no gain.
pub const GAIN_OVER_CHANCE: f64 = 10.0;

/// The verdict for new tasks whose adapters capture `captured` of their ΔW (a typical value
/// over the measured adapters: the mean, or the median in [`structure`]) against `random` for
/// a random subspace of the same size.
pub fn verdict(captured: f64, random: f64) -> Verdict {
    verdict_with(captured, random, "held-out adapters put", "their")
}

/// [`verdict`] with the subject of the numbers ("held-out adapters put", "the median held-out
/// adapter puts") and its possessive ("their", "its").
fn verdict_with(captured: f64, random: f64, subject: &str, possessive: &str) -> Verdict {
    // A ratio only where it means something: 0 / 0 is not "far above" anything.
    let ratio = if random > 0.0 {
        captured / random
    } else if captured > 0.0 {
        f64::INFINITY
    } else {
        f64::NAN
    };
    let versus = if ratio.is_nan() {
        "no more than".to_string()
    } else if ratio.is_finite() {
        format!("{ratio:.0}x")
    } else {
        "far above".into()
    };
    let numbers = format!(
        "{subject} {:.1}% of {possessive} ΔW inside the subspace, {versus} a random subspace of the same size ({:.2}%)",
        100.0 * captured,
        100.0 * random
    );
    let gain = if captured >= GAIN_CAPTURE && ratio >= GAIN_OVER_CHANCE {
        Gain::Expected
    } else if captured < NO_GAIN_CAPTURE || ratio.is_nan() || ratio < 3.0 {
        Gain::None
    } else {
        Gain::Partial
    };
    let line = match gain {
        Gain::Expected => format!("new tasks like these: expected gain ({numbers})"),
        Gain::Partial => format!("new tasks like these: partial gain at best ({numbers})"),
        Gain::None if captured < NO_GAIN_CAPTURE => format!(
            "new tasks like these: no gain expected, their updates lie almost entirely outside the subspace ({numbers})"
        ),
        Gain::None => format!(
            "new tasks like these: no gain expected, the subspace holds little more than a random one ({numbers})"
        ),
    };
    Verdict { gain, line }
}

/// Mutual capture at or above which two adapters are linked in the capture graph of
/// [`clusters`]: each puts at least this share of its ΔW inside the span of the other alone.
/// Fixed before any pool was measured against it (issue 28), from what was known then:
/// unrelated adapters of real models put about (r/in)·(r/out), far below 1%, of their ΔW in
/// one another's span, and the WordNet family's held-out adapters 0.3–3.9% in one other
/// adapter's energy-0.9 subspace (capture vs N at N = 1). Measured afterwards (kept, not
/// tuned): on WordNet, pairs of tasks that share a category (`event_vs_feeling` and
/// `feeling_vs_process`) link at this edge, four clusters of 2–4; on MiniLM no pair does.
pub const CLUSTER_EDGE_CAPTURE: f64 = 0.05;
/// A link also needs the mutual capture to be this many times the chance of the pair
/// ((r_j/in)·(r_j/out) per module), so that tiny modules, where 5% is chance, link nothing.
pub const CLUSTER_EDGE_OVER_CHANCE: f64 = 10.0;
/// Smallest group of linked adapters reported as a cluster.
pub const CLUSTER_MIN_SIZE: usize = 2;

/// Share of adapter `i`'s ΔW inside the span of adapter `j` alone.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PairCapture {
    /// ‖P_Bj·ΔW_i·P_Aj‖² / ‖ΔW_i‖² over the modules both have (weighted by ‖ΔW_i‖²), with
    /// P_Aj, P_Bj the projections on the row space of A_j and column space of B_j.
    pub captured: f64,
    /// The chance of the same sizes, (r_j/in)·(r_j/out) per module, weighted the same way.
    pub chance: f64,
}

/// Every adapter of `pool` in the span of every other one alone (N = 1, the whole span of
/// each: nothing truncated): `[i][j]` is `i` in `j`; the diagonal is `None`. A module whose
/// ΔW is zero in `j` spans nothing; adapters with no module in common capture nothing.
pub fn pairwise_capture(pool: &Pool) -> Result<Vec<Vec<Option<PairCapture>>>> {
    let full = ExtractOptions {
        canonicalize: true,
        center: false,
        k_rule_a: KRule::Energy(1.0),
        k_rule_b: KRule::Energy(1.0),
        pseudo: 0,
        seed: 0,
        full_spectrum: false,
    };
    let n = pool.len();
    // Each adapter's own span, per module (None: a zero ΔW).
    let mut spans: Vec<BTreeMap<&str, Option<ModuleSubspace>>> = Vec::with_capacity(n);
    for mods in &pool.modules {
        let mut m = BTreeMap::new();
        for (name, lora) in mods {
            let space = if subspace::is_zero_delta(lora) {
                None
            } else {
                Some(subspace::extract_module(std::slice::from_ref(lora), &full)?)
            };
            m.insert(name.as_str(), space);
        }
        spans.push(m);
    }
    let energies: Vec<BTreeMap<&str, f64>> = pool
        .modules
        .iter()
        .map(|mods| {
            mods.iter()
                .map(|(k, m)| {
                    (
                        k.as_str(),
                        linalg::lowrank_frob(m.b.as_ref(), m.a.as_ref()).powi(2),
                    )
                })
                .collect()
        })
        .collect();
    let mut out = vec![vec![None; n]; n];
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let (mut cap, mut chance, mut total) = (0.0, 0.0, 0.0);
            for (name, m) in &pool.modules[i] {
                let e = energies[i][name.as_str()];
                if e <= 0.0 {
                    continue;
                }
                let Some(span) = spans[j].get(name.as_str()) else {
                    continue;
                };
                total += e;
                if let Some(ms) = span {
                    let c = subspace::captured_energy(m, ms);
                    if c.is_finite() {
                        cap += e * c;
                    }
                    chance += e * chance_capture(
                        ms.v_a.nrows(),
                        ms.in_features,
                        ms.v_b.ncols(),
                        ms.out_features,
                    );
                }
            }
            out[i][j] = Some(if total > 0.0 {
                PairCapture {
                    captured: cap / total,
                    chance: chance / total,
                }
            } else {
                PairCapture {
                    captured: 0.0,
                    chance: 0.0,
                }
            });
        }
    }
    Ok(out)
}

/// Groups of adapters that capture each other strongly: the connected components, of at
/// least [`CLUSTER_MIN_SIZE`] adapters, of the graph that links `i` and `j` when both
/// `pair[i][j]` and `pair[j][i]` reach [`CLUSTER_EDGE_CAPTURE`] and [`CLUSTER_EDGE_OVER_CHANCE`]
/// times their chance. Each cluster lists indices ascending; clusters are ordered by their
/// first member.
pub fn clusters(pair: &[Vec<Option<PairCapture>>]) -> Vec<Vec<usize>> {
    let n = pair.len();
    let strong = |p: Option<PairCapture>| {
        p.is_some_and(|p| {
            p.captured >= CLUSTER_EDGE_CAPTURE && p.captured >= CLUSTER_EDGE_OVER_CHANCE * p.chance
        })
    };
    let mut seen = vec![false; n];
    let mut out = Vec::new();
    for start in 0..n {
        if seen[start] {
            continue;
        }
        seen[start] = true;
        let mut comp = vec![start];
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            for (j, s) in seen.iter_mut().enumerate() {
                let linked = strong(pair.get(i).and_then(|r| r.get(j).copied().flatten()))
                    && strong(pair.get(j).and_then(|r| r.get(i).copied().flatten()));
                if !*s && linked {
                    *s = true;
                    comp.push(j);
                    stack.push(j);
                }
            }
        }
        if comp.len() >= CLUSTER_MIN_SIZE {
            comp.sort_unstable();
            out.push(comp);
        }
    }
    out
}

/// The spread of held-out captures over a group of adapters.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Distribution {
    /// Adapters in the group.
    pub n: usize,
    /// Smallest capture.
    pub min: f64,
    /// First quartile (linear interpolation between order statistics).
    pub q1: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub q3: f64,
    /// Largest capture.
    pub max: f64,
    /// Median of the random controls.
    pub random_median: f64,
    /// How many capture at least [`GAIN_CAPTURE`].
    pub above_gain: usize,
}

/// The `q`-quantile of sorted values, interpolating linearly (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let x = q * (n - 1) as f64;
            let lo = x.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (x - lo as f64) * (sorted[hi] - sorted[lo])
        }
    }
}

impl Distribution {
    /// The distribution of `rows[i].recycled` over `members` (all rows when `None`).
    pub fn of(rows: &[HeldOut], members: Option<&[usize]>) -> Distribution {
        let picked: Vec<&HeldOut> = match members {
            Some(m) => m.iter().filter_map(|&i| rows.get(i)).collect(),
            None => rows.iter().collect(),
        };
        let mut caps: Vec<f64> = picked.iter().map(|h| h.recycled.captured).collect();
        let mut rand: Vec<f64> = picked.iter().map(|h| h.recycled.random).collect();
        caps.sort_by(f64::total_cmp);
        rand.sort_by(f64::total_cmp);
        Distribution {
            n: caps.len(),
            min: caps.first().copied().unwrap_or(f64::NAN),
            q1: quantile(&caps, 0.25),
            median: quantile(&caps, 0.5),
            q3: quantile(&caps, 0.75),
            max: caps.last().copied().unwrap_or(f64::NAN),
            random_median: quantile(&rand, 0.5),
            above_gain: caps.iter().filter(|&&c| c >= GAIN_CAPTURE).count(),
        }
    }

    /// The verdict for new tasks like these adapters, from the median capture and the median
    /// random control (a few outliers do not move it).
    pub fn verdict(&self) -> Verdict {
        verdict_with(
            self.median,
            self.random_median,
            "the median held-out adapter puts",
            "its",
        )
    }
}

/// One cluster of a pool with its verdict.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cluster {
    /// Indices into the pool, ascending.
    pub members: Vec<usize>,
    /// Their held-out captures.
    pub distribution: Distribution,
    /// For new tasks like the cluster's.
    pub verdict: Verdict,
}

/// A pool's held-out captures seen as a whole, as clusters, and as the rest.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Structure {
    /// Every held-out adapter.
    pub all: Distribution,
    /// Clusters of adapters that capture each other strongly ([`clusters`]).
    pub clusters: Vec<Cluster>,
    /// The adapters in no cluster (empty when every adapter is in one).
    pub rest: Vec<usize>,
    /// Their distribution (`n` = 0 when none).
    pub rest_distribution: Distribution,
    /// The verdict for the rest; for the whole pool when there is no cluster.
    pub verdict: Verdict,
    /// One line for people: the verdict for the rest and for each cluster.
    pub line: String,
}

/// The verdict per cluster and for the rest, from the held-out rows of a pool and its
/// pairwise captures. `names` label the cluster members (the pool's names).
pub fn structure(
    rows: &[HeldOut],
    pair: &[Vec<Option<PairCapture>>],
    names: &[String],
) -> Structure {
    let all = Distribution::of(rows, None);
    let found = clusters(pair);
    let in_cluster: Vec<bool> = (0..rows.len())
        .map(|i| found.iter().any(|c| c.contains(&i)))
        .collect();
    let rest: Vec<usize> = (0..rows.len()).filter(|&i| !in_cluster[i]).collect();
    let rest_distribution = Distribution::of(rows, Some(&rest));
    let clusters: Vec<Cluster> = found
        .into_iter()
        .map(|members| {
            let d = Distribution::of(rows, Some(&members));
            Cluster {
                verdict: d.verdict(),
                distribution: d,
                members,
            }
        })
        .collect();
    let verdict = if clusters.is_empty() {
        all.verdict()
    } else {
        rest_distribution.verdict()
    };
    let gain_words = |g: Gain| match g {
        Gain::Expected => "expected gain",
        Gain::Partial => "partial gain at best",
        Gain::None => "no gain expected",
    };
    let line = if clusters.is_empty() {
        format!(
            "new tasks like these: {} (no cluster of adapters that capture each other; median {:.1}%, quartiles {:.1}–{:.1}%, {} of {} at or above {:.0}%)",
            verdict.line.trim_start_matches("new tasks like these: "),
            100.0 * all.median,
            100.0 * all.q1,
            100.0 * all.q3,
            all.above_gain,
            all.n,
            100.0 * GAIN_CAPTURE
        )
    } else {
        let mut parts = Vec::new();
        if rest_distribution.n > 0 {
            parts.push(format!(
                "{} for {} of {} held-out adapters, the ones in no cluster (median {:.1}%, {:.1}–{:.1}%; random {:.2}%)",
                gain_words(verdict.gain),
                rest_distribution.n,
                rows.len(),
                100.0 * rest_distribution.median,
                100.0 * rest_distribution.min,
                100.0 * rest_distribution.max,
                100.0 * rest_distribution.random_median
            ));
        }
        for c in &clusters {
            let shown: Vec<String> = c
                .members
                .iter()
                .take(4)
                .filter_map(|&i| names.get(i).map(|n| short_name(Path::new(n))))
                .collect();
            let more = c.members.len().saturating_sub(shown.len());
            parts.push(format!(
                "a cluster of {} ({}{}) shares {:.1}–{:.1}% (median {:.1}%): {} for tasks like those",
                c.members.len(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
                100.0 * c.distribution.min,
                100.0 * c.distribution.max,
                100.0 * c.distribution.median,
                gain_words(c.verdict.gain)
            ));
        }
        format!("new tasks: {}", parts.join("; "))
    };
    Structure {
        all,
        clusters,
        rest,
        rest_distribution,
        verdict,
        line,
    }
}

/// A path's file name for tables (the last component, or the path itself).
pub fn short_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::diagnostics::random_orthonormal;
    use faer::Mat;

    fn gaussian(rows: usize, cols: usize, rng: &mut GaussianRng) -> Mat<f64> {
        Mat::from_fn(rows, cols, |_, _| rng.next_normal())
    }

    /// A pool of `n` rank-`r` adapters of one module [out x in]: ΔW_t = V_B·M_t·V_A + noise,
    /// with V_A [k x in], V_B [out x k] shared (related tasks) or drawn per task (unrelated).
    fn pool(n: usize, related: bool, seed: u64) -> Pool {
        let (inf, outf, r, k) = (48, 40, 4, 6);
        let mut rng = GaussianRng::new(seed);
        let shared_a = random_orthonormal(inf, k, &mut rng).transpose().to_owned();
        let shared_b = random_orthonormal(outf, k, &mut rng);
        let modules = (0..n)
            .map(|_| {
                let (va, vb) = if related {
                    (shared_a.clone(), shared_b.clone())
                } else {
                    (
                        random_orthonormal(inf, k, &mut rng).transpose().to_owned(),
                        random_orthonormal(outf, k, &mut rng),
                    )
                };
                let ca = gaussian(r, k, &mut rng);
                let cb = gaussian(k, r, &mut rng);
                let noise_a = gaussian(r, inf, &mut rng);
                let a = Mat::from_fn(r, inf, |i, j| {
                    linalg::mul(ca.as_ref(), va.as_ref())[(i, j)] + 0.01 * noise_a[(i, j)]
                });
                let b = linalg::mul(vb.as_ref(), cb.as_ref());
                let mut m = BTreeMap::new();
                m.insert("m".to_string(), LoraModule { a, b });
                m
            })
            .collect::<Vec<_>>();
        Pool {
            names: (0..n).map(|i| format!("t{i}")).collect(),
            paths: (0..n).map(|i| PathBuf::from(format!("t{i}"))).collect(),
            modules,
        }
    }

    #[test]
    fn chance_matches_the_random_control_on_average() {
        // E[capture] of a fixed rank-2 ΔW in uniformly random subspaces is (K_A/in)(K_B/out).
        let p = pool(3, false, 1);
        let space = p.extract(&[0, 1], &ExtractOptions::default()).unwrap();
        let ms = &space.modules["m"];
        let expect = chance_capture(ms.v_a.nrows(), 48, ms.v_b.ncols(), 40);
        let draws = 400;
        let mean: f64 = (0..draws)
            .map(|s| capture_summary(&p.modules[2], &space, s).random)
            .sum::<f64>()
            / draws as f64;
        assert!(
            (mean - expect).abs() < 0.1 * expect,
            "random {mean} vs chance {expect}"
        );
        assert_eq!(chance_capture(48, 48, 40, 40), 1.0);
        assert_eq!(chance_capture(3, 0, 1, 1), 0.0);
    }

    #[test]
    fn gaussian_stacks_sit_at_the_null_and_spikes_stand_out() {
        let mut rng = GaussianRng::new(7);
        let (rows, cols) = (120, 300);
        let g = gaussian(rows, cols, &mut rng);
        let sv = linalg::thin_svd(g.as_ref()).unwrap();
        let null = spectrum_vs_null(&sv.s, rows, cols);
        assert!(null.signal_directions <= 1, "{null:?}");
        assert!((null.top_over_edge - 1.0).abs() < 0.05, "{null:?}");
        // Three planted directions, each well above the noise edge.
        let u = random_orthonormal(rows, 3, &mut rng);
        let v = random_orthonormal(cols, 3, &mut rng);
        let spiked = Mat::from_fn(rows, cols, |i, j| {
            g[(i, j)] + (0..3).map(|k| 60.0 * u[(i, k)] * v[(j, k)]).sum::<f64>()
        });
        let sv = linalg::thin_svd(spiked.as_ref()).unwrap();
        let c = spectrum_vs_null(&sv.s, rows, cols);
        assert_eq!(c.signal_directions, 3, "{c:?}");
        assert!(!c.lower_bound);
        // The top values plus the exact total (a bundle without --full-spectrum): the same
        // edge and, with one value below it stored, the same figures; with only values above
        // it stored, the figures become lower bounds and say so.
        let total: f64 = sv.s.iter().map(|x| x * x).sum();
        let top4 = spectrum_vs_null_of(&sv.s[..4], total, false, rows, cols);
        assert_eq!((top4.signal_directions, top4.lower_bound), (3, false));
        assert_eq!(top4.null_edge, c.null_edge);
        assert_eq!(top4.signal_energy, c.signal_energy);
        let top2 = spectrum_vs_null_of(&sv.s[..2], total, false, rows, cols);
        assert_eq!((top2.signal_directions, top2.lower_bound), (2, true));
        assert_eq!(top2.top_over_edge, c.top_over_edge);
        assert!(c.signal_energy > 0.2 && c.signal_energy < 1.0);
        assert_eq!(spectrum_vs_null(&[], 3, 3).signal_directions, 0);
    }

    #[test]
    fn related_pools_are_captured_and_unrelated_ones_are_not() {
        // K = 6: the dimension of the shared span.
        let opts = ExtractOptions {
            k_rule_a: KRule::Fixed(6),
            k_rule_b: KRule::Fixed(6),
            ..ExtractOptions::default()
        };
        let related = held_out(&pool(6, true, 3), &opts, 0).unwrap();
        let unrelated = held_out(&pool(6, false, 3), &opts, 0).unwrap();
        for h in &related {
            assert!(h.recycled.captured > 0.99, "{h:?}");
            assert!(h.mean_plus_basis > 0.99, "{h:?}");
            assert!(h.recycled.captured > 5.0 * h.recycled.random);
            // The split never exceeds the whole, and the whole is the centered subspace.
            assert!(h.mean_only <= h.mean_plus_basis + 1e-12);
            assert!(h.basis_only <= h.mean_plus_basis + 1e-12);
        }
        for h in &unrelated {
            assert!(h.recycled.captured < 0.5, "{h:?}");
        }
        let mean = |v: &[HeldOut]| v.iter().map(|h| h.recycled.captured).sum::<f64>() / 6.0;
        let rnd = |v: &[HeldOut]| v.iter().map(|h| h.recycled.random).sum::<f64>() / 6.0;
        assert_eq!(verdict(mean(&related), rnd(&related)).gain, Gain::Expected);
        assert_ne!(
            verdict(mean(&unrelated), rnd(&unrelated)).gain,
            Gain::Expected
        );
        assert_eq!(verdict(0.05, 0.001).gain, Gain::None);
        assert_eq!(verdict(0.5, 0.2).gain, Gain::None);
        assert_eq!(verdict(0.2, 0.01).gain, Gain::Partial);
        assert!(verdict(0.5, 0.01).line.contains("50.0%"));
    }

    #[test]
    fn a_zero_delta_w_has_no_share_and_weighs_nothing() {
        // An untrained adapter (B = 0) used to report "captured 100%".
        let p = pool(3, true, 9);
        let space = p.extract(&[0, 1], &ExtractOptions::default()).unwrap();
        let ms = &space.modules["m"];
        let live = &p.modules[2]["m"];
        let zero = LoraModule {
            a: live.a.clone(),
            b: Mat::zeros(live.b.nrows(), live.b.ncols()),
        };
        let z = measure_module(&zero, ms, Some(ms)).unwrap();
        assert!(z.captured.is_nan() && z.energy == 0.0);
        assert!(z.random.is_some_and(|(_, c)| c.is_nan()));
        let l = measure_module(live, ms, Some(ms)).unwrap();
        assert_eq!(combine(&[z, l]), combine(&[l]));
        assert!(combine(&[z]).0.1.is_nan());
    }

    #[test]
    fn capture_grows_with_n_when_the_spans_nest() {
        // Energy 1.0 keeps every direction, so the N-adapter span is inside the 2N one.
        let opts = ExtractOptions {
            k_rule_a: KRule::Energy(1.0),
            k_rule_b: KRule::Energy(1.0),
            ..ExtractOptions::default()
        };
        let p = pool(9, false, 5);
        let sizes = doubling_sizes(8);
        assert_eq!(sizes, [1, 2, 4, 8]);
        let curve = capture_vs_n(&p, &sizes, &opts, 0).unwrap();
        for w in curve.windows(2) {
            assert!(w[1].captured >= w[0].captured - 1e-9, "{curve:?}");
            assert!(w[1].k_total >= w[0].k_total);
        }
        assert!(capture_vs_n(&p, &[9], &opts, 0).is_err());
        assert_eq!(doubling_sizes(1), [1]);
        assert_eq!(doubling_sizes(5), [1, 2, 4, 5]);
    }
}
