//! Unit tests of the held-out diagnostics on synthetic pools of related and unrelated
//! adapters.

use super::*;
use crate::adapter::LoraModule;
use crate::bundle::random_control::random_orthonormal;
use crate::linalg;
use crate::subspace::{ExtractOptions, KRule};
use crate::util::GaussianRng;
use faer::Mat;
use std::collections::BTreeMap;
use std::path::PathBuf;

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
