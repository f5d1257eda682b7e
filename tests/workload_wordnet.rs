//! The WordNet task family (models/wordnet): the data builder's rules on a small sample, the
//! committed data against a rebuild from WordNet itself, and every committed adapter loading,
//! extracting and binding to the MiniLM graph.

#[path = "support/minilm.rs"]
mod minilm_support;

use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::Head;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const BUILDER: &str = "tools/workload/make_wordnet_family.py";
/// The twelve categories with their WordNet lexicographer file numbers.
const CATEGORIES: [(&str, u32); 12] = [
    ("act", 4),
    ("attribute", 7),
    ("cognition", 9),
    ("communication", 10),
    ("event", 11),
    ("feeling", 12),
    ("possession", 21),
    ("process", 22),
    ("quantity", 23),
    ("relation", 24),
    ("state", 26),
    ("time", 28),
];

fn repo() -> &'static Path {
    minilm_support::repo()
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("elx-wordnet-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn build(dict: &Path, out: &Path) {
    let status = Command::new("python3")
        .arg(repo().join(BUILDER))
        .arg("--dict")
        .arg(dict)
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("python3 runs");
    assert!(status.success(), "{BUILDER} failed");
}

/// (text, label) per line of a JSONL file.
fn rows(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .expect("jsonl")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            (
                v["text"].as_str().expect("text").to_string(),
                v["label"].as_u64().expect("label"),
            )
        })
        .collect()
}

fn task_names(data: &Path) -> Vec<String> {
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("summary.json")).expect("summary"))
            .expect("json");
    summary["tasks"]
        .as_object()
        .expect("tasks")
        .keys()
        .cloned()
        .collect()
}

/// A data.noun in WordNet's format: 30 synsets per category (a license header line, one
/// text shared by two categories, one text repeated inside a category).
fn sample_dict(dir: &Path) {
    let mut lines = vec!["  1 This software and database is being provided to you".to_string()];
    let mut offset = 1000u32;
    for (name, lex) in CATEGORIES {
        for i in 0..30 {
            offset += 1;
            lines.push(format!(
                "{offset:08} {lex:02} n 01 w{i} 0 000 | a {name} gloss number {i}; \"an example of {name} {i}\"  "
            ));
        }
        offset += 1;
        lines.push(format!(
            "{offset:08} {lex:02} n 01 twice 0 000 | a {name} gloss number 0; \"an example of {name} 0\"  "
        ));
        offset += 1;
        lines.push(format!(
            "{offset:08} {lex:02} n 01 shared 0 000 | a text written in two categories"
        ));
    }
    std::fs::write(dir.join("data.noun"), lines.join("\n") + "\n").expect("write sample");
}

