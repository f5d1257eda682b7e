//! Extraction: recovery of a known subspace (SVD and streamed-Gram routes), the exact
//! left-out-energy identity, centering, pseudo-PCs and input errors.
use crate::support::subspace as subspace_common;

use eigenlorax::Error;
use eigenlorax::adapter::LoraModule;
use eigenlorax::linalg::{self, max_principal_angle};
use eigenlorax::subspace::{
    ExtractOptions, KRule, Route, decompose, extract_module, extract_module_with, project,
    reconstruct, relative_error,
};
use eigenlorax::util::GaussianRng;
use faer::Mat;
use subspace_common::*;

fn fixed(k_a: usize, k_b: usize, canonicalize: bool, center: bool) -> ExtractOptions {
    ExtractOptions {
        canonicalize,
        center,
        k_rule_a: KRule::Fixed(k_a),
        k_rule_b: KRule::Fixed(k_b),
        pseudo: 0,
        seed: 0,
        full_spectrum: false,
    }
}

/// 12 adapters (r = 4, in = 48, out = 40) inside a known K = 6 subspace. Fixed(6) must recover
/// both sides (largest principal angle < 1e-6 rad) in all four canonicalize x center settings,
/// and every adapter must be rebuilt from its projection with relative ΔW error < 1e-5.
/// Here Σr = 48: the A side (d = 48) takes the SVD route, the B side (d = 40) the Gram route.
#[test]
fn recovers_known_subspace_all_settings() {
    let (mods, v_a, v_b) = structured(11, 12, 4, 48, 40, 6);
    for canonicalize in [false, true] {
        for center in [false, true] {
            let s = extract_module(&mods, &fixed(6, 6, canonicalize, center)).unwrap();
            assert_eq!(s.a.k_principal, 6);
            assert_eq!(s.b.k_principal, 6);
            // The mean lies in the span: its direction must be recognized as null, not added.
            assert!(
                !s.a.mean_vector && !s.b.mean_vector,
                "mean direction appended although in span"
            );
            assert_eq!(s.v_a.shape(), (6, 48));
            assert_eq!(s.v_b.shape(), (40, 6));
            let ang_a = max_principal_angle(s.v_a.as_ref(), v_a.as_ref()).unwrap();
            let ang_b = max_principal_angle(s.v_b.transpose(), v_b.transpose()).unwrap();
            let mut worst: f64 = 0.0;
            for m in &mods {
                let c = project(m, &s);
                worst = worst.max(relative_error(m, &reconstruct(&c, &s)));
            }
            eprintln!(
                "canon={canonicalize} center={center}: max angle A {ang_a:.2e} B {ang_b:.2e} rad, max rel err {worst:.2e}"
            );
            assert!(ang_a < 1e-6 && ang_b < 1e-6, "angles {ang_a} {ang_b}");
            assert!(worst < 1e-5, "reconstruction error {worst}");
            assert!(linalg::frob2(s.v_a.as_ref()) > 0.0);
            assert!(orthonormality_defect(s.v_a.transpose()) < 1e-12);
            assert!(orthonormality_defect(s.v_b.as_ref()) < 1e-12);
        }
    }
}

