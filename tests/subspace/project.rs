//! Projection, reconstruction, errors from factors, canonicalization.
use crate::support::subspace as subspace_common;

use eigenlorax::adapter::LoraModule;
use eigenlorax::linalg;
use eigenlorax::subspace::{
    Coefficients, ExtractOptions, KRule, ModuleSubspace, canonicalize, captured_energy,
    extract_module, project, reconstruct, relative_error, try_project, try_reconstruct,
};
use eigenlorax::util::GaussianRng;
use faer::Mat;
use subspace_common::*;

fn subspace(mods: &[LoraModule], k: usize) -> ModuleSubspace {
    let o = ExtractOptions {
        canonicalize: true,
        center: false,
        k_rule_a: KRule::Fixed(k),
        k_rule_b: KRule::Fixed(k),
        pseudo: 0,
        seed: 0,
        full_spectrum: false,
    };
    extract_module(mods, &o).unwrap()
}

fn max_coeff_diff(c1: &Coefficients, c2: &Coefficients) -> f64 {
    max_abs_diff(c1.alpha_a.as_ref(), c2.alpha_a.as_ref())
        .max(max_abs_diff(c1.alpha_b.as_ref(), c2.alpha_b.as_ref()))
}

/// project → reconstruct → project returns the same coefficients to 1e-12 (the gauge makes the
/// coefficients unique), for held-out adapters that are NOT in the subspace.
#[test]
fn project_reconstruct_project_is_identity() {
    let s = subspace(&random(61, 10, 4, 24, 20), 6);
    for (t, m) in random(62, 5, 3, 24, 20).iter().enumerate() {
        let c = project(m, &s);
        assert_eq!(c.alpha_a.shape(), (3, 6));
        assert_eq!(c.alpha_b.shape(), (6, 3));
        let c2 = project(&reconstruct(&c, &s), &s);
        let d = max_coeff_diff(&c, &c2);
        let scale = linalg::frob2(c.alpha_a.as_ref()).sqrt();
        eprintln!("held-out {t}: round-trip coefficient diff {d:.2e} (|alpha_A| = {scale:.2})");
        assert!(d < 1e-12, "{d}");
        // Gauge: alpha_Bᵀalpha_B = alpha_A·alpha_Aᵀ = diag(S) (balanced), so the product is kept.
        let gb = linalg::mul(c.alpha_b.transpose(), c.alpha_b.as_ref());
        let ga = linalg::mul(c.alpha_a.as_ref(), c.alpha_a.transpose());
        assert!(max_abs_diff(ga.as_ref(), gb.as_ref()) < 1e-12);
    }
}

/// The gauge keeps ΔŴ: B̂·Â from the gauged coefficients equals V_B·(V_BᵀB)(AV_Aᵀ)·V_A, the
/// plain orthonormal-basis formula of DESIGN.md, computed densely.
#[test]
fn gauged_projection_equals_plain_formula() {
    let s = subspace(&random(63, 10, 4, 24, 20), 5);
    let m = &random(64, 1, 4, 24, 20)[0];
    let approx = dense(&reconstruct(&project(m, &s), &s));
    let aa = linalg::mul(m.a.as_ref(), s.v_a.transpose()); // r x K_A
    let ab = linalg::mul(s.v_b.transpose(), m.b.as_ref()); // K_B x r
    let plain = linalg::mul(
        linalg::mul(
            s.v_b.as_ref(),
            linalg::mul(ab.as_ref(), aa.as_ref()).as_ref(),
        )
        .as_ref(),
        s.v_a.as_ref(),
    );
    let d = max_abs_diff(approx.as_ref(), plain.as_ref());
    eprintln!("gauged vs plain ΔŴ: max entry diff {d:.2e}");
    assert!(d < 1e-12);
}

