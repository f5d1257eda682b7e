//! Each adapter of a pool held out against the subspace of the others ([`held_out`]):
//! recycled vs random vs chance, split into the mean direction and the centered basis; their
//! means ([`HeldOutMean`]); and the held-out capture against N of the others
//! ([`capture_vs_n`]).

use super::{CaptureSummary, Pool, Verdict, capture_summary, verdict};
use crate::error::{Error, Result};
use crate::subspace::{ExtractOptions, KRule, Subspace};
use crate::util::GaussianRng;

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
