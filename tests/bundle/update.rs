//! Incremental update (issue 31): a subspace grown from the statistics of an earlier
//! extraction plus new adapters equals the extraction over all adapters from scratch (same K
//! under the same rule, principal angles ≤ 1e-6, same spectra and totals), on modules whose
//! sides stay stacked columns, cross over to the Gram, or hold the Gram from the start, and
//! on a module only the new adapters have.

use crate::support::bundle::temp_dir;
use crate::support::lora_pool;
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::stats::{BundleSink, StatsFile, path_beside};
use eigenlorax::bundle::{Bundle, BundleWriter, SourceAdapter, StatsWriter, StorageDtype};
use eigenlorax::linalg::max_principal_angle;
use eigenlorax::subspace::{
    self, ExtractOptions, KRule, ModuleSelection, ModuleSink, ModuleSubspace, Route,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// (name, in, out): with 5 old adapters of rank 2 (n = 10) and 3 new ones (n = 16).
const MODULES: [(&str, usize, usize); 3] = [
    ("m.columns", 48, 40), // both sides stay columns (16 <= 40)
    ("m.cross", 16, 14),   // B crosses to the Gram (16 > 14), A stays at n = d = 16
    ("m.gram", 8, 6),      // the Gram from the start (10 > 8)
];
/// The new adapters also have this module.
const NEW_MODULE: (&str, usize, usize) = ("m.new", 12, 20);

struct Collect(Mutex<BTreeMap<String, ModuleSubspace>>);

impl ModuleSink for Collect {
    fn module(&self, name: &str, m: ModuleSubspace) -> eigenlorax::Result<()> {
        self.0.lock().unwrap().insert(name.to_string(), m);
        Ok(())
    }
}

fn open(paths: &[std::path::PathBuf]) -> Vec<Adapter> {
    paths.iter().map(|p| Adapter::open(p).unwrap()).collect()
}

/// Old bundle + statistics from `old`, returns (bundle path, manifest).
fn extract_old(dir: &Path, old: &[Adapter], options: &ExtractOptions) -> std::path::PathBuf {
    let out = dir.join("old.elxb");
    let sink = BundleSink::new(
        BundleWriter::create(&out, StorageDtype::F32).unwrap(),
        Some(StatsWriter::create(&path_beside(&out)).unwrap()),
    );
    subspace::extract_each(
        old,
        None,
        options,
        &|_, _, _| {},
        Route::Auto,
        2,
        &ModuleSelection::default(),
        &sink,
    )
    .unwrap();
    let sources: Vec<SourceAdapter> = old.iter().map(SourceAdapter::from).collect();
    sink.finish(options, &sources, None).unwrap();
    out
}

fn check_update(tag: &str, options: ExtractOptions) {
    let dir = temp_dir(tag);
    let old_paths = lora_pool::write(&dir.join("pool"), &MODULES, 11, 0, 5, 2);
    let mut with_new = MODULES.to_vec();
    with_new.push(NEW_MODULE);
    let new_paths = lora_pool::write(&dir.join("pool"), &with_new, 11, 5, 3, 2);
    let (old, new) = (open(&old_paths), open(&new_paths));

    let old_bundle = extract_old(&dir, &old, &options);
    let manifest = Bundle::read_manifest(&old_bundle).unwrap();
    let stats = StatsFile::open(&path_beside(&old_bundle)).unwrap();
    stats.check_for(&manifest).unwrap();
    // Cost as documented: 8 bytes x (d + d·n) per side while n <= d, else 8 x (d + d(d+1)/2).
    let want_bytes: usize = MODULES
        .iter()
        .map(|&(_, i, o)| {
            [i, o]
                .iter()
                .map(|&d| 8 * (d + if 10 <= d { d * 10 } else { d * (d + 1) / 2 }))
                .sum::<usize>()
        })
        .sum();
    assert_eq!(stats.stored_bytes(), want_bytes);

    let grown = Collect(Mutex::new(BTreeMap::new()));
    subspace::extract_each(
        &new,
        Some(&stats),
        &options,
        &|_, _, _| {},
        Route::Auto,
        2,
        &ModuleSelection::default(),
        &grown,
    )
    .unwrap();
    let grown = grown.0.into_inner().unwrap();

    let all: Vec<Adapter> = open(
        &old_paths
            .iter()
            .chain(&new_paths)
            .cloned()
            .collect::<Vec<_>>(),
    );
    let scratch = subspace::extract(&all, &options, &|_, _, _| {}).unwrap();
    assert_eq!(
        grown.keys().collect::<Vec<_>>(),
        scratch.modules.keys().collect::<Vec<_>>()
    );
    for (name, want) in &scratch.modules {
        let got = &grown[name];
        assert_eq!(
            (got.n_adapters, got.r_max),
            (want.n_adapters, want.r_max),
            "{name}"
        );
        for (side, g, w, gb, wb) in [
            ("A", &got.a, &want.a, got.v_a.as_ref(), want.v_a.as_ref()),
            (
                "B",
                &got.b,
                &want.b,
                got.v_b.transpose(),
                want.v_b.transpose(),
            ),
        ] {
            assert_eq!(g.k_principal, w.k_principal, "{name} {side}: K");
            assert_eq!(gb.nrows(), wb.nrows(), "{name} {side}: basis size");
            assert!(w.k_principal > 0);
            let angle = max_principal_angle(gb, wb).unwrap();
            println!(
                "{name} {side}: K = {} (of {} values), max angle {angle:.1e}",
                w.k_principal,
                w.spectrum.len()
            );
            assert!(angle <= 1e-6, "{name} {side}: angle {angle:e}");
            let rel = (g.total_energy - w.total_energy).abs() / w.total_energy;
            assert!(rel <= 1e-12, "{name} {side}: total energy off by {rel:e}");
            for (x, y) in g.spectrum.iter().zip(&w.spectrum) {
                assert!((x - y).abs() <= 1e-10 * w.spectrum[0], "{name} {side}: σ");
            }
        }
    }
}

#[test]
fn update_equals_extraction_from_scratch_energy_rule() {
    check_update(
        "update-energy",
        ExtractOptions {
            k_rule_a: KRule::Energy(0.9),
            k_rule_b: KRule::Energy(0.9),
            ..ExtractOptions::default()
        },
    );
}

#[test]
fn update_equals_extraction_from_scratch_centered_fixed_k_pseudo() {
    check_update(
        "update-centered",
        ExtractOptions {
            k_rule_a: KRule::Fixed(3),
            k_rule_b: KRule::Energy(0.95),
            center: true,
            pseudo: 1,
            seed: 3,
            ..ExtractOptions::default()
        },
    );
}

/// Statistics that do not belong to the bundle, or damaged ones, are refused with the file
/// named.
#[test]
fn foreign_or_damaged_statistics_are_refused() {
    let dir = temp_dir("update-foreign");
    let paths = lora_pool::write(&dir.join("pool"), &MODULES, 12, 0, 4, 2);
    let adapters = open(&paths);
    let options = ExtractOptions::default();
    let first = extract_old(&dir, &adapters, &options);
    let stats_path = path_beside(&first);
    let other_dir = temp_dir("update-foreign-2");
    let second = extract_old(&other_dir, &adapters[..3], &options);
    let other = Bundle::read_manifest(&second).unwrap();
    let err = StatsFile::open(&stats_path)
        .unwrap()
        .check_for(&other)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("old.elxs") && err.contains(&other.subspace_id),
        "{err}"
    );
    // A bundle (not statistics) given as statistics.
    let err = StatsFile::open(&first).err().unwrap().to_string();
    assert!(err.contains("expected subspace statistics"), "{err}");
    // A flipped byte in the data: a NaN is refused when the module is loaded.
    let mut bytes = std::fs::read(&stats_path).unwrap();
    let n = bytes.len();
    bytes[n - 2] = 0xff;
    bytes[n - 1] = 0x7f;
    let bad = dir.join("bad.elxs");
    std::fs::write(&bad, &bytes).unwrap();
    let sf = StatsFile::open(&bad).unwrap();
    let res = subspace::extract_each(
        &adapters,
        Some(&sf),
        &options,
        &|_, _, _| {},
        Route::Auto,
        1,
        &ModuleSelection::default(),
        &Collect(Mutex::new(BTreeMap::new())),
    );
    let err = res.err().unwrap().to_string();
    assert!(
        err.contains("bad.elxs") && err.contains("expected finite values"),
        "{err}"
    );
}