/// Non-orthonormal (quantization-like) bases: least squares, not Vᵀ, recovers an adapter that
/// lies in their span exactly, and the round trip stays idempotent.
#[test]
fn least_squares_in_non_orthonormal_bases() {
    let mut s = subspace(&random(65, 10, 4, 24, 20), 6);
    let mut rng = GaussianRng::new(66);
    // Perturb every entry by ~1e-2 relative (int8-like error is far smaller; this is a stress).
    let (ka, kb) = (s.v_a.nrows(), s.v_b.ncols());
    let pa = gaussian(&mut rng, ka, 24);
    let pb = gaussian(&mut rng, 20, kb);
    s.v_a = Mat::from_fn(ka, 24, |i, j| {
        s.v_a[(i, j)] * (1.0 + 0.3 * i as f64) + 0.01 * pa[(i, j)]
    });
    s.v_b = Mat::from_fn(20, kb, |i, j| s.v_b[(i, j)] + 0.01 * pb[(i, j)]);
    assert!(orthonormality_defect(s.v_b.as_ref()) > 1e-3);
    // An adapter inside the perturbed span.
    let c0 = Coefficients {
        alpha_a: gaussian(&mut rng, 3, ka),
        alpha_b: gaussian(&mut rng, kb, 3),
    };
    let m = reconstruct(&c0, &s);
    let c = project(&m, &s);
    let e = relative_error(&m, &reconstruct(&c, &s));
    // The naive orthonormal formula misses it.
    let naive = LoraModule {
        a: linalg::mul(
            linalg::mul(m.a.as_ref(), s.v_a.transpose()).as_ref(),
            s.v_a.as_ref(),
        ),
        b: linalg::mul(
            s.v_b.as_ref(),
            linalg::mul(s.v_b.transpose(), m.b.as_ref()).as_ref(),
        ),
    };
    let e_naive = relative_error(&m, &naive);
    let d = max_coeff_diff(&c, &project(&reconstruct(&c, &s), &s));
    eprintln!(
        "non-orthonormal basis: lstsq rel err {e:.2e}, naive Vᵀ rel err {e_naive:.2e}, round trip {d:.2e}"
    );
    assert!(e < 1e-12, "{e}");
    assert!(e_naive > 1e-2);
    assert!(d < 1e-12);
    // captured_energy uses the true projectors: an in-span adapter is fully captured.
    assert!((captured_energy(&m, &s) - 1.0).abs() < 1e-12);
}

/// relative_error from factors equals the dense ||ΔW1 − ΔW2||/||ΔW1|| to 1e-12 (relative), for
/// unrelated pairs of different rank, and also for a nearly equal pair (error ~1e-10) where
/// the Gram-trace formula would have lost all digits.
#[test]
fn relative_error_matches_dense() {
    let mut rng = GaussianRng::new(71);
    for t in 0..5 {
        let m1 = LoraModule {
            a: gaussian(&mut rng, 3, 9),
            b: gaussian(&mut rng, 7, 3),
        };
        let m2 = LoraModule {
            a: gaussian(&mut rng, 2, 9),
            b: gaussian(&mut rng, 7, 2),
        };
        let d1 = dense(&m1);
        let want = diff_norm(d1.as_ref(), dense(&m2).as_ref()) / linalg::frob2(d1.as_ref()).sqrt();
        let got = relative_error(&m1, &m2);
        assert!((got - want).abs() < 1e-12 * want, "{t}: {got} vs {want}");
    }
    let m1 = LoraModule {
        a: gaussian(&mut rng, 4, 9),
        b: gaussian(&mut rng, 7, 4),
    };
    let noise = gaussian(&mut rng, 7, 4);
    let m2 = LoraModule {
        a: m1.a.clone(),
        b: Mat::from_fn(7, 4, |i, j| m1.b[(i, j)] + 1e-10 * noise[(i, j)]),
    };
    let d1 = dense(&m1);
    let want = diff_norm(d1.as_ref(), dense(&m2).as_ref()) / linalg::frob2(d1.as_ref()).sqrt();
    let got = relative_error(&m1, &m2);
    // The trace formula, for the record.
    let tr = |b1: &Mat<f64>, a1: &Mat<f64>, b2: &Mat<f64>, a2: &Mat<f64>| {
        let x = linalg::mul(
            linalg::mul(b1.transpose(), b2.as_ref()).as_ref(),
            linalg::mul(a2.as_ref(), a1.transpose()).as_ref(),
        );
        (0..x.nrows()).map(|i| x[(i, i)]).sum::<f64>()
    };
    let n11 = tr(&m1.b, &m1.a, &m1.b, &m1.a);
    let trace_err = ((n11 + tr(&m2.b, &m2.a, &m2.b, &m2.a) - 2.0 * tr(&m1.b, &m1.a, &m2.b, &m2.a))
        .max(0.0))
    .sqrt()
        / n11.sqrt();
    eprintln!("near-equal pair: dense {want:.6e}, factors {got:.6e}, Gram traces {trace_err:.6e}");
    assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");
    assert!(relative_error(&m1, &m1) < 1e-15);
    let z = LoraModule {
        a: Mat::zeros(4, 9),
        b: Mat::zeros(7, 4),
    };
    assert_eq!(relative_error(&z, &z), 0.0);
    assert!(relative_error(&z, &m1).is_infinite());
    assert!(
        relative_error(
            &m1,
            &LoraModule {
                a: Mat::zeros(1, 8),
                b: Mat::zeros(7, 1)
            }
        )
        .is_nan()
    );
}

