//! The streaming bundle writer (issue 31): the same bytes, hence the same subspace id, as the
//! in-memory writer, whatever order the modules arrive in; and a streamed extraction writes
//! the bundle that extracting in memory and writing at once gives.

use crate::support::bundle::{DTYPES, sources, subspace, temp_dir};
use crate::support::lora_pool;
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::stats::BundleSink;
use eigenlorax::bundle::{Bundle, BundleWriter, SourceAdapter, StatsWriter, StorageDtype};
use eigenlorax::subspace::{self, ExtractOptions, KRule, ModuleSelection, Route};

#[test]
fn streamed_bundle_has_the_in_memory_writers_bytes() {
    let dir = temp_dir("stream-bytes");
    let sub = subspace(3);
    for dtype in DTYPES {
        let one_shot = dir.join(format!("one-{}.elxb", dtype.name()));
        let streamed = dir.join(format!("streamed-{}.elxb", dtype.name()));
        let want = Bundle::write(&one_shot, &sub, &sources(), dtype, None).unwrap();
        let mut w = BundleWriter::create(&streamed, dtype).unwrap();
        // Reverse name order: the writer lays them out as the one-shot writer does.
        for (name, m) in sub.modules.iter().rev() {
            w.add(name, m).unwrap();
        }
        assert!(!streamed.exists(), "nothing at the path before finish");
        let got = w.finish(&sub.options, &sources(), None).unwrap();
        assert_eq!(got.subspace_id, want.subspace_id, "{}", dtype.name());
        assert_eq!(
            std::fs::read(&streamed).unwrap(),
            std::fs::read(&one_shot).unwrap(),
            "{}: streamed bytes differ",
            dtype.name()
        );
        Bundle::read(&streamed).unwrap();
        // The spool file is gone.
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".spool"))
            .collect();
        assert!(left.is_empty(), "spool files left: {left:?}");
    }
}

#[test]
fn a_writer_dropped_unfinished_leaves_nothing() {
    let dir = temp_dir("stream-drop");
    let sub = subspace(4);
    let out = dir.join("never.elxb");
    let mut w = BundleWriter::create(&out, StorageDtype::F32).unwrap();
    let (name, m) = sub.modules.iter().next().unwrap();
    w.add(name, m).unwrap();
    let err = w.add(name, m).unwrap_err().to_string();
    assert!(err.contains("written twice"), "{err}");
    drop(w);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

const MODULES: [(&str, usize, usize); 3] = [
    ("layers.0.q_proj", 24, 40),
    ("layers.0.v_proj", 24, 12),
    ("layers.1.q_proj", 10, 10),
];

/// `elx extract`'s path (every module streamed to the writer, statistics beside) writes the
/// bytes of extracting in memory and writing at once, on both threads counts.
#[test]
fn streamed_extraction_writes_the_one_shot_bundle() {
    let dir = temp_dir("stream-extract");
    let paths = lora_pool::write(&dir.join("pool"), &MODULES, 5, 0, 6, 2);
    let adapters: Vec<Adapter> = paths.iter().map(|p| Adapter::open(p).unwrap()).collect();
    let sources: Vec<SourceAdapter> = adapters.iter().map(SourceAdapter::from).collect();
    let options = ExtractOptions {
        k_rule_a: KRule::Energy(0.8),
        k_rule_b: KRule::Fixed(3),
        ..ExtractOptions::default()
    };
    let one_shot = dir.join("one.elxb");
    let sub = subspace::extract(&adapters, &options, &|_, _, _| {}).unwrap();
    let want = Bundle::write(&one_shot, &sub, &sources, StorageDtype::F16, None).unwrap();
    for threads in [1, 2] {
        let streamed = dir.join(format!("streamed-{threads}.elxb"));
        let stats = (threads == 2).then(|| StatsWriter::create(&dir.join("s.elxs")).unwrap());
        let sink = BundleSink::new(
            BundleWriter::create(&streamed, StorageDtype::F16).unwrap(),
            stats,
        );
        subspace::extract_each(
            &adapters,
            None,
            &options,
            &|_, _, _| {},
            Route::Auto,
            threads,
            &ModuleSelection::default(),
            &sink,
        )
        .unwrap();
        let got = sink.finish(&options, &sources, None).unwrap();
        assert_eq!(got.subspace_id, want.subspace_id);
        assert_eq!(
            std::fs::read(&streamed).unwrap(),
            std::fs::read(&one_shot).unwrap()
        );
    }
    assert!(dir.join("s.elxs").exists());
}