/// Many adapters (30 x r=4 = 120 > in = 48 > out = 40): both sides stream the Gram. Recovery
/// holds there too, and the Gram route agrees with the forced SVD route on spectrum and basis.
#[test]
fn streamed_gram_route_recovers_and_matches_svd_route() {
    let (mods, v_a, v_b) = structured(12, 30, 4, 48, 40, 6);
    // The route Auto takes for this stack.
    let blocks: Vec<_> = mods.iter().map(|m| m.a.transpose()).collect();
    let dec_auto =
        decompose::decompose_blocks(48, blocks.iter().copied(), false, Route::Auto).unwrap();
    assert_eq!(dec_auto.route, Route::Gram);
    assert_eq!(dec_auto.rank, 6);
    let dec_svd =
        decompose::decompose_blocks(48, blocks.iter().copied(), false, Route::Svd).unwrap();
    assert_eq!(dec_svd.route, Route::Svd);
    let s1 = dec_svd.spectrum[0];
    let mut sdiff: f64 = 0.0;
    for i in 0..6 {
        sdiff = sdiff.max((dec_auto.spectrum[i] - dec_svd.spectrum[i]).abs() / s1);
    }
    let top_auto = dec_auto.basis.subcols(0, 6).transpose().to_owned();
    let top_svd = dec_svd.basis.subcols(0, 6).transpose().to_owned();
    // Same vectors, same signs (both routes apply the same sign convention).
    let vdiff = max_abs_diff(top_auto.as_ref(), top_svd.as_ref());
    eprintln!(
        "gram vs svd route: top-6 spectrum rel diff {sdiff:.2e}, basis max entry diff {vdiff:.2e}"
    );
    assert!(sdiff < 1e-12, "spectra differ by {sdiff}");
    // Centered: the Gram route subtracts n·μ·μᵀ; the spectra must match the centered SVD.
    let cg = decompose::decompose_blocks(48, blocks.iter().copied(), true, Route::Gram).unwrap();
    let cs = decompose::decompose_blocks(48, blocks.iter().copied(), true, Route::Svd).unwrap();
    let cdiff = (0..6)
        .map(|i| (cg.spectrum[i] - cs.spectrum[i]).abs() / cs.spectrum[0])
        .fold(0.0, f64::max);
    assert!(cdiff < 1e-12, "centered spectra differ by {cdiff}");
    assert!(
        (cs.spectrum[0] - dec_svd.spectrum[0]).abs() > 1e-6 * s1,
        "centering changed nothing"
    );
    assert!(vdiff < 1e-8, "bases differ by {vdiff}");

    // Two of the four settings here (all four run on the mixed-route case above).
    for (canonicalize, center) in [(false, false), (true, true)] {
        let s = extract_module(&mods, &fixed(6, 6, canonicalize, center)).unwrap();
        let ang_a = max_principal_angle(s.v_a.as_ref(), v_a.as_ref()).unwrap();
        let ang_b = max_principal_angle(s.v_b.transpose(), v_b.transpose()).unwrap();
        let mut worst: f64 = 0.0;
        for m in &mods {
            worst = worst.max(relative_error(m, &reconstruct(&project(m, &s), &s)));
        }
        eprintln!(
            "gram route canon={canonicalize} center={center}: max angle A {ang_a:.2e} B {ang_b:.2e}, max rel err {worst:.2e}"
        );
        assert!(ang_a < 1e-6 && ang_b < 1e-6, "angles {ang_a} {ang_b}");
        assert!(worst < 1e-5);
    }
    // Forcing either route through extract_module gives the same subspace.
    let sg = extract_module_with(&mods, &fixed(6, 6, true, false), Route::Gram).unwrap();
    let ss = extract_module_with(&mods, &fixed(6, 6, true, false), Route::Svd).unwrap();
    assert!(max_principal_angle(sg.v_a.as_ref(), ss.v_a.as_ref()).unwrap() < 1e-6);
    assert!(max_principal_angle(sg.v_b.transpose(), ss.v_b.transpose()).unwrap() < 1e-6);
}

