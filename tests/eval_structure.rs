//! The verdict that sees structure (issue 28): a synthetic pool of 30 unrelated adapters plus
//! a cluster of 8 siblings (seeded, small shapes). The pairwise captures find the cluster and
//! only it, the verdict names it and says "no gain" for the rest, and the distribution's
//! figures are checked against an independent computation.

use eigenlorax::adapter::LoraModule;
use eigenlorax::bundle::random_control::random_orthonormal;
use eigenlorax::eval::capture_vs_chance::{
    self, Distribution, Gain, HeldOut, Pool, pairwise_capture, structure,
};
use eigenlorax::subspace::{ExtractOptions, KRule};
use eigenlorax::util::GaussianRng;
use faer::Mat;
use std::collections::BTreeMap;
use std::path::PathBuf;

const DIM: usize = 48;
const R: usize = 2;

fn gaussian(rows: usize, cols: usize, rng: &mut GaussianRng) -> Mat<f64> {
    Mat::from_fn(rows, cols, |_, _| rng.next_normal())
}

fn mul(a: &Mat<f64>, b: &Mat<f64>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), b.ncols(), |i, j| {
        (0..a.ncols()).map(|k| a[(i, k)] * b[(k, j)]).sum()
    })
}

/// `unrelated` adapters with their own random rank-R spans, then `siblings` whose spans are
/// one shared rank-R span plus 5% noise (one module of DIM x DIM each).
fn pool(unrelated: usize, siblings: usize, seed: u64) -> Pool {
    let mut rng = GaussianRng::new(seed);
    let shared_a = random_orthonormal(DIM, R, &mut rng).transpose().to_owned();
    let shared_b = random_orthonormal(DIM, R, &mut rng);
    let mut modules = Vec::new();
    let mut names = Vec::new();
    for t in 0..unrelated + siblings {
        let sibling = t >= unrelated;
        let (va, vb) = if sibling {
            (shared_a.clone(), shared_b.clone())
        } else {
            (
                random_orthonormal(DIM, R, &mut rng).transpose().to_owned(),
                random_orthonormal(DIM, R, &mut rng),
            )
        };
        let (ca, cb) = (gaussian(R, R, &mut rng), gaussian(R, R, &mut rng));
        let (na, nb) = (gaussian(R, DIM, &mut rng), gaussian(DIM, R, &mut rng));
        let noise = if sibling { 0.05 } else { 0.0 };
        let a0 = mul(&ca, &va);
        let b0 = mul(&vb, &cb);
        let a = Mat::from_fn(R, DIM, |i, j| {
            a0[(i, j)] + noise * na[(i, j)] / (DIM as f64).sqrt()
        });
        let b = Mat::from_fn(DIM, R, |i, j| {
            b0[(i, j)] + noise * nb[(i, j)] / (DIM as f64).sqrt()
        });
        let mut m = BTreeMap::new();
        m.insert("layer.q".to_string(), LoraModule { a, b });
        modules.push(m);
        names.push(if sibling {
            format!("pool/sibling{}", t - unrelated)
        } else {
            format!("pool/unrelated{t}")
        });
    }
    Pool {
        paths: names.iter().map(PathBuf::from).collect(),
        names,
        modules,
    }
}

/// Each adapter against the subspace of all the others: the `recycled` part of
/// [`capture_vs_chance::held_out`] (the same extraction and capture), without its centered
/// mean / basis split, which triples the cost and does not enter the verdict.
fn held_out(p: &Pool) -> Vec<HeldOut> {
    (0..p.len())
        .map(|h| {
            let others: Vec<usize> = (0..p.len()).filter(|&i| i != h).collect();
            let space = p.extract(&others, &opts()).unwrap();
            HeldOut {
                name: p.names[h].clone(),
                recycled: capture_vs_chance::capture_summary(&p.modules[h], &space, 0),
                mean_only: 0.0,
                basis_only: 0.0,
                mean_plus_basis: 0.0,
                k_total: 12,
            }
        })
        .collect()
}

fn opts() -> ExtractOptions {
    ExtractOptions {
        k_rule_a: KRule::Fixed(6),
        k_rule_b: KRule::Fixed(6),
        ..ExtractOptions::default()
    }
}

