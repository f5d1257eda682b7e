//! tract vs ONNX Runtime on the patched tiny-BERT fixture (attention, LayerNorm, GELU), with
//! text through a WordPiece tokenizer.json built from the fixture's vocab.txt: a bundle
//! extracted from fixture adapters task0..task4, bound to the model, and projected tasks.
#![cfg(all(feature = "ort", feature = "tract"))]

use crate::support::ort as ort_support;

use eigenlorax::bundle::Bundle;
use eigenlorax::graph::bind_file;
use eigenlorax::serve::ExecutionProvider;
use eigenlorax::serve::backend::ort::{OrtModel, OrtRuntime};
use eigenlorax::serve::backend::tract::Runtime;
use eigenlorax::serve::backend::tract::{from_tract, to_tract};
use eigenlorax::serve::input::{TextEncoder, check_inputs};
use eigenlorax::task::{Pooling, pool};
use ort_support::{max_abs, max_abs_diff, require_ort};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures")
}

fn elx(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .expect("elx runs");
    assert!(
        out.status.success(),
        "elx {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A BERT WordPiece tokenizer.json from vocab.txt, written with the tokenizers crate itself.
fn write_tokenizer(vocab: &Path, out: &Path) {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    let wp = WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(wp);
    tok.with_normalizer(Some(BertNormalizer::default()));
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), 2),
        ("[CLS]".into(), 1),
    )));
    tok.save(out, false).unwrap();
}

/// Everything the tests need on disk: model, bound bundle, two projected tasks, tokenizer.
struct Setup {
    model: PathBuf,
    bundle: Bundle,
    t5: PathBuf,
    t0: PathBuf,
    enc: TextEncoder,
}

