//! Exact gradients (training graphs, `graph::grad` + `serve::train`) on the committed tiny
//! BERT: checked against central finite differences of the same loss in f64, computed by an
//! independent engine (ONNX Runtime in Python, `tools/grad_fd_reference.py`), and the
//! unsupported-op error.
#![cfg(feature = "tract")]

use crate::support::fd::{fd_reference, rel, write_tensors};
use crate::support::grad::{case, gradients};
use crate::support::tinybert::{SEQ, bound_bundle, fixture, tmpdir};
use eigenlorax::finetune::ForwardModel;
use eigenlorax::finetune::data::Example;
use eigenlorax::finetune::seq::SequenceModel;
use eigenlorax::graph::grad::{Analysis, TrainingShape};
use eigenlorax::serve::train::ExactGradient;
use eigenlorax::serve::{Backend, Engine};
use std::path::Path;
use std::process::Command;

#[test]
fn tiny_bert_gradients_match_f64_finite_differences() {
    let dir = tmpdir("grad-fd");
    let (bundle, _) = bound_bundle(&dir);
    let engine =
        Engine::load(&fixture("tiny-bert/model.onnx"), &bundle, Backend::Tract).expect("engine");
    let mut g = ExactGradient::new(&engine).expect("exact gradients");
    let (on, all) = g.differentiated_nodes();
    assert!(on > 0 && on < all, "{on} of {all} nodes differentiated");
    let layout = g.layout().to_vec();
    // d = 32 for the tiny BERT; the FD below checks every coefficient and head entry.
    let probe = case(&layout, 1, 0);
    let shape = TrainingShape {
        batch: probe.batch,
        seq: SEQ,
        classes: 2,
    };
    let dim = g.training_graph(&shape).expect("graph").dim;
    let c = case(&layout, dim, 7);
    let out = gradients(&mut g, &c);
    assert!(out.loss.is_finite() && out.loss > 0.0);
    // Three micro-batches of 2 run one at a time or side by side on three threads: summed
    // in the same order, so the same gradients bit for bit.
    let micro = |threads: usize| {
        let mut e = ExactGradient::new(&engine)
            .expect("exact gradients")
            .with_micro_batch(2)
            .with_threads(threads);
        gradients(&mut e, &c)
    };
    let (one, three) = (micro(1), micro(3));
    assert_eq!(one.loss.to_bits(), three.loss.to_bits());
    assert_eq!(one.params, three.params);
    assert_eq!(one.head_weight, three.head_weight);
    assert_eq!(one.head_bias, three.head_bias);
    assert_eq!(one.pooled, three.pooled);
    assert!((one.loss - out.loss).abs() < 1e-5 * out.loss);
    // The runs take the rows sorted by length (the short rows first, cut to 8 tokens); the
    // pooled features come back in batch order, as the forward pass gives them.
    let examples = c
        .ids
        .chunks(SEQ)
        .zip(c.mask.chunks(SEQ))
        .map(|(i, m)| Example {
            input_ids: i.to_vec(),
            attention_mask: m.to_vec(),
        })
        .collect();
    let mut forward = SequenceModel::new(engine.hidden_state().expect("hidden"), examples, 0, None)
        .expect("model");
    let mut feats = Vec::new();
    let rows: Vec<usize> = (0..c.batch).collect();
    forward
        .features(&rows, &c.params, &mut feats)
        .expect("features");
    let ours: Vec<f64> = one.pooled.iter().map(|&x| f64::from(x)).collect();
    let theirs: Vec<f64> = feats.iter().map(|&x| f64::from(x)).collect();
    let e = rel(&ours, &theirs);
    assert!(e < 1e-5, "pooled features vs the forward pass: {e:.2e}");

    // The training graph (batch 6; the gradients above ran in micro-batches of 4, the
    // second padded) and its inputs, for the reference.
    let graph = g.training_graph(&shape).expect("graph").clone();
    let model = dir.join("training.onnx");
    let standalone = g.standalone_model(&shape).expect("standalone");
    std::fs::write(&model, eigenlorax::graph::onnx::encode_model(&standalone)).expect("write");
    let mut f32s: Vec<(&str, Vec<usize>, &[f32])> = Vec::new();
    let mut coeffs: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut at = 0;
    for (l, ci) in layout.iter().zip(&graph.coeff_inputs) {
        let (a, b) = c.params[at..at + l.len()].split_at(l.r * l.k_a);
        let mut a_t = vec![0f32; l.k_a * l.r];
        eigenlorax::task::write_alpha_a_t(l, a, &mut a_t);
        let mut b_t = vec![0f32; l.r * l.k_b];
        eigenlorax::task::write_alpha_b_t(l, b, &mut b_t);
        coeffs.push((ci.alpha_a.clone(), vec![1, l.k_a, l.r], a_t));
        coeffs.push((ci.alpha_b.clone(), vec![1, l.r, l.k_b], b_t));
        at += l.len();
    }
    for (n, s, v) in &coeffs {
        f32s.push((n, s.clone(), v));
    }
    f32s.push(("head_weight", vec![2, dim], &c.head_w));
    f32s.push(("head_bias", vec![2], &c.head_b));
    f32s.push(("targets", vec![c.batch, 2], &c.targets));
    f32s.push(("example_weights", vec![c.batch], &c.weights));
    let i64s = [
        ("input_ids", vec![c.batch, SEQ], c.ids.as_slice()),
        ("attention_mask", vec![c.batch, SEQ], c.mask.as_slice()),
    ];
    let inputs = dir.join("inputs.safetensors");
    write_tensors(&inputs, &f32s, &i64s);
    let reference = fd_reference(&model, &inputs, &dir.join("fd.safetensors"));
    let loss_ref = reference["loss"][0];
    assert!(
        ((out.loss - loss_ref) / loss_ref).abs() < 1e-5,
        "loss {} vs f64 {loss_ref}",
        out.loss
    );
    // Per coefficient tensor, in the graph's orientation.
    let grads = {
        // Re-run to get the graph-oriented gradients: transpose back from the flat layout.
        let mut v = Vec::new();
        let mut at = 0;
        for (l, ci) in layout.iter().zip(&graph.coeff_inputs) {
            let (a, b) = out.params[at..at + l.len()].split_at(l.r * l.k_a);
            let mut a_t = vec![0f32; l.k_a * l.r];
            eigenlorax::task::write_alpha_a_t(l, a, &mut a_t);
            let mut b_t = vec![0f32; l.r * l.k_b];
            eigenlorax::task::write_alpha_b_t(l, b, &mut b_t);
            v.push((ci.alpha_a.clone(), a_t));
            v.push((ci.alpha_b.clone(), b_t));
            at += l.len();
        }
        v.push(("head_weight".to_string(), out.head_weight.clone()));
        v.push(("head_bias".to_string(), out.head_bias.clone()));
        v
    };
    let mut worst: f64 = 0.0;
    for (name, gv) in &grads {
        let r = reference
            .get(&format!("grad:{name}"))
            .unwrap_or_else(|| panic!("no FD gradient for {name}"));
        let ours: Vec<f64> = gv.iter().map(|&x| f64::from(x)).collect();
        let e = rel(&ours, r);
        eprintln!(
            "{name}: relative error {e:.2e} (|g| {:.3e})",
            r.iter().map(|x| x * x).sum::<f64>().sqrt()
        );
        assert!(
            e <= 1e-4,
            "{name}: relative error {e:.2e} against f64 central differences"
        );
        worst = worst.max(e);
    }
    eprintln!(
        "worst relative error {worst:.2e} over {} tensors",
        grads.len()
    );
}