#[test]
fn thirty_unrelated_and_a_cluster_of_eight_siblings() {
    let p = pool(30, 8, 28);
    let rows = held_out(&p);
    // The shortcut is the library's held-out capture (checked on the first adapter).
    let small = Pool {
        names: p.names[..4].to_vec(),
        paths: p.paths[..4].to_vec(),
        modules: p.modules[..4].to_vec(),
    };
    let lib = capture_vs_chance::held_out(&small, &opts(), 0).unwrap();
    assert_eq!(lib[0].recycled, held_out(&small)[0].recycled);
    let pair = pairwise_capture(&p).unwrap();
    // Pairwise captures: siblings share most of their span, unrelated pairs stay
    // below the 5% link (their chance is (2/48)² ≈ 0.2%).
    assert_eq!(pair.len(), 38);
    for (i, row) in pair.iter().enumerate() {
        for (j, pc) in row.iter().enumerate() {
            let Some(pc) = pc else {
                assert_eq!(i, j);
                continue;
            };
            assert!(
                (pc.chance - (2.0 / 48.0f64).powi(2)).abs() < 1e-12,
                "{pc:?}"
            );
            if i >= 30 && j >= 30 {
                assert!(pc.captured > 0.25, "{i} in {j}: {pc:?}");
            } else {
                assert!(pc.captured < 0.05, "{i} in {j}: {pc:?}");
            }
        }
    }
    let st = structure(&rows, &pair, &p.names);
    assert_eq!(st.clusters.len(), 1, "{st:#?}");
    assert_eq!(st.clusters[0].members, (30..38).collect::<Vec<_>>());
    assert_eq!(st.rest, (0..30).collect::<Vec<_>>());
    assert_eq!(st.verdict.gain, Gain::None, "{}", st.line);
    assert_eq!(st.clusters[0].verdict.gain, Gain::Expected, "{}", st.line);
    // The rest really lies outside: every unrelated adapter under the no-gain threshold, every
    // sibling above the gain threshold.
    for (i, h) in rows.iter().enumerate() {
        if i < 30 {
            assert!(
                h.recycled.captured < capture_vs_chance::NO_GAIN_CAPTURE,
                "{h:?}"
            );
        } else {
            assert!(
                h.recycled.captured >= capture_vs_chance::GAIN_CAPTURE,
                "{h:?}"
            );
        }
    }
    let line = &st.line;
    eprintln!("verdict: {line}");
    assert!(
        line.starts_with(
            "new tasks: no gain expected for 30 of 38 held-out adapters, the ones in no cluster"
        ),
        "{line}"
    );
    assert!(
        line.contains("a cluster of 8 (sibling0, sibling1, sibling2, sibling3 and 4 more) shares"),
        "{line}"
    );
    assert!(
        line.ends_with(": expected gain for tasks like those"),
        "{line}"
    );
    // The numbers in the line are the cluster's own min / max.
    let c = &st.clusters[0].distribution;
    assert!(
        line.contains(&format!(
            "shares {:.1}–{:.1}% (median {:.1}%)",
            100.0 * c.min,
            100.0 * c.max,
            100.0 * c.median
        )),
        "{line}"
    );
    // The unrelated 30 alone: no cluster, and the verdict for all of them reads "no gain".
    let pair30: Vec<Vec<_>> = pair[..30].iter().map(|r| r[..30].to_vec()).collect();
    let alone = structure(&rows[..30], &pair30, &p.names[..30]);
    assert!(alone.clusters.is_empty(), "{alone:#?}");
    assert_eq!(alone.verdict.gain, Gain::None);
    assert!(
        alone
            .line
            .starts_with("new tasks like these: no gain expected"),
        "{}",
        alone.line
    );
    assert!(
        alone
            .line
            .contains("(no cluster of adapters that capture each other; median"),
        "{}",
        alone.line
    );
    // The mean of all 38 would have read "partial": that is what the structure fixes.
    let mean = capture_vs_chance::HeldOutMean::of(&rows);
    assert!(
        mean.recycled.captured > capture_vs_chance::NO_GAIN_CAPTURE,
        "{mean:?}"
    );
    assert_eq!(st.all.above_gain, 8);
}

/// Rows with given captures (the rest of the fields do not enter the distribution).
fn rows_of(caps: &[f64], random: f64) -> Vec<HeldOut> {
    caps.iter()
        .enumerate()
        .map(|(i, &c)| HeldOut {
            name: format!("t{i}"),
            recycled: capture_vs_chance::CaptureSummary {
                captured: c,
                random,
                ..Default::default()
            },
            mean_only: 0.0,
            basis_only: 0.0,
            mean_plus_basis: 0.0,
            k_total: 0,
        })
        .collect()
}

#[test]
fn the_distribution_matches_numpy_quantiles() {
    // numpy.quantile([0.05, 0.01, 0.4, 0.2, 0.33, 0.02, 0.6], [0.25, 0.5, 0.75]) (linear):
    // sorted 0.01 0.02 0.05 0.2 0.33 0.4 0.6 -> 0.035, 0.2, 0.365.
    let rows = rows_of(&[0.05, 0.01, 0.4, 0.2, 0.33, 0.02, 0.6], 0.01);
    let d = Distribution::of(&rows, None);
    assert!((d.q1 - 0.035).abs() < 1e-12, "{d:?}");
    assert!((d.median - 0.2).abs() < 1e-12, "{d:?}");
    assert!((d.q3 - 0.365).abs() < 1e-12, "{d:?}");
    assert_eq!((d.min, d.max, d.n, d.above_gain), (0.01, 0.6, 7, 3));
    let some = Distribution::of(&rows, Some(&[0, 1]));
    assert!((some.median - 0.03).abs() < 1e-12, "{some:?}");
}

#[test]
fn zero_against_zero_is_not_far_above_random() {
    let v = capture_vs_chance::verdict(0.0, 0.0);
    assert_eq!(v.gain, Gain::None);
    assert!(!v.line.contains("far above"), "{}", v.line);
    assert!(
        v.line.contains("0.0% of their ΔW inside the subspace, no more than a random subspace of the same size (0.00%)"),
        "{}",
        v.line
    );
    // A capture over an exactly zero random control is still "far above" it.
    let v = capture_vs_chance::verdict(0.4, 0.0);
    assert!(v.line.contains("far above a random subspace"), "{}", v.line);
    assert_eq!(v.gain, Gain::Expected);
}