#[test]
fn data_builder_follows_its_rules_on_a_sample() {
    let dir = temp("sample");
    sample_dict(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    build(&dir, &a);
    build(&dir, &b);
    let tasks = task_names(&a);
    assert_eq!(tasks.len(), 24);
    let mut uses: BTreeMap<String, usize> = BTreeMap::new();
    let (mut train_texts, mut test_texts) = (BTreeSet::new(), BTreeSet::new());
    for t in &tasks {
        let labels: Vec<String> = serde_json::from_str(
            &std::fs::read_to_string(a.join(t).join("labels.json")).expect("labels"),
        )
        .expect("labels json");
        assert_eq!(labels.len(), 2, "{t}");
        for l in &labels {
            *uses.entry(l.clone()).or_default() += 1;
        }
        for (split, set) in [("train", &mut train_texts), ("test", &mut test_texts)] {
            let file = a.join(t).join(format!("{split}.jsonl"));
            // Byte-identical on rerun.
            assert_eq!(
                std::fs::read(&file).expect("a"),
                std::fs::read(b.join(t).join(format!("{split}.jsonl"))).expect("b"),
                "{t}/{split} differs between two runs"
            );
            let r = rows(&file);
            assert!(!r.is_empty(), "{t}/{split}");
            let ones = r.iter().filter(|(_, l)| *l == 1).count();
            assert_eq!(2 * ones, r.len(), "{t}/{split} is not balanced");
            for (text, label) in r {
                assert!(label < 2);
                // Never the text written under two categories, and each text once.
                assert!(!text.contains("two categories"), "{text}");
                set.insert(text);
            }
        }
    }
    // Every category is in exactly four tasks.
    assert_eq!(uses.len(), 12);
    assert!(uses.values().all(|&n| n == 4), "{uses:?}");
    // One global split: no test text is a training text of any task.
    assert!(train_texts.is_disjoint(&test_texts));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The committed data is what the builder makes from WordNet 3.0 (Debian's wordnet-base;
/// tools/test.sh installs it, and under CI=true its absence fails).
#[test]
fn committed_data_rebuilds_from_wordnet() {
    let dict = Path::new("/usr/share/wordnet");
    if !dict.join("data.noun").is_file() {
        let how = "apt-get install wordnet-base (tools/test.sh does it)";
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "WordNet is missing under CI: {how}"
        );
        eprintln!("note: skipped: WordNet is not installed; {how}");
        return;
    }
    let out = temp("rebuild");
    build(dict, &out);
    let committed = repo().join("models/wordnet/data");
    let tasks = task_names(&committed);
    assert_eq!(tasks, task_names(&out));
    for t in &tasks {
        for f in ["train.jsonl", "test.jsonl", "labels.json"] {
            assert!(
                std::fs::read(out.join(t).join(f)).expect("rebuilt")
                    == std::fs::read(committed.join(t).join(f)).expect("committed"),
                "{t}/{f} differs from a rebuild"
            );
        }
    }
    assert_eq!(
        std::fs::read(out.join("summary.json")).expect("rebuilt"),
        std::fs::read(committed.join("summary.json")).expect("committed")
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// Every task has a PEFT adapter (r 8, query + value of the six layers, finite) and a head
/// whose labels are the data's, all adapters share one shape per module and differ (own
/// seeds), and a bundle of all of them binds to the imported MiniLM graph.
#[test]
fn every_family_adapter_loads_and_binds() {
    let family = repo().join("models/wordnet");
    let tasks = task_names(&family.join("data"));
    let mut paths = Vec::new();
    let mut hashes = BTreeSet::new();
    for t in &tasks {
        let dir = family.join("adapters").join(t);
        let a = Adapter::open(&dir).expect("adapter opens");
        assert_eq!(a.modules.len(), 12, "{t}");
        for name in a.modules.keys() {
            let m = a.load_module(name).expect("module loads");
            assert_eq!((m.rank(), m.in_features(), m.out_features()), (8, 384, 384));
            assert!(eigenlorax::linalg::all_finite(m.a.as_ref()), "{t}: {name}");
            assert!(eigenlorax::linalg::all_finite(m.b.as_ref()), "{t}: {name}");
            assert!(
                eigenlorax::linalg::frob2(m.b.as_ref()) > 0.0,
                "{t}: {name} is untrained"
            );
        }
        assert!(hashes.insert(a.sha256.clone()), "{t}: a duplicate adapter");
        let labels: Vec<String> = serde_json::from_str(
            &std::fs::read_to_string(family.join("data").join(t).join("labels.json"))
                .expect("labels"),
        )
        .expect("json");
        for head in ["head.safetensors", "head_only.safetensors"] {
            let h = Head::read(&dir.join(head)).expect("head reads");
            assert_eq!(h.labels, labels, "{t}/{head}");
            assert_eq!(h.weight.ncols(), 384);
        }
        paths.push(dir);
    }
    assert_eq!(paths.len(), 24);
    let Some(model_dir) = minilm_support::minilm_dir("every_family_adapter_loads_and_binds") else {
        return;
    };
    let out = temp("bind");
    let base = out.join("base.onnx");
    eigenlorax::graph::import_hf::import_hf_file(&model_dir, &base).expect("import");
    let bundle = out.join("family.elxb");
    let elx = env!("CARGO_BIN_EXE_elx");
    let run = |args: &[&std::ffi::OsStr]| {
        let o = Command::new(elx).args(args).output().expect("elx runs");
        assert!(
            o.status.success(),
            "elx {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut args: Vec<&std::ffi::OsStr> = vec!["extract".as_ref()];
    args.extend(paths.iter().map(|p| p.as_os_str()));
    args.extend(["-o".as_ref(), bundle.as_os_str()]);
    run(&args);
    let bound = out.join("family.bound.elxb");
    let printed = run(&[
        "bind".as_ref(),
        bundle.as_os_str(),
        "--base".as_ref(),
        base.as_os_str(),
        "-o".as_ref(),
        bound.as_os_str(),
    ]);
    assert!(printed.contains("bound 12 modules"), "{printed}");
    let _ = std::fs::remove_dir_all(&out);
}
