//! K rules on hand-made spectra and on low-rank + noise.
use crate::support::subspace as subspace_common;

use eigenlorax::linalg;
use eigenlorax::subspace::KRule;
use eigenlorax::subspace::select::{energy_kept, gavish_donoho_omega, median, select_k};
use eigenlorax::util::GaussianRng;
use faer::Mat;
use subspace_common::*;

/// σ² = [4, 3, 2, 1] (total 10): thresholds hit exactly on the cumulative boundaries.
#[test]
fn energy_rule_exact_boundaries() {
    let s = [2.0f64, 3.0f64.sqrt(), 2.0f64.sqrt(), 1.0];
    let k = |t: f64| select_k(KRule::Energy(t), &s, 4, (4, 10)).unwrap();
    assert_eq!(k(0.4), 1); // 4/10 exactly
    assert_eq!(k(0.4000001), 2);
    assert_eq!(k(0.7), 2); // 7/10 exactly
    assert_eq!(k(0.7000001), 3);
    assert_eq!(k(0.9), 3); // 9/10 exactly
    assert_eq!(k(0.95), 4);
    assert_eq!(k(1.0), 4);
    assert_eq!(k(0.01), 1);
    // Capped at the rank.
    assert_eq!(select_k(KRule::Energy(1.0), &s, 2, (4, 10)).unwrap(), 2);
    assert!(select_k(KRule::Energy(0.0), &s, 4, (4, 10)).is_err());
    assert!(select_k(KRule::Energy(f64::NAN), &s, 4, (4, 10)).is_err());
    assert!((energy_kept(&s, 2) - 0.7).abs() < 1e-15);
    assert_eq!(energy_kept(&[0.0, 0.0], 0), 1.0);
}

#[test]
fn fixed_rule_is_capped_at_rank() {
    let s = [3.0, 2.0, 1.0, 1e-20];
    assert_eq!(select_k(KRule::Fixed(2), &s, 3, (4, 8)).unwrap(), 2);
    assert_eq!(select_k(KRule::Fixed(10), &s, 3, (4, 8)).unwrap(), 3);
    assert_eq!(select_k(KRule::Fixed(0), &s, 3, (4, 8)).unwrap(), 0);
}

/// Gavish–Donoho on hand-made spectra: the cut is at ω(β)·median.
#[test]
fn gavish_donoho_threshold_on_hand_made_spectrum() {
    // Square stack: β = 1, ω = 0.56 − 0.95 + 1.82 + 1.43 = 2.86.
    assert!((gavish_donoho_omega(1.0) - 2.86).abs() < 1e-12);
    assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    // Median 1 → τ = 2.86: keeps 10, 5 and 2.87 but not 2.85.
    let s = [10.0, 5.0, 2.87, 2.85, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5];
    assert_eq!(select_k(KRule::GavishDonoho, &s, 11, (11, 11)).unwrap(), 3);
    // Nothing above τ: at least one is kept.
    let flat = [1.0; 6];
    assert_eq!(select_k(KRule::GavishDonoho, &flat, 6, (6, 6)).unwrap(), 1);
}

/// Low rank + noise: X = signal (rank 4, singular values 40..70) + N(0, 1) noise, 120 x 60
/// (noise bulk edge ≈ √120 + √60 ≈ 18.7). The rule finds rank 4; on pure noise it keeps 1.
#[test]
fn gavish_donoho_recovers_true_rank() {
    let (n, d, k) = (120, 60, 4);
    let mut rng = GaussianRng::new(101);
    let u = orthonormal_cols(&mut rng, n, k);
    let v = orthonormal_cols(&mut rng, d, k);
    let sig = [70.0, 60.0, 50.0, 40.0];
    let noise = gaussian(&mut rng, n, d);
    let us = Mat::from_fn(n, k, |i, j| u[(i, j)] * sig[j]);
    let signal = linalg::mul(us.as_ref(), v.transpose());
    let x = Mat::from_fn(n, d, |i, j| signal[(i, j)] + noise[(i, j)]);
    let sv = linalg::thin_svd(x.as_ref()).unwrap();
    let kk = select_k(KRule::GavishDonoho, &sv.s, d, (n, d)).unwrap();
    let tau = gavish_donoho_omega(0.5) * median(&sv.s);
    eprintln!(
        "GD: σ5 = {:.2}, τ = {tau:.2}, σ4 = {:.2} → K = {kk}",
        sv.s[4], sv.s[3]
    );
    assert_eq!(kk, 4);
    let pure = linalg::thin_svd(noise.as_ref()).unwrap();
    assert_eq!(
        select_k(KRule::GavishDonoho, &pure.s, d, (n, d)).unwrap(),
        1
    );
}
