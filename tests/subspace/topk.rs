//! The top-K route of extraction (Gram in the smaller dimension, certified block Krylov)
//! against the full decomposition, on stacks with a prescribed spectrum and small gaps.
use crate::support::subspace::*;

use eigenlorax::linalg::{self, max_principal_angle};
use eigenlorax::subspace::topk::{Solver, TARGET_SIN};
use eigenlorax::subspace::{KRule, Route, SideAccumulator, select};
use eigenlorax::util::GaussianRng;
use faer::Mat;

/// A stack X = U·diag(σ)·Vᵀ [d x n] with random orthonormal U, V and the given σ.
fn stack_with_spectrum(seed: u64, d: usize, n: usize, sigma: &[f64]) -> Mat<f64> {
    let mut rng = GaussianRng::new(seed);
    let u = orthonormal_cols(&mut rng, d, sigma.len());
    let v = orthonormal_cols(&mut rng, n, sigma.len());
    let us = Mat::from_fn(d, sigma.len(), |i, j| u[(i, j)] * sigma[j]);
    linalg::mul(us.as_ref(), v.transpose())
}

/// Feeds `x` in blocks of `r` columns on `route`.
fn accumulate(x: &Mat<f64>, r: usize, route: Route) -> SideAccumulator {
    let mut acc = SideAccumulator::new(x.nrows(), route);
    for c0 in (0..x.ncols()).step_by(r) {
        let w = r.min(x.ncols() - c0);
        acc.add(x.subcols(c0, w)).unwrap();
    }
    acc
}

/// A slowly decaying spectrum of length p with σ_{k+1} = σ_k·(1 − gap).
fn spectrum_with_gap(p: usize, k: usize, gap: f64) -> Vec<f64> {
    let mut s: Vec<f64> = (0..p).map(|i| 0.98f64.powi(i as i32)).collect();
    for i in k..p {
        s[i] = s[k - 1] * (1.0 - gap) * 0.98f64.powi((i - k) as i32);
    }
    s
}

/// Top-K by the fast route vs every vector of the full SVD, for Σr ≤ d (XᵀX) and Σr > d
/// (streamed X·Xᵀ), centered or not, with a gap of 1e-3 after K inside a slowly decaying
/// spectrum: certified by the solver (bound ≤ 1e-7), and the measured largest principal
/// angle to the full decomposition's top K is within the bound and ≤ 1e-6. The spectrum is
/// the full decomposition's to 1e-9 of σ₁.
#[test]
fn top_k_matches_full_decomposition_with_small_gaps() {
    let k = 8;
    for (d, n) in [(240, 160), (128, 320)] {
        let p = d.min(n);
        let x = stack_with_spectrum(d as u64 + n as u64, d, n, &spectrum_with_gap(p, k, 1e-3));
        for center in [false, true] {
            let full = accumulate(&x, 16, Route::Svd).finish(center).unwrap();
            let top = accumulate(&x, 16, Route::Auto)
                .finish_top(center, KRule::Fixed(k), false)
                .unwrap();
            assert_eq!(top.basis.shape(), (d, k));
            let Solver::Krylov {
                sin_bound,
                restarts,
            } = top.solver
            else {
                panic!(
                    "d={d} n={n}: expected the Krylov solver, got {:?}",
                    top.solver
                );
            };
            let exact = full.basis.subcols(0, k).transpose().to_owned();
            let angle = max_principal_angle(top.basis.transpose(), exact.as_ref()).unwrap();
            // The top-values route keeps the K values it certified, and the exact total.
            assert_eq!(top.spectrum.len(), k);
            assert!(!top.spectrum_complete);
            let spec = (0..k)
                .map(|i| (top.spectrum[i] - full.spectrum[i]).abs() / full.spectrum[0])
                .fold(0.0, f64::max);
            let want_total: f64 = full.spectrum.iter().map(|s| s * s).sum();
            assert!(
                (top.total_energy - want_total).abs() <= 1e-12 * want_total,
                "total {} vs Σσ² {want_total}",
                top.total_energy
            );
            // Asked for, the full spectrum comes back whole, and the same vectors.
            let whole = accumulate(&x, 16, Route::Auto)
                .finish_top(center, KRule::Fixed(k), true)
                .unwrap();
            assert!(whole.spectrum_complete);
            assert_eq!(whole.spectrum.len(), p);
            let spec_all = (0..p)
                .map(|i| (whole.spectrum[i] - full.spectrum[i]).abs() / full.spectrum[0])
                .fold(0.0, f64::max);
            assert!(spec_all < 1e-9, "full spectrum differs by {spec_all}");
            let exact_k = full.basis.subcols(0, k).transpose().to_owned();
            let angle_whole =
                max_principal_angle(whole.basis.transpose(), exact_k.as_ref()).unwrap();
            assert!(angle_whole < 1e-6, "{angle_whole}");
            eprintln!(
                "d={d} n={n} center={center}: {restarts} restarts, bound {sin_bound:.1e}, sin angle {:.1e}, spectrum diff {spec:.1e}",
                angle.sin()
            );
            assert!(sin_bound <= TARGET_SIN);
            assert!(
                angle.sin() <= sin_bound + 1e-10,
                "{angle} vs bound {sin_bound}"
            );
            assert!(angle < 1e-6);
            assert!(spec < 1e-9, "spectrum differs by {spec}");
            assert!(orthonormality_defect(top.basis.as_ref()) < 1e-12);
        }
    }
}

