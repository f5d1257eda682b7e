//! Bad input never reaches the engine (issue 13): token ids outside the embedding table, a
//! bound MatMul rewired to the attention mask, a string initializer. Each is a named error on
//! every entry point (engine runs, mixed runs, the finetuner's hidden-state path, bind, load),
//! where tract used to panic (exit 101) or, for negative ids, silently wrap.
#![cfg(feature = "tract")]

use crate::support::tinybert::{bound_bundle, model, tmpdir};
use eigenlorax::bundle::{Bundle, CoeffFile, Provenance};
use eigenlorax::graph::pb::ModelProto;
use eigenlorax::graph::{bind_file, onnx, read_model};
use eigenlorax::serve::hidden::{HiddenStateBackend, TokenBatch};
use eigenlorax::serve::input::{Batch, InputTensor, TensorData};
use eigenlorax::serve::{Backend, Engine};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The tiny BERT's vocabulary (config.json `vocab_size`).
const VOCAB: i64 = 200;

fn zero_task(b: &Bundle) -> CoeffFile {
    CoeffFile {
        subspace_id: b.manifest.subspace_id.clone(),
        task: "zero".into(),
        provenance: Provenance::Projected,
        modules: BTreeMap::new(),
        head: None,
    }
}

/// One row of token ids with a full attention mask.
fn batch(ids: &[i64]) -> Batch {
    let seq = ids.len();
    Batch {
        tensors: vec![
            InputTensor {
                name: "input_ids".into(),
                shape: vec![1, seq],
                data: TensorData::I64(ids.to_vec()),
            },
            InputTensor {
                name: "attention_mask".into(),
                shape: vec![1, seq],
                data: TensorData::I64(vec![1; seq]),
            },
        ],
        rows: 1,
        mask: None,
    }
}

#[test]
fn token_ids_outside_the_vocabulary_are_named_errors_on_every_entry_point() {
    let dir = tmpdir("rt-vocab");
    let (bundle, _) = bound_bundle(&dir);
    let engine = Engine::load(&model(), &bundle, Backend::Tract).expect("engine");
    let spec = engine
        .specs()
        .expect("specs")
        .iter()
        .find(|s| s.name == "input_ids")
        .expect("input_ids")
        .clone();
    let limit = spec
        .index_limit
        .expect("input_ids indexes the word embeddings");
    assert_eq!(limit.rows as i64, VOCAB, "{limit:?}");
    let task = engine.insert_task(&zero_task(&bundle)).expect("task");

    // The largest id in the vocabulary runs, with finite outputs.
    let ok = engine
        .run(&batch(&[1, 5, VOCAB - 1, 2]), task)
        .expect("ids < 200 run");
    assert!(ok[0].data.iter().all(|v| v.is_finite()));

    let mut hidden = engine.hidden_state().expect("hidden state");
    let params = vec![0f32; hidden.layout().iter().map(|l| l.len()).sum()];
    for bad in [VOCAB, 999_999, -1] {
        let ids = [1, 5, bad, 2];
        let want = format!("id {bad} at [0, 2]");
        for (path, r) in [
            ("run", engine.run(&batch(&ids), task).map(|_| ())),
            (
                "run_mixed",
                engine.run_mixed(&batch(&ids), &[task]).map(|_| ()),
            ),
            (
                "hidden",
                hidden
                    .hidden(
                        TokenBatch::new(&ids, &[1; 4], 1, 4).unwrap(),
                        &params,
                        &mut Vec::new(),
                    )
                    .map(|_| ()),
            ),
        ] {
            let e = r.expect_err(path).to_string();
            assert!(
                e.contains("`input_ids`") && e.contains(&want) && e.contains("< 200"),
                "{path}: {e}"
            );
        }
    }
}

/// The tiny BERT with `edit` applied, written to `dir/name`.
fn edited_model(dir: &Path, name: &str, edit: impl FnOnce(&mut ModelProto)) -> PathBuf {
    let (mut m, _) = read_model(&model()).expect("model");
    edit(&mut m);
    let p = dir.join(name);
    std::fs::write(&p, onnx::encode_model(&m)).expect("write model");
    p
}