#[test]
fn an_op_without_a_rule_is_named_with_its_node() {
    let dir = tmpdir("grad-unsupported");
    let (bundle, _) = bound_bundle(&dir);
    let mut patched =
        eigenlorax::graph::patch_file(&fixture("tiny-bert/model.onnx"), &bundle, 1).expect("patch");
    // Make every Erf (the GELU of the FFN, on the path) an op without a rule.
    let g = patched.proto.graph.as_mut().expect("graph");
    let mut renamed = Vec::new();
    for n in g.node.iter_mut().filter(|n| n.op_type == "Erf") {
        n.op_type = "Sinh".into();
        renamed.push(n.name.clone());
    }
    assert!(!renamed.is_empty());
    let e = match Analysis::new(patched, "last_hidden_state", "attention_mask") {
        Ok(_) => panic!("a graph with Sinh on the path was accepted"),
        Err(e) => e,
    };
    assert!(matches!(e, eigenlorax::Error::Unsupported(_)), "{e:?}");
    let msg = e.to_string();
    for n in &renamed {
        assert!(msg.contains(&format!("Sinh (`{n}`)")), "{msg}");
    }
    assert!(msg.contains(&format!("{} node(s)", renamed.len())), "{msg}");
}

/// `elx finetune` on a model whose graph has an op without a gradient rule warns, names the
/// nodes and trains with SPSA; on the fixture itself it trains with exact gradients.
#[test]
fn finetune_falls_back_to_spsa_on_an_op_without_a_rule() {
    use crate::support::tinybert::{rows, write_jsonl};
    use eigenlorax::bundle::Bundle;
    let dir = tmpdir("grad-fallback");
    let (bundle, _) = bound_bundle(&dir);
    // The fixture with its GELU's Erf replaced by Sinh (tract runs it; no gradient rule).
    let (mut proto, _) =
        eigenlorax::graph::read_model(&fixture("tiny-bert/model.onnx")).expect("model");
    let g = proto.graph.as_mut().expect("graph");
    for n in g.node.iter_mut().filter(|n| n.op_type == "Erf") {
        n.op_type = "Sinh".into();
    }
    let model = dir.join("sinh.onnx");
    std::fs::write(&model, eigenlorax::graph::onnx::encode_model(&proto)).expect("write");
    let binding = eigenlorax::graph::bind_file(&model, &bundle, None).expect("bind");
    let bound = dir.join("sinh.elxb");
    bundle
        .with_binding(Some(&binding), &bound)
        .expect("bind bundle");
    Bundle::read(&bound).expect("bound bundle");
    let (train_rows, train_labels) = rows(5, "train");
    let train = dir.join("train.jsonl");
    write_jsonl(&train, &train_rows[..32], &train_labels[..32]);
    let run = |model: &Path, bundle: &Path, out: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_elx"))
            .args(["finetune", "--model"])
            .arg(model)
            .arg("--bundle")
            .arg(bundle)
            .arg("--train")
            .arg(&train)
            .arg("-o")
            .arg(dir.join(out))
            .args(["--steps", "4", "--eval-every", "2"])
            .output()
            .expect("elx");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (out, err) = run(&model, &bound, "spsa.elxc");
    assert!(
        err.contains("warning: cannot build a training graph: no gradient rule for 2 node(s)")
            && err.contains("Sinh (`")
            && err.contains("training with SPSA"),
        "{err}"
    );
    assert!(out.contains("4 steps, SPSA ("), "{out}");
    let (out, err) = run(
        &fixture("tiny-bert/model.onnx"),
        &dir.join("bound.elxb"),
        "exact.elxc",
    );
    assert!(!err.contains("warning"), "{err}");
    assert!(
        out.contains("4 steps, exact gradients (4 engine runs"),
        "{out}"
    );
}

