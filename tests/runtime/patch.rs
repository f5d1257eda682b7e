//! The patched graph's structure (backend-independent) and the task store's concurrency.

use crate::support::runtime as runtime_support;

use eigenlorax::bundle::CoeffFile;
use eigenlorax::graph::onnx::{Dim, value_info_dims};
use eigenlorax::graph::patch;
use eigenlorax::serve::TaskStore;
use runtime_support::*;
use std::collections::HashSet;
use std::sync::Arc;

fn bound_bundle(tag: &str) -> (eigenlorax::graph::ModelProto, eigenlorax::bundle::Bundle) {
    let dir = temp_dir(tag);
    let m = model(&Weights::random(1));
    let path = write_model(&dir, "base.onnx", &m);
    let mut b = bundle(2, "sub-a");
    bind_bundle(&mut b, &path);
    (m, b)
}

#[test]
fn patched_graph_is_sorted_and_declares_coefficient_inputs() {
    let (m, b) = bound_bundle("structure");
    for tasks in [1usize, 3] {
        let p = patch(&m, &b, tasks).expect("patch");
        let g = p.proto.graph.as_ref().expect("graph");
        assert_eq!(p.coeff_inputs.len(), 4);
        assert_eq!(p.base_inputs, ["x"]);
        let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        for ci in &p.coeff_inputs {
            assert_eq!((ci.k_a, ci.k_b, ci.r), (K_A, K_B, R_MAX));
            // Plain inputs (no initializer default, which tract would fold into a constant).
            assert!(!inits.contains(ci.alpha_a.as_str()) && !inits.contains(ci.alpha_b.as_str()));
            let decl = |n: &str| {
                let v = g
                    .input
                    .iter()
                    .find(|v| v.name == n)
                    .expect("declared input");
                value_info_dims(v).expect("dims")
            };
            assert_eq!(
                decl(&ci.alpha_a),
                [Dim::Fixed(tasks), Dim::Fixed(K_A), Dim::Fixed(R_MAX)]
            );
            assert_eq!(
                decl(&ci.alpha_b),
                [Dim::Fixed(tasks), Dim::Fixed(R_MAX), Dim::Fixed(K_B)]
            );
        }
        // Topologically sorted: every input is defined before its use.
        let mut defined: HashSet<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
        defined.extend(inits.iter().copied());
        for n in &g.node {
            for i in &n.input {
                assert!(
                    defined.contains(i.as_str()),
                    "node {} reads {} before it is defined",
                    n.name,
                    i
                );
            }
            defined.extend(n.output.iter().map(|o| o.as_str()));
        }
        // Every bound output is now produced by the correction's Add, and its base value is
        // read only by that Add.
        for (mname, mb) in &b.manifest.binding.as_ref().expect("binding").modules {
            let producer = g
                .node
                .iter()
                .find(|n| n.output.contains(&mb.output))
                .expect("producer");
            assert_eq!(producer.op_type, "Add", "{mname}");
            assert_eq!(producer.name, format!("eigenlorax/{mname}/add"));
            let base = format!("{}.eigenlorax_base", mb.output);
            let readers: Vec<&str> = g
                .node
                .iter()
                .filter(|n| n.input.contains(&base))
                .map(|n| n.name.as_str())
                .collect();
            assert_eq!(readers, [producer.name.as_str()]);
        }
        // A mixed batch fixes the symbolic batch axis of inputs and outputs.
        let x = value_info_dims(&g.input[0]).expect("x dims");
        let logits = value_info_dims(&g.output[0]).expect("logits dims");
        if tasks == 1 {
            assert_eq!(x[0], Dim::Param("batch".into()));
        } else {
            assert_eq!(x[0], Dim::Fixed(3));
            assert_eq!(logits[0], Dim::Fixed(3));
            assert_eq!(
                x[1],
                Dim::Param("seq".into()),
                "only the batch axis is fixed"
            );
        }
    }
    // Patching an already patched model is refused (its names are taken).
    let p = patch(&m, &b, 1).expect("patch");
    let err = patch(&p.proto, &b, 1).expect_err("twice").to_string();
    println!("{err}");
    assert!(err.contains("the patch adds it"), "{err}");
}

/// Replacing a task while other threads read it never yields a mix of old and new values.
#[test]
fn replacing_a_task_while_reading_never_tears() {
    let (m, b) = bound_bundle("tear");
    let p = patch(&m, &b, 1).expect("patch");
    let store = Arc::new(TaskStore::new(&b.manifest, &p.coeff_inputs));
    let constant = |v: f64| -> CoeffFile {
        let mut c = coeffs(1, "sub-a", "t", R_MAX, 0.0);
        for co in c.modules.values_mut() {
            co.alpha_a.fill(v);
            co.alpha_b.fill(v);
        }
        c
    };
    let (one, two) = (constant(1.0), constant(2.0));
    let id = store.insert(&one).expect("insert");
    let checks = std::thread::scope(|s| {
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let store = Arc::clone(&store);
                s.spawn(move || {
                    let mut n = 0usize;
                    for _ in 0..400 {
                        let t = store.get(id).expect("get");
                        let first = t.values[0];
                        assert!(first == 1.0 || first == 2.0);
                        assert!(
                            t.values.iter().all(|&v| v == first),
                            "torn task: mixed values"
                        );
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for i in 0..200 {
            store
                .replace(id, if i % 2 == 0 { &two } else { &one })
                .expect("replace");
        }
        readers
            .into_iter()
            .map(|h| h.join().expect("reader"))
            .sum::<usize>()
    });
    assert_eq!(checks, 1200);
    assert_eq!(store.len(), 1);
}