#[test]
fn a_bound_matmul_rewired_to_the_attention_mask_is_refused_at_bind_and_at_load() {
    let dir = tmpdir("rt-rewired");
    let (bound, _) = bound_bundle(&dir);
    let binding = bound.manifest.binding.clone().expect("binding");
    let (module, mb) = binding.modules.iter().next().expect("a module");
    // An Unsqueeze of the attention mask (cast to f32: [batch, 1, seq]) becomes the bound
    // MatMul's activation: its last axis is the sequence, not the 32 features.
    let unsqueezed = "elx_test/mask_unsqueezed".to_string();
    let bad = edited_model(&dir, "rewired.onnx", |m| {
        let g = m.graph.as_mut().expect("graph");
        g.initializer
            .push(onnx::tensor_i64("elx_test/axes", &[1], &[1]));
        let cast = onnx::node(
            "Cast",
            "elx_test/cast",
            &["attention_mask"],
            &["elx_test/mask_f"],
            vec![onnx::attr_int("to", 1)],
        );
        let unsqueeze = onnx::node(
            "Unsqueeze",
            "elx_test/unsqueeze",
            &["elx_test/mask_f", "elx_test/axes"],
            &[unsqueezed.as_str()],
            vec![],
        );
        g.node.splice(0..0, [cast, unsqueeze]);
        let n = g.node.iter_mut().find(|n| n.name == mb.node).expect("node");
        n.input[0] = unsqueezed.clone();
    });
    let unbound = Bundle::read(&dir.join("unbound.elxb")).expect("unbound");
    let e = bind_file(&bad, &unbound, None)
        .expect_err("bind refuses")
        .to_string();
    assert!(
        e.contains("rewired.onnx")
            && e.contains(&format!("`{unsqueezed}`"))
            && e.contains("last axis"),
        "{e}"
    );

    // A bundle bound to it by hand (as an edited bundle or an older elx would be): the
    // engine refuses it at load, before tract sees it.
    let mut forced = binding.clone();
    let (_, sha) = read_model(&bad).expect("read");
    forced.base_sha256 = sha;
    forced.modules.get_mut(module).expect("module").input = unsqueezed.clone();
    let path = dir.join("forced.elxb");
    unbound
        .with_binding(Some(&forced), &path)
        .expect("write forced binding");
    let forced = Bundle::read(&path).expect("read forced");
    let e = Engine::load(&bad, &forced, Backend::Tract)
        .expect_err("load refuses")
        .to_string();
    assert!(e.contains("last axis") && e.contains(&mb.node), "{e}");
}

#[test]
fn a_string_initializer_is_refused_at_bind_and_at_load() {
    let dir = tmpdir("rt-string-init");
    let (bound, _) = bound_bundle(&dir);
    let mut victim = String::new();
    let bad = edited_model(&dir, "string.onnx", |m| {
        let g = m.graph.as_mut().expect("graph");
        // A LayerNorm scale (1-D f32, not a bound weight) retyped as strings.
        let t = g
            .initializer
            .iter_mut()
            .find(|t| t.dims.len() == 1 && t.name.contains("LayerNorm"))
            .expect("a LayerNorm initializer");
        t.data_type = 8;
        victim = t.name.clone();
    });
    let unbound = Bundle::read(&dir.join("unbound.elxb")).expect("unbound");
    let e = bind_file(&bad, &unbound, None)
        .expect_err("bind refuses")
        .to_string();
    assert!(
        e.contains("string.onnx") && e.contains(&format!("`{victim}`")) && e.contains("(string)"),
        "{e}"
    );
    let mut forced = bound.manifest.binding.clone().expect("binding");
    forced.base_sha256 = read_model(&bad).expect("read").1;
    let path = dir.join("forced.elxb");
    unbound
        .with_binding(Some(&forced), &path)
        .expect("write forced binding");
    let forced = Bundle::read(&path).expect("read forced");
    let e = Engine::load(&bad, &forced, Backend::Tract)
        .expect_err("load refuses")
        .to_string();
    assert!(
        e.contains(&format!("`{victim}`")) && e.contains("(string)"),
        "{e}"
    );
}

