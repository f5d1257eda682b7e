//! The top-K route of extraction (Gram in the smaller dimension, certified block Krylov)
//! against the full decomposition, on stacks with a prescribed spectrum and small gaps.
use crate::support::subspace::*;

use eigenlorax::linalg::{self, max_principal_angle};
use eigenlorax::subspace::topk::{Solver, TARGET_SIN};
use eigenlorax::subspace::{Route, SideAccumulator};
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
                .finish_top(center, |_, _, _| Ok(k))
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
            let spec = (0..p)
                .map(|i| (top.spectrum[i] - full.spectrum[i]).abs() / full.spectrum[0])
                .fold(0.0, f64::max);
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
            .finish_top(false, |_, _, _| Ok(k))
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