/// On all-MiniLM-L6-v2 (imported with `elx import-hf`), a bundle of the six MiniLM adapters
/// (K = 8 per side): the training graph's loss and gradients equal PyTorch autograd in f64
/// (`tools/workload/backprop_reference.py --grad-check`, committed as
/// models/minilm/reference/grad_check.safetensors with its inputs) to 1e-4 per module.
#[test]
fn minilm_gradients_match_pytorch_autograd() {
    use crate::support::minilm::{minilm_dir, repo};
    use eigenlorax::adapter::Adapter;
    use eigenlorax::bundle::{Bundle, StorageDtype};
    use eigenlorax::subspace::{ExtractOptions, KRule, extract};
    let Some(pkg) = minilm_dir("minilm_gradients_match_pytorch_autograd") else {
        return;
    };
    let dir = tmpdir("grad-minilm");
    let base = dir.join("base.onnx");
    eigenlorax::graph::import_hf_file(&pkg, &base).expect("import-hf");
    let names = [
        "convention2012",
        "debate2016",
        "language_id",
        "name_gender",
        "sentiment",
        "subjectivity",
    ];
    let adapters: Vec<Adapter> = names
        .iter()
        .map(|n| Adapter::open(&repo().join("models/minilm/adapters").join(n)).expect("adapter"))
        .collect();
    let options = ExtractOptions {
        k_rule_a: KRule::Fixed(8),
        k_rule_b: KRule::Fixed(8),
        ..Default::default()
    };
    let sub = extract(&adapters, &options, &|_, _, _| {}).expect("extract");
    let unbound = dir.join("unbound.elxb");
    Bundle::write(&unbound, &sub, &[], StorageDtype::F32, None).expect("write");
    let bundle = Bundle::read(&unbound).expect("read");
    let binding = eigenlorax::graph::bind_file(&base, &bundle, None).expect("bind");
    let bound = dir.join("bound.elxb");
    bundle
        .with_binding(Some(&binding), &bound)
        .expect("bind bundle");
    let bundle = Bundle::read(&bound).expect("bound");

    let bytes = std::fs::read(repo().join("models/minilm/reference/grad_check.safetensors"))
        .expect("reference");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("metadata");
    let recorded = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("subspace_id").cloned())
        .unwrap_or_default();
    // Bases equal to rounding give gradients equal far below the tolerance; say if they differ.
    if recorded != bundle.manifest.subspace_id {
        eprintln!(
            "note: the reference was made on subspace {recorded}, this extraction is {}",
            bundle.manifest.subspace_id
        );
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let f32s = |n: &str| -> Vec<f32> {
        st.tensor(n)
            .unwrap_or_else(|_| panic!("{n}"))
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect()
    };
    let f64s = |n: &str| -> Vec<f64> {
        st.tensor(n)
            .unwrap_or_else(|_| panic!("{n}"))
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
            .collect()
    };
    let i64s = |n: &str| -> (Vec<i64>, Vec<usize>) {
        let t = st.tensor(n).unwrap_or_else(|_| panic!("{n}"));
        (
            t.data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                .collect(),
            t.shape().to_vec(),
        )
    };
    let (ids, shape) = i64s("input_ids");
    let (mask, _) = i64s("attention_mask");
    let (labels, _) = i64s("labels");
    let (n, seq) = (shape[0], shape[1]);
    let engine = Engine::load(&base, &bundle, Backend::Tract).expect("engine");
    let mut g = ExactGradient::new(&engine).expect("exact gradients");
    let layout = g.layout().to_vec();
    let mut params = Vec::new();
    for l in &layout {
        let a = f32s(&format!("{}.alpha_A", l.name));
        let b = f32s(&format!("{}.alpha_B", l.name));
        assert_eq!((a.len(), b.len()), (l.r * l.k_a, l.k_b * l.r), "{}", l.name);
        params.extend(a);
        params.extend(b);
    }
    let (hw, hb) = (f32s("head.weight"), f32s("head.bias"));
    let classes = hb.len();
    let mut targets = vec![0f32; n * classes];
    for (i, &y) in labels.iter().enumerate() {
        targets[i * classes + y as usize] = 1.0;
    }
    let weights = vec![1.0 / n as f32; n];
    let mut out = eigenlorax::serve::train::Gradients::default();
    g.loss_grad(
        &ids, &mask, n, seq, &params, &hw, &hb, &targets, &weights, &mut out,
    )
    .expect("loss_grad");
    let loss_ref = f64s("loss")[0];
    eprintln!("loss {} vs PyTorch f64 {loss_ref}", out.loss);
    assert!(((out.loss - loss_ref) / loss_ref).abs() < 1e-5);
    let mut at = 0;
    let mut worst: f64 = 0.0;
    for l in &layout {
        let mut reference = f64s(&format!("grad:{}.alpha_A", l.name));
        reference.extend(f64s(&format!("grad:{}.alpha_B", l.name)));
        let ours: Vec<f64> = out.params[at..at + l.len()]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let e = rel(&ours, &reference);
        eprintln!("{}: relative error {e:.2e}", l.name);
        assert!(
            e <= 1e-4,
            "{}: relative error {e:.2e} against PyTorch",
            l.name
        );
        worst = worst.max(e);
        at += l.len();
    }
    for (name, ours) in [
        ("head.weight", &out.head_weight),
        ("head.bias", &out.head_bias),
    ] {
        let ours: Vec<f64> = ours.iter().map(|&v| f64::from(v)).collect();
        let e = rel(&ours, &f64s(&format!("grad:{name}")));
        eprintln!("{name}: relative error {e:.2e}");
        assert!(e <= 1e-4, "{name}: relative error {e:.2e} against PyTorch");
    }
    eprintln!("worst module relative error {worst:.2e}");
    // The imported MiniLM is 89 MB: a run must not leave it behind (kept on failure).
    let _ = std::fs::remove_dir_all(&dir);
}