#[test]
fn extreme_weights_give_a_named_numeric_error_instead_of_nan_outputs() {
    let dir = tmpdir("rt-extreme");
    let (bound, _) = bound_bundle(&dir);
    // The embeddings' LayerNorm scale at 1e38: finite, but the next products overflow.
    let bad = edited_model(&dir, "extreme.onnx", |m| {
        let g = m.graph.as_mut().expect("graph");
        let t = g
            .initializer
            .iter_mut()
            .find(|t| t.name == "embeddings.LayerNorm.weight")
            .expect("LayerNorm scale");
        let n = t.dims.iter().product::<i64>() as usize;
        *t = onnx::tensor_f32(&t.name.clone(), &[n], &vec![1e38; n]);
    });
    let unbound = Bundle::read(&dir.join("unbound.elxb")).expect("unbound");
    let binding = bind_file(&bad, &unbound, None).expect("bind: the structure is unchanged");
    let path = dir.join("extreme.elxb");
    unbound.with_binding(Some(&binding), &path).expect("bind");
    let b = Bundle::read(&path).expect("read");
    let engine = Engine::load(&bad, &b, Backend::Tract).expect("engine");
    let task = engine.insert_task(&zero_task(&b)).expect("task");
    let e = engine
        .run(&batch(&[1, 5, 7, 2]), task)
        .expect_err("non-finite outputs are refused");
    assert!(matches!(e, eigenlorax::Error::Numeric(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("output `") && e.contains("(task `zero`)") && e.contains("finite"),
        "{e}"
    );
    // The same batch on the original model is finite.
    let engine = Engine::load(&model(), &bound, Backend::Tract).expect("engine");
    let task = engine.insert_task(&zero_task(&bound)).expect("task");
    engine.run(&batch(&[1, 5, 7, 2]), task).expect("finite");
}

#[test]
fn coefficients_beyond_what_f32_can_carry_are_refused_at_load() {
    use eigenlorax::task::Coefficients;
    let dir = tmpdir("rt-huge-coeffs");
    let (bound, _) = bound_bundle(&dir);
    let (m, mm) = bound.manifest.modules.iter().next().expect("module");
    let limit = Coefficients::magnitude_limit(mm.in_features, mm.r_max);
    // ‖α_A‖·‖α_B‖ = s² for one unit entry on each side.
    let with_scale = |s: f64| {
        let mut alpha_a = faer::Mat::<f64>::zeros(mm.r_max, mm.k_a);
        let mut alpha_b = faer::Mat::<f64>::zeros(mm.k_b, mm.r_max);
        alpha_a[(0, 0)] = s;
        alpha_b[(0, 0)] = s;
        let mut c = zero_task(&bound);
        c.modules
            .insert(m.clone(), Coefficients { alpha_a, alpha_b });
        c
    };
    let engine = Engine::load(&model(), &bound, Backend::Tract).expect("engine");
    // Just under the limit loads; just over it does not, in memory or from a file.
    engine
        .insert_task(&with_scale((limit * 0.99).sqrt()))
        .expect("under the limit");
    let huge = with_scale((limit * 1.01).sqrt());
    let e = engine.insert_task(&huge).expect_err("over").to_string();
    assert!(
        e.contains(&format!("{m}.alpha_A")) && e.contains("float32"),
        "{e}"
    );
    let f = dir.join("huge.elxc");
    huge.write(&f).expect("write");
    let e = engine.load_task(&f).expect_err("over").to_string();
    assert!(
        e.contains("huge.elxc") && e.contains(&format!("{m}.alpha_A")),
        "{e}"
    );
}

#[test]
fn a_bundle_whose_components_are_not_orthonormal_is_refused_at_load() {
    let dir = tmpdir("rt-big-components");
    let (bound, _) = bound_bundle(&dir);
    let mut sub = bound.subspace.clone();
    let (m, s) = sub.modules.iter_mut().next().expect("module");
    let m = m.clone();
    s.v_a[(0, 0)] = 3.0;
    let p = dir.join("big.elxb");
    Bundle::write(&p, &sub, &[], eigenlorax::bundle::StorageDtype::F32, None).expect("write");
    let e = Bundle::read(&p).expect_err("refused").to_string();
    assert!(
        e.contains("big.elxb") && e.contains(&m) && e.contains("found 3"),
        "{e}"
    );
}

/// Four threads run tasks while a fifth inserts, replaces and removes tasks in the same
/// engine: every output equals, bit for bit, the single-threaded output of one of the
/// versions its task id held (0 torn outputs), and a run of a removed task is an error saying
/// so.
#[test]
fn tasks_inserted_replaced_and_removed_while_threads_run_give_no_torn_output() {
    use eigenlorax::serve::TaskId;
    use eigenlorax::subspace::project;
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let dir = tmpdir("rt-concurrent");
    let (bound, adapters) = bound_bundle(&dir);
    // Six versions: the five adapters projected, and zero coefficients.
    let mut versions: Vec<CoeffFile> = adapters
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut c = zero_task(&bound);
            c.task = format!("task{i}");
            for m in a.module_names() {
                let lm = a.load_module(m).expect("module");
                c.modules
                    .insert(m.to_string(), project(&lm, &bound.subspace.modules[m]));
            }
            c
        })
        .collect();
    versions.push(zero_task(&bound));
    let input = batch(&[2, 17, 45, 98, 120, 3]);
    let expected: Vec<Vec<f32>> = {
        let engine = Engine::load(&model(), &bound, Backend::Tract).expect("engine");
        versions
            .iter()
            .map(|c| {
                let id = engine.insert_task(c).expect("insert");
                engine.run(&input, id).expect("run")[0].data.clone()
            })
            .collect()
    };
    for (k, e) in expected.iter().enumerate().skip(1) {
        assert_ne!(&expected[0], e, "version {k} must differ from version 0");
    }

    let engine = Engine::load(&model(), &bound, Backend::Tract).expect("engine");
    // What each id held (recorded before the change is made) and which ids were removed.
    let history: Mutex<HashMap<TaskId, Vec<usize>>> = Mutex::new(HashMap::new());
    let removed: Mutex<HashSet<TaskId>> = Mutex::new(HashSet::new());
    for (k, v) in versions.iter().enumerate().take(3) {
        let id = engine.insert_task(v).expect("insert");
        history.lock().unwrap().insert(id, vec![k]);
    }
    let done = AtomicBool::new(false);
    let (runs, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (engine, history, removed, done, expected, input) =
                (&engine, &history, &removed, &done, &expected, &input);
            let (runs, refused) = (&runs, &refused);
            s.spawn(move || {
                let mut state = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(t + 1);
                let started = std::time::Instant::now();
                // Bounded, so that a failed coordinator cannot leave the runners spinning.
                while !done.load(Ordering::Relaxed)
                    && started.elapsed() < std::time::Duration::from_secs(320)
                {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let n = history.lock().unwrap().len();
                    let id = TaskId((state >> 33) as usize % n);
                    match engine.run(input, id) {
                        Ok(out) => {
                            let held = history.lock().unwrap()[&id].clone();
                            assert!(
                                held.iter().any(|&k| expected[k] == out[0].data),
                                "task {id:?} gave an output that is none of its versions {held:?}"
                            );
                            runs.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert!(removed.lock().unwrap().contains(&id), "{id:?}: {e}");
                            assert!(e.to_string().contains("unloaded"), "{e}");
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        s.spawn(|| {
            // One change after every two runs, so that every change overlaps runs.
            let started = std::time::Instant::now();
            for i in 0..24usize {
                while runs.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed) < 2 * i {
                    // A runner that panicked stops counting: fail instead of waiting forever.
                    assert!(
                        started.elapsed() < std::time::Duration::from_secs(300),
                        "the runner threads stopped making progress"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                let k = i % versions.len();
                // Insert: the id exists once the insert returns, and its history with it.
                let mut h = history.lock().unwrap();
                let id = engine.insert_task(&versions[k]).expect("insert");
                h.insert(id, vec![k]);
                drop(h);
                let live: Vec<TaskId> = {
                    let r = removed.lock().unwrap();
                    let mut ids: Vec<TaskId> = history
                        .lock()
                        .unwrap()
                        .keys()
                        .copied()
                        .filter(|id| !r.contains(id))
                        .collect();
                    ids.sort();
                    ids
                };
                let victim = live[(i * 7) % live.len()];
                if i % 3 == 0 {
                    let k2 = (i * 5 + 1) % versions.len();
                    history
                        .lock()
                        .unwrap()
                        .get_mut(&victim)
                        .expect("held")
                        .push(k2);
                    engine.replace_task(victim, &versions[k2]).expect("replace");
                } else if i % 5 == 0 && live.len() > 2 {
                    removed.lock().unwrap().insert(victim);
                    engine.unload_task(victim).expect("unload");
                }
            }
            done.store(true, Ordering::Relaxed);
        });
    });
    let (runs, refused) = (runs.into_inner(), refused.into_inner());
    println!(
        "concurrent: {runs} runs, 0 torn, {refused} refused runs of removed tasks, {} task ids",
        history.lock().unwrap().len()
    );
    assert!(runs >= 40, "only {runs} runs overlapped the changes");
}