/// The exact identity (Eckart–Young on the A stack). Setting: no canonicalization, no
/// centering, every B_t with orthonormal columns, and the B side kept whole (K_B = out, so
/// V_B spans R^out and P_B = I). Then ΔW_t − ΔŴ_t = B_t·A_t·(I − P_A) and, B_t being an
/// isometry, ||ΔW_t − ΔŴ_t||_F = ||A_t·(I − P_A)||_F. Summed over the adapters of the
/// extraction set this is the squared distance of the stacked A rows to their projection on
/// the top-K right singular vectors:
///
///   Σ_t (relative_error_t · ||ΔW_t||_F)² = Σ_{i>K} σ_i²(stack of A rows),
///
/// asserted to 1e-10 relative for K = 1, 3, 6, 9, through the full project → reconstruct →
/// relative_error pipeline. Also energy_kept = 1 − (that sum)/Σσ².
#[test]
fn left_out_energy_identity_is_exact() {
    let (n, r, in_f, out_f) = (12, 4, 30, 10);
    let mut rng = GaussianRng::new(21);
    let mods: Vec<LoraModule> = (0..n)
        .map(|_| {
            let a = gaussian(&mut rng, r, in_f);
            let b = orthonormal_cols(&mut rng, out_f, r);
            LoraModule { a, b }
        })
        .collect();
    for k in [1, 3, 6, 9] {
        let s = extract_module(&mods, &fixed(k, out_f, false, false)).unwrap();
        assert_eq!(s.b.k_principal, out_f);
        let left_out: f64 = s.a.spectrum.iter().skip(k).map(|x| x * x).sum();
        let total: f64 = s.a.spectrum.iter().map(|x| x * x).sum();
        let mut err2 = 0.0;
        for m in &mods {
            let e = relative_error(m, &reconstruct(&project(m, &s), &s));
            err2 += (e * linalg::frob2(m.a.as_ref()).sqrt()).powi(2);
        }
        let rel = (err2 - left_out).abs() / left_out;
        eprintln!("K={k}: Σ errors² {err2:.12e} vs Σ_(i>K) σ² {left_out:.12e}: rel diff {rel:.2e}");
        assert!(rel < 1e-10, "K={k}: {err2} vs {left_out}");
        assert!((s.a.energy_kept - (1.0 - left_out / total)).abs() < 1e-12);
    }
}

/// Centering keeps the mean in the span: with random adapters and K = 2 the mean of the stacked
/// A rows (and of the stacked B columns) is not among the top directions, so it is appended,
/// and an adapter whose rows are all μ_A and columns all μ_B is rebuilt exactly. Without
/// centering the same adapter is far off.
#[test]
fn centering_keeps_mean_in_span() {
    let (n, r, in_f, out_f) = (8, 3, 20, 16);
    let mods = random(31, n, r, in_f, out_f);
    let mut mu_a = vec![0.0; in_f];
    let mut mu_b = vec![0.0; out_f];
    for m in &mods {
        for k in 0..r {
            for (j, mu) in mu_a.iter_mut().enumerate() {
                *mu += m.a[(k, j)] / (n * r) as f64;
            }
            for (i, mu) in mu_b.iter_mut().enumerate() {
                *mu += m.b[(i, k)] / (n * r) as f64;
            }
        }
    }
    let mean_adapter = LoraModule {
        a: Mat::from_fn(2, in_f, |_, j| mu_a[j]),
        b: Mat::from_fn(out_f, 2, |i, _| mu_b[i]),
    };
    let s = extract_module(&mods, &fixed(2, 2, false, true)).unwrap();
    assert!(s.a.mean_vector && s.b.mean_vector);
    assert_eq!(s.v_a.nrows(), 3);
    assert_eq!(s.v_b.ncols(), 3);
    assert!(orthonormality_defect(s.v_a.transpose()) < 1e-12);
    assert!(orthonormality_defect(s.v_b.as_ref()) < 1e-12);
    let e = relative_error(&mean_adapter, &reconstruct(&project(&mean_adapter, &s), &s));
    let s0 = extract_module(&mods, &fixed(2, 2, false, false)).unwrap();
    let e0 = relative_error(
        &mean_adapter,
        &reconstruct(&project(&mean_adapter, &s0), &s0),
    );
    eprintln!("mean adapter: rel err {e:.2e} with centering, {e0:.2e} without");
    assert!(e < 1e-12, "{e}");
    assert!(e0 > 0.1, "{e0}");
}