/// captured_energy from factors equals the dense ||P_B·ΔW·P_A||²/||ΔW||² to 1e-12.
#[test]
fn captured_energy_matches_dense() {
    let s = subspace(&random(72, 10, 4, 24, 20), 5);
    let pa = linalg::mul(s.v_a.transpose(), s.v_a.as_ref());
    let pb = linalg::mul(s.v_b.as_ref(), s.v_b.transpose());
    for (t, m) in random(73, 4, 3, 24, 20).iter().enumerate() {
        let d = dense(m);
        let p = linalg::mul(linalg::mul(pb.as_ref(), d.as_ref()).as_ref(), pa.as_ref());
        let want = linalg::frob2(p.as_ref()) / linalg::frob2(d.as_ref());
        let got = captured_energy(m, &s);
        eprintln!("held-out {t}: captured {got:.6} (dense {want:.6})");
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // Consistency with projection: for orthonormal bases 1 − captured = rel_err².
        let e = relative_error(m, &reconstruct(&project(m, &s), &s));
        assert!((1.0 - got - e * e).abs() < 1e-12);
    }
}

/// Canonicalization: same ΔW, balanced factors (B''ᵀB'' = A''A''ᵀ = diag(S), descending),
/// sign convention on B'' columns, idempotent.
#[test]
fn canonicalization_is_balanced_and_exact() {
    for (t, m) in random(81, 3, 4, 11, 9).iter().enumerate() {
        let c = canonicalize(m).unwrap();
        let d = dense(m);
        let e = diff_norm(d.as_ref(), dense(&c).as_ref()) / linalg::frob2(d.as_ref()).sqrt();
        let gb = linalg::mul(c.b.transpose(), c.b.as_ref());
        let ga = linalg::mul(c.a.as_ref(), c.a.transpose());
        let sv = linalg::thin_svd(d.as_ref()).unwrap();
        let diag = Mat::from_fn(4, 4, |i, j| if i == j { sv.s[i] } else { 0.0 });
        let bal =
            max_abs_diff(gb.as_ref(), diag.as_ref()).max(max_abs_diff(ga.as_ref(), diag.as_ref()));
        let c2 = canonicalize(&c).unwrap();
        let idem = max_abs_diff(c.a.as_ref(), c2.a.as_ref())
            .max(max_abs_diff(c.b.as_ref(), c2.b.as_ref()));
        eprintln!(
            "adapter {t}: ΔW rel diff {e:.2e}, balance defect {bal:.2e}, idempotence {idem:.2e}"
        );
        assert!(e < 1e-13 && bal < 1e-12 && idem < 1e-12);
        for k in 0..4 {
            let col = c.b.col_as_slice(k);
            let imax =
                (0..col.len()).fold(0, |b, i| if col[i].abs() > col[b].abs() { i } else { b });
            assert!(col[imax] > 0.0);
        }
    }
    // Rank above min(in, out): the extra factors are zero and ΔW is kept.
    let m = &random(82, 1, 5, 3, 4)[0];
    let c = canonicalize(m).unwrap();
    assert_eq!((c.a.shape(), c.b.shape()), ((5, 3), (4, 5)));
    assert!(
        diff_norm(dense(m).as_ref(), dense(&c).as_ref())
            < 1e-12 * linalg::frob2(dense(m).as_ref()).sqrt()
    );
}

/// Shape mismatches are errors through the try_ variants.
#[test]
fn shape_mismatches_are_errors() {
    let s = subspace(&random(91, 4, 2, 10, 8), 3);
    let wrong = &random(92, 1, 2, 11, 8)[0];
    assert!(try_project(wrong, &s).is_err());
    assert!(captured_energy(wrong, &s).is_nan());
    let c = Coefficients {
        alpha_a: Mat::zeros(2, 4),
        alpha_b: Mat::zeros(3, 2),
    };
    assert!(try_reconstruct(&c, &s).is_err());
}