/// Gaps of 1e-9 and 1e-7 after K cannot be certified (below 1e-5 of λ₁): the route falls
/// back to the full decomposition (the SVD of X for Σr ≤ d, the d x d Gram's eigenvectors
/// otherwise), says why, and returns its top K. The Gram case gets the wider gap because
/// its eigenvectors carry an error of about ε·λ₁/gap (σ squared), 1e-6 at a 1e-9 gap.
#[test]
fn tiny_gap_falls_back_to_the_full_decomposition() {
    let k = 8;
    for (d, n, gap) in [(200, 130, 1e-9), (130, 300, 1e-7)] {
        let p = d.min(n);
        let x = stack_with_spectrum(7, d, n, &spectrum_with_gap(p, k, gap));
        let top = accumulate(&x, 8, Route::Auto)
            .finish_top(false, KRule::Fixed(k), false)
            .unwrap();
        let Solver::Fallback(reason) = &top.solver else {
            panic!("expected a fallback, got {:?}", top.solver);
        };
        assert!(reason.contains("eigengap"), "{reason}");
        let full = accumulate(&x, 8, Route::Svd).finish(false).unwrap();
        let exact = full.basis.subcols(0, k).transpose().to_owned();
        let angle = max_principal_angle(top.basis.transpose(), exact.as_ref()).unwrap();
        eprintln!("d={d} n={n}: fallback ({reason}); angle to the SVD {angle:.1e}");
        assert!(angle < 1e-6, "{angle}");
    }
}