/// Pseudo-PCs: orthonormal augmented basis, near-null draws dropped once the basis is full,
/// same seed → same bits, and the documented draw order (fresh GaussianRng::new(seed) per side,
/// d normals per draw) reproduced by hand.
#[test]
fn pseudo_pcs_orthonormal_droppable_reproducible() {
    let (mods, _, _) = structured(41, 6, 2, 12, 10, 4);
    let mut o = fixed(4, 4, true, false);
    o.pseudo = 5;
    o.seed = 1234;
    let s = extract_module(&mods, &o).unwrap();
    assert_eq!((s.a.k_principal, s.a.pseudo, s.a.k_total()), (4, 5, 9));
    assert_eq!((s.b.k_principal, s.b.pseudo, s.b.k_total()), (4, 5, 9));
    let da = orthonormality_defect(s.v_a.transpose());
    let db = orthonormality_defect(s.v_b.as_ref());
    eprintln!("pseudo-PC basis orthonormality defect: A {da:.2e}, B {db:.2e}");
    assert!(da < 1e-12 && db < 1e-12);

    // Same seed: identical bits. Other seed: other pseudo vectors, same principal part.
    let s2 = extract_module(&mods, &o).unwrap();
    assert_eq!(max_abs_diff(s.v_a.as_ref(), s2.v_a.as_ref()), 0.0);
    assert_eq!(max_abs_diff(s.v_b.as_ref(), s2.v_b.as_ref()), 0.0);
    o.seed = 1235;
    let s3 = extract_module(&mods, &o).unwrap();
    assert_eq!(max_abs_diff(s.v_a.subrows(0, 4), s3.v_a.subrows(0, 4)), 0.0);
    assert!(max_abs_diff(s.v_a.subrows(4, 5), s3.v_a.subrows(4, 5)) > 1e-3);

    // P beyond the dimension: only d − K survive (the rest are near-null and dropped).
    o.pseudo = 20;
    let s4 = extract_module(&mods, &o).unwrap();
    assert_eq!(s4.a.pseudo, 12 - 4);
    assert_eq!(s4.b.pseudo, 10 - 4);
    assert!(orthonormality_defect(s4.v_a.transpose()) < 1e-12);
    assert!(orthonormality_defect(s4.v_b.as_ref()) < 1e-12);

    // Draw order: with K = 0 the first pseudo-PC is the first d normals, normalized.
    let mut o0 = fixed(0, 0, false, false);
    o0.pseudo = 1;
    o0.seed = 99;
    let s0 = extract_module(&mods, &o0).unwrap();
    let mut rng = GaussianRng::new(99);
    let v: Vec<f64> = (0..12).map(|_| rng.next_normal()).collect();
    let nv = linalg::norm(&v);
    for (j, x) in v.iter().enumerate() {
        assert!((s0.v_a[(0, j)] - x / nv).abs() < 1e-15);
    }
    let mut rng = GaussianRng::new(99);
    let w: Vec<f64> = (0..10).map(|_| rng.next_normal()).collect();
    let nw = linalg::norm(&w);
    for (i, x) in w.iter().enumerate() {
        assert!((s0.v_b[(i, 0)] - x / nw).abs() < 1e-15);
    }
}

/// Bad inputs to the pure-math entry point are errors, not panics.
#[test]
fn bad_module_inputs_are_errors() {
    let mut mods = random(51, 3, 2, 8, 6);
    assert!(matches!(
        extract_module(&[], &ExtractOptions::default()),
        Err(Error::Usage(_))
    ));
    let mut bad = mods.clone();
    bad[1].a = Mat::zeros(2, 9);
    match extract_module(&bad, &ExtractOptions::default()) {
        Err(Error::Usage(m)) => {
            assert!(m.contains("adapter module 1") && m.contains("in=8"), "{m}")
        }
        other => panic!("expected a usage error, got {other:?}"),
    }
    mods[2].b[(0, 0)] = f64::NAN;
    assert!(matches!(
        extract_module(&mods, &ExtractOptions::default()),
        Err(Error::Usage(_))
    ));
    let o = ExtractOptions {
        k_rule_a: KRule::Energy(1.5),
        ..ExtractOptions::default()
    };
    assert!(matches!(
        extract_module(&random(1, 2, 2, 4, 4), &o),
        Err(Error::Usage(_))
    ));
}

/// An all-zero module (untrained adapters, B = 0) keeps nothing and does not fail.
#[test]
fn zero_updates_give_an_empty_basis() {
    let mods: Vec<LoraModule> = (0..3)
        .map(|_| LoraModule {
            a: Mat::zeros(2, 5),
            b: Mat::zeros(4, 2),
        })
        .collect();
    let s = extract_module(&mods, &ExtractOptions::default()).unwrap();
    assert_eq!((s.a.k_total(), s.b.k_total()), (0, 0));
    assert_eq!(s.v_a.shape(), (0, 5));
    assert_eq!(s.v_b.shape(), (4, 0));
    assert_eq!(s.a.energy_kept, 1.0);
}