/// Writes the seed inputs of the `stats` fuzz target (`fuzz/corpus/stats/seed-*`, each under
/// 4 KiB): statistics held as columns, as a Gram, with several modules. Run by hand:
/// `cargo test --test bundle -- --ignored write_stats_fuzz_corpus`.
#[test]
#[ignore]
fn write_stats_fuzz_corpus() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = repo.join("fuzz/corpus/stats");
    std::fs::create_dir_all(&out).unwrap();
    type Case<'a> = (&'a str, &'a [(&'a str, usize, usize)], usize);
    let cases: [Case; 3] = [
        ("columns", &[("q", 6, 5)], 2),
        ("gram", &[("q", 3, 2)], 3),
        ("modules", &[("a.q", 4, 3), ("a.v", 2, 5)], 2),
    ];
    for (tag, modules, n) in cases {
        let dir = temp_dir(&format!("stats-corpus-{tag}"));
        let paths = lora_pool::write(&dir.join("pool"), modules, 40, 0, n, 1);
        let b = extract_old(&dir, &open(&paths), &ExtractOptions::default());
        let bytes = std::fs::read(path_beside(&b)).unwrap();
        assert!(bytes.len() <= 4096, "{tag}: {} bytes", bytes.len());
        std::fs::write(out.join(format!("seed-{tag}")), bytes).unwrap();
    }
}