/// The energy rule decided from the trace plus the certified top values (no full spectrum)
/// gives the K of the full spectrum, on spectra with small gaps (1e-3 and 1e-4 of σ after
/// every direction) and thresholds that land K in the first block (K ≤ 16) and after one
/// growth step (16 < K ≤ 32), both Gram shapes (Σr ≤ d and Σr > d), centered or not. The
/// kept values and vectors match the full decomposition's (principal angles ≤ 1e-6), and
/// the energy kept is the full spectrum's. A threshold placed exactly on a partial sum of the
/// full spectrum (where only the rule's 1e-12 slack separates K from K + 1) still gives the
/// same K (the proven error of the top values is far below that slack here).
///
/// One test per (shape, gap), so the four run on separate threads (about 30 s each in a debug
/// build; one test of all four was the suite's slowest, 2 min on one core).
fn energy_rule_matches_full_spectrum(d: usize, n: usize, gap: f64) {
    let mut checked = 0;
    let p = d.min(n);
    // σ_i = 0.93^i·(1 − gap)^i + 1e-3: a decaying head, then a flat tail whose
    // neighbours differ by about `gap`·0.93^i.
    let sigma: Vec<f64> = (0..p)
        .map(|i| 0.93f64.powi(i as i32) * (1.0f64 - gap).powi(i as i32) + 1e-3)
        .collect();
    let x = stack_with_spectrum(11 + d as u64, d, n, &sigma);
    for center in [false, true] {
        let full = accumulate(&x, 16, Route::Svd).finish(center).unwrap();
        let total: f64 = full.spectrum.iter().map(|s| s * s).sum();
        let sq: Vec<f64> = full.spectrum.iter().map(|s| s * s).collect();
        let partial = |k: usize| sq[..k].iter().sum::<f64>();
        // Thresholds: halfway inside K = 5, 14, 24 (after one growth step), and one
        // exactly on the partial sum of K = 9.
        let mut cases: Vec<(f64, bool)> = [5usize, 14, 24]
            .iter()
            .map(|&k| ((partial(k - 1) + 0.5 * sq[k - 1]) / total, false))
            .collect();
        cases.push((partial(9) / total, true));
        for (t, on_boundary) in cases {
            let want =
                select::select_k(KRule::Energy(t), &full.spectrum, full.rank, (n, d)).unwrap();
            let top = accumulate(&x, 16, Route::Auto)
                .finish_top(center, KRule::Energy(t), false)
                .unwrap();
            let k = top.basis.ncols();
            assert_eq!(k, want, "d={d} n={n} gap={gap} center={center} t={t}");
            if !on_boundary {
                assert!(
                    !top.spectrum_complete,
                    "t={t}: expected the top-values route, got the full spectrum ({:?})",
                    top.solver
                );
                assert!(
                    matches!(top.solver, Solver::Krylov { .. }),
                    "{:?}",
                    top.solver
                );
            }
            let kept: f64 = top.spectrum[..k].iter().map(|s| s * s).sum();
            assert!(
                (kept / top.total_energy - partial(k) / total).abs() < 1e-9,
                "energy kept {} vs {}",
                kept / top.total_energy,
                partial(k) / total
            );
            let exact = full.basis.subcols(0, k).transpose().to_owned();
            let angle = max_principal_angle(top.basis.transpose(), exact.as_ref()).unwrap();
            assert!(angle < 1e-6, "t={t} K={k}: angle {angle:e}");
            eprintln!(
                "d={d} n={n} gap={gap:.0e} center={center} t={t:.6}: K={k} (full spectrum {}), {:?}, angle {angle:.1e}",
                top.spectrum_complete, top.solver
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 8);
}

#[test]
fn energy_rule_from_trace_and_top_values_matches_full_spectrum_tall_gap_1e3() {
    energy_rule_matches_full_spectrum(1000, 600, 1e-3);
}

#[test]
fn energy_rule_from_trace_and_top_values_matches_full_spectrum_tall_gap_1e4() {
    energy_rule_matches_full_spectrum(1000, 600, 1e-4);
}

#[test]
fn energy_rule_from_trace_and_top_values_matches_full_spectrum_wide_gap_1e3() {
    energy_rule_matches_full_spectrum(600, 1040, 1e-3);
}

#[test]
fn energy_rule_from_trace_and_top_values_matches_full_spectrum_wide_gap_1e4() {
    energy_rule_matches_full_spectrum(600, 1040, 1e-4);
}

/// Fixed K and the energy rule on a stack of rank 6 < K: the top values cannot certify
/// directions that are not there, so the full spectrum decides and K is capped at the rank,
/// as on the full decomposition; an all-zero stack keeps nothing and has total energy 0.
#[test]
fn rank_below_k_and_zero_stacks_match_the_full_decomposition() {
    let (d, n) = (300, 200);
    let sigma: Vec<f64> = (0..6).map(|i| 1.0 + 0.3 * i as f64).rev().collect();
    let x = stack_with_spectrum(5, d, n, &sigma);
    for rule in [
        KRule::Fixed(12),
        KRule::Energy(1.0),
        KRule::Energy(0.999_999),
    ] {
        let full = accumulate(&x, 8, Route::Svd).finish(false).unwrap();
        let want = select::select_k(rule, &full.spectrum, full.rank, (n, d)).unwrap();
        let top = accumulate(&x, 8, Route::Auto)
            .finish_top(false, rule, false)
            .unwrap();
        assert_eq!(top.basis.ncols(), want, "{rule:?}");
        assert!(want <= 6);
        let exact = full.basis.subcols(0, want).transpose().to_owned();
        let angle = max_principal_angle(top.basis.transpose(), exact.as_ref()).unwrap();
        assert!(angle < 1e-6, "{rule:?}: {angle}");
    }
    let zero = Mat::<f64>::zeros(d, n);
    for rule in [KRule::Fixed(4), KRule::Energy(0.9)] {
        let top = accumulate(&zero, 8, Route::Auto)
            .finish_top(false, rule, false)
            .unwrap();
        assert_eq!(top.basis.ncols(), 0);
        assert_eq!(top.total_energy, 0.0);
    }
}

/// A heavy tail (the Lots-of-LoRAs case: 0.9 of the energy needs a large share of the
/// directions): the energy rule's proven lower bound on K shows early that its Krylov basis
/// would not pay, and one full decomposition decides K and gives the vectors. K, the
/// spectrum (complete) and the span match the full decomposition's, for Σr ≤ d (the SVD of
/// X) and Σr > d (the d x d Gram's eigendecomposition).
#[test]
fn large_k_takes_one_full_decomposition() {
    for (d, n) in [(300, 200), (150, 400)] {
        let p = d.min(n);
        let sigma: Vec<f64> = (0..p).map(|i| 1.0 / (1.0 + 0.01 * i as f64)).collect();
        let x = stack_with_spectrum(9, d, n, &sigma);
        let full = accumulate(&x, 16, Route::Svd).finish(false).unwrap();
        let rule = KRule::Energy(0.9);
        let want = select::select_k(rule, &full.spectrum, full.rank, (n, d)).unwrap();
        assert!(want > p / 2, "K = {want} of {p}");
        let top = accumulate(&x, 16, Route::Auto)
            .finish_top(false, rule, false)
            .unwrap();
        assert_eq!(top.basis.ncols(), want, "d={d} n={n}");
        assert!(top.spectrum_complete);
        assert_eq!(top.solver, Solver::Full);
        let spec = (0..p)
            .map(|i| (top.spectrum[i] - full.spectrum[i]).abs())
            .fold(0.0, f64::max);
        assert!(spec < 1e-9, "spectrum differs by {spec}");
        let exact = full.basis.subcols(0, want).transpose().to_owned();
        let angle = max_principal_angle(top.basis.transpose(), exact.as_ref()).unwrap();
        assert!(angle < 1e-6, "d={d} n={n}: {angle}");
    }
}