fn setup(tag: &str) -> Setup {
    require_ort();
    let fx = fixtures();
    let dir = std::env::temp_dir().join(format!("elx-ort-tinybert-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let model = fx.join("tiny-bert/model.onnx");

    // Bundle from five adapters, bound to the model; the sixth projected as a held-out task.
    let raw = dir.join("raw.elxb");
    let mut args = vec!["extract".to_string()];
    args.extend((0..5).map(|i| s(&fx.join(format!("adapters/task{i}")))));
    args.extend(["-o".into(), s(&raw)]);
    elx(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let bundle_raw = Bundle::read(&raw).unwrap();
    let binding = bind_file(&model, &bundle_raw, None).unwrap();
    let bound = dir.join("bound.elxb");
    bundle_raw.with_binding(Some(&binding), &bound).unwrap();
    let bundle = Bundle::read(&bound).unwrap();
    let t5 = dir.join("task5.elxc");
    let t0 = dir.join("task0.elxc");
    elx(&[
        "project",
        &s(&fx.join("adapters/task5")),
        "--bundle",
        &s(&bound),
        "-o",
        &s(&t5),
    ]);
    elx(&[
        "project",
        &s(&fx.join("adapters/task0")),
        "--bundle",
        &s(&bound),
        "-o",
        &s(&t0),
    ]);

    // Text -> ids through the tokenizer (max 32 positions in this model).
    let tok = dir.join("tokenizer.json");
    write_tokenizer(&fx.join("tiny-bert/vocab.txt"), &tok);
    let enc = TextEncoder::from_file(&tok, Some(32)).unwrap();
    assert_eq!(enc.ids("w012 W044 w101").unwrap(), vec![1, 12, 44, 101, 2]);

    Setup {
        model,
        bundle,
        t5,
        t0,
        enc,
    }
}

fn texts() -> Vec<String> {
    [
        "w012 w044 w101 w007",
        "w150 w033",
        "w020 w021 w022 w023 w024 w025 w026",
    ]
    .iter()
    .map(|t| t.to_string())
    .collect()
}

/// ORT alone on the real model: zero coefficients give the unpatched model, a padded row in a
/// batch gives what it gives alone (the tokenizer's attention mask works), and a mixed batch
/// gives each row its own task.
#[test]
fn onnx_runtime_on_patched_tiny_bert() {
    let st = setup("ort");
    let ort = OrtRuntime::load(&st.model, &st.bundle, ExecutionProvider::Cpu).unwrap();
    let texts = texts();
    let batch = st.enc.encode(&texts, ort.inputs()).unwrap();
    assert_eq!(batch.tensors[0].shape, vec![3, 9]);

    // Zero coefficients (no --task): the base model, run unpatched.
    let zero = ort
        .insert_task(&eigenlorax::bundle::CoeffFile {
            subspace_id: st.bundle.manifest.subspace_id.clone(),
            task: "base".into(),
            provenance: eigenlorax::bundle::Provenance::ZeroShot,
            modules: Default::default(),
            head: None,
        })
        .unwrap();
    let base = OrtModel::from_file(&st.model, ExecutionProvider::Cpu).unwrap();
    let want = base.run(&batch.tensors).unwrap();
    let got = ort.run(&batch.tensors, zero).unwrap();
    let d_zero = max_abs_diff(&got[0].data, &want[0].data);

    // Row 1 ("w150 w033", 4 tokens) alone vs inside the padded batch: same real-token states.
    let (o5, o0) = (
        ort.load_task(&st.t5).unwrap(),
        ort.load_task(&st.t0).unwrap(),
    );
    let full = ort.run(&batch.tensors, o5).unwrap();
    let alone_batch = st.enc.encode(&texts[1..2], ort.inputs()).unwrap();
    let alone = ort.run(&alone_batch.tensors, o5).unwrap();
    let (seq, hid) = (9, 32);
    let n_real = 4;
    let d_pad = max_abs_diff(
        &full[0].data[seq * hid..seq * hid + n_real * hid],
        &alone[0].data[..n_real * hid],
    );
    let pooled_full = pool(
        &full[0].data,
        &full[0].shape,
        batch.mask.as_deref(),
        Pooling::Mean,
    )
    .unwrap();
    let pooled_alone = pool(
        &alone[0].data,
        &alone[0].shape,
        alone_batch.mask.as_deref(),
        Pooling::Mean,
    )
    .unwrap();
    let d_pool = max_abs_diff(&pooled_full[1], &pooled_alone[0]);

    // Mixed batch [t5, t0, t5] vs each task on the whole batch, row by row.
    let t0_all = ort.run(&batch.tensors, o0).unwrap();
    let mixed = ort.run_mixed(&batch.tensors, &[o5, o0, o5]).unwrap();
    let row = seq * hid;
    let d_mixed = [&full, &t0_all, &full]
        .iter()
        .enumerate()
        .map(|(r, w)| {
            max_abs_diff(
                &mixed[0].data[r * row..(r + 1) * row],
                &w[0].data[r * row..(r + 1) * row],
            )
        })
        .fold(0f32, f32::max);
    let gap = max_abs_diff(&full[0].data, &t0_all[0].data);
    let moved = max_abs_diff(&full[0].data, &want[0].data);
    println!(
        "tiny-BERT on ORT: zero coeffs vs unpatched max |diff| = {d_zero:e}; padded row vs alone = {d_pad:e} (mean-pooled {d_pool:e}); mixed vs per-task = {d_mixed:e}; task5 moves states by {moved}, task5 vs task0 gap {gap}"
    );
    assert!(
        d_zero <= 1e-5,
        "zero coefficients changed the model by {d_zero}"
    );
    assert!(
        d_pad <= 1e-4 && d_pool <= 1e-4,
        "padding changed a row: {d_pad} / {d_pool}"
    );
    assert!(d_mixed <= 1e-4, "mixed batch differs by {d_mixed}");
    assert!(
        moved > 1e-3 && gap > 1e-3,
        "tasks must change the output (moved {moved}, gap {gap})"
    );
}

/// tract and ONNX Runtime on the same patched tiny-BERT graph, single task and mixed batch.
#[test]
#[ignore = "tract cannot yet plan the patched tiny-BERT (Flatten: square of symbols); runtime backend issue"]
fn tract_and_onnx_runtime_agree_on_patched_tiny_bert() {
    let st = setup("tract");
    let (model, bundle, t5, t0, enc) = (&st.model, &st.bundle, &st.t5, &st.t0, &st.enc);
    let ort = OrtRuntime::load(model, bundle, ExecutionProvider::Cpu).unwrap();
    let tr = Runtime::load(model, bundle).unwrap();
    let texts = texts();
    let batch = enc.encode(&texts, ort.inputs()).unwrap();
    assert_eq!(batch.tensors[0].shape, vec![3, 9]);
    let tx = to_tract(&check_inputs(ort.inputs(), &batch.tensors).unwrap()).unwrap();
    let names = ort.output_names().to_vec();

    let (o5, o0) = (ort.load_task(t5).unwrap(), ort.load_task(t0).unwrap());
    let (r5, r0) = (tr.load_task(t5).unwrap(), tr.load_task(t0).unwrap());
    let mut worst = 0f32;
    let mut worst_pooled = 0f32;
    for (o, r) in [(o5, r5), (o0, r0)] {
        let a = ort.run(&batch.tensors, o).unwrap();
        let b = from_tract(&names, &tr.run(&tx, r).unwrap()).unwrap();
        assert_eq!(a[0].shape, vec![3, 9, 32]);
        assert_eq!(a[0].shape, b[0].shape);
        worst = worst.max(max_abs_diff(&a[0].data, &b[0].data));
        let pa = pool(
            &a[0].data,
            &a[0].shape,
            batch.mask.as_deref(),
            Pooling::Mean,
        )
        .unwrap();
        let pb = pool(
            &b[0].data,
            &b[0].shape,
            batch.mask.as_deref(),
            Pooling::Mean,
        )
        .unwrap();
        for (x, y) in pa.iter().zip(&pb) {
            worst_pooled = worst_pooled.max(max_abs_diff(x, y));
        }
    }
    let mixed_o = ort.run_mixed(&batch.tensors, &[o5, o0, o5]).unwrap();
    let mixed_t = from_tract(&names, &tr.run_mixed(&tx, &[r5, r0, r5]).unwrap()).unwrap();
    let worst_mixed = max_abs_diff(&mixed_o[0].data, &mixed_t[0].data);
    // The two tasks really differ on this model (else agreement would say little).
    let a5 = ort.run(&batch.tensors, o5).unwrap();
    let a0 = ort.run(&batch.tensors, o0).unwrap();
    let task_gap = max_abs_diff(&a5[0].data, &a0[0].data);
    println!(
        "tiny-BERT tract vs ORT: hidden states max |diff| = {worst:e}, mean-pooled = {worst_pooled:e}, mixed batch = {worst_mixed:e}; max |h| = {}, task5 vs task0 gap = {task_gap}",
        max_abs(&a5[0].data)
    );
    assert!(
        task_gap > 1e-3,
        "tasks should change the hidden states (gap {task_gap})"
    );
    assert!(worst <= 1e-4, "hidden states differ by {worst}");
    assert!(worst_pooled <= 1e-4);
    assert!(worst_mixed <= 1e-4, "mixed batch differs by {worst_mixed}");
}

/// The training graph gives the same loss and gradients on both engines.
#[test]
fn tract_and_ort_exact_gradients_agree() {
    use crate::support::grad::{case, gradients};
    use crate::support::tinybert::{SEQ, bound_bundle, fixture, tmpdir};
    use eigenlorax::graph::grad::TrainingShape;
    use eigenlorax::serve::train::ExactGradient;
    use eigenlorax::serve::{Backend, Engine};
    require_ort();
    let dir = tmpdir("grad-ort");
    let (bundle, _) = bound_bundle(&dir);
    let model = fixture("tiny-bert/model.onnx");
    let mut tract =
        ExactGradient::new(&Engine::load(&model, &bundle, Backend::Tract).expect("tract"))
            .expect("tract gradients");
    let ort = Engine::load(&model, &bundle, Backend::Ort(ExecutionProvider::Cpu)).expect("ort");
    let mut ort = ExactGradient::new(&ort).expect("ort gradients");
    let probe = case(tract.layout(), 1, 0);
    let shape = TrainingShape {
        batch: probe.batch,
        seq: SEQ,
        classes: 2,
    };
    let dim = tract.training_graph(&shape).expect("graph").dim;
    let c = case(tract.layout(), dim, 3);
    let (a, b) = (gradients(&mut tract, &c), gradients(&mut ort, &c));
    let rel = |x: &[f32], y: &[f32]| {
        let n: f64 = x
            .iter()
            .zip(y)
            .map(|(p, q)| f64::from(p - q).powi(2))
            .sum::<f64>()
            .sqrt();
        let d: f64 = y.iter().map(|q| f64::from(*q).powi(2)).sum::<f64>().sqrt();
        n / d.max(1e-30)
    };
    assert!(
        (a.loss - b.loss).abs() <= 1e-5 * b.loss.abs(),
        "loss {} vs {}",
        a.loss,
        b.loss
    );
    // Per module, in the flat layout.
    let mut at = 0;
    for l in tract.layout() {
        let e = rel(&a.params[at..at + l.len()], &b.params[at..at + l.len()]);
        eprintln!("{}: tract vs ORT relative difference {e:.2e}", l.name);
        assert!(e <= 1e-5, "{}: {e:.2e}", l.name);
        at += l.len();
    }
    for (name, x, y) in [
        ("head weight", &a.head_weight, &b.head_weight),
        ("head bias", &a.head_bias, &b.head_bias),
        ("pooled", &a.pooled, &b.pooled),
    ] {
        let e = rel(x, y);
        eprintln!("{name}: tract vs ORT relative difference {e:.2e}");
        assert!(e <= 1e-5, "{name}: {e:.2e}");
    }
}
