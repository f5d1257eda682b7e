//! `Engine::session` on the tiny BERT (issue 25): a request handle runs exactly what
//! `Engine::run` runs for its task, and pins the coefficients it was opened with, so a
//! `replace_task` after it opened changes later runs and sessions but not it.
#![cfg(feature = "tract")]

use crate::support::tinybert::{bound_bundle, tmpdir};
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::{Bundle, CoeffFile, Provenance};
use eigenlorax::serve::input::{Batch, InputTensor, OutputTensor, TensorData};
use eigenlorax::serve::{Backend, Engine};
use eigenlorax::subspace::project;
use std::collections::BTreeMap;

/// `adapter` projected into the bundle's subspace, as task `name`.
fn projected(bundle: &Bundle, adapter: &Adapter, name: &str) -> CoeffFile {
    let mut modules = BTreeMap::new();
    for m in adapter.module_names() {
        let lm = adapter.load_module(m).expect("module");
        modules.insert(m.to_string(), project(&lm, &bundle.subspace.modules[m]));
    }
    CoeffFile {
        subspace_id: bundle.manifest.subspace_id.clone(),
        task: name.into(),
        provenance: Provenance::Projected,
        modules,
        head: None,
    }
}

/// Two rows of eight token ids, the second padded.
fn batch() -> Batch {
    let ids: Vec<i64> = vec![1, 17, 42, 99, 5, 150, 7, 2, 1, 64, 33, 2, 0, 0, 0, 0];
    let mask: Vec<i64> = ids.iter().map(|&t| i64::from(t != 0)).collect();
    Batch {
        tensors: vec![
            InputTensor {
                name: "input_ids".into(),
                shape: vec![2, 8],
                data: TensorData::I64(ids),
            },
            InputTensor {
                name: "attention_mask".into(),
                shape: vec![2, 8],
                data: TensorData::I64(mask.clone()),
            },
        ],
        rows: 2,
        mask: Some(mask),
    }
}

fn max_abs_diff(a: &[OutputTensor], b: &[OutputTensor]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!((&x.name, &x.shape), (&y.name, &y.shape));
            x.data.iter().zip(&y.data).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// Bit-identical, not within a tolerance: `Engine::run` looks the task up in the store and
/// runs its coefficients through the same backend call (`run_task` on tract, the same plan
/// and pooled coefficient tensors) that `Session::run` makes with the coefficients it
/// pinned, on the same inputs, so nothing may differ.
#[test]
fn session_runs_match_engine_runs_and_keep_their_coefficients_after_a_replace() {
    let dir = tmpdir("rt-session");
    let (bundle, adapters) = bound_bundle(&dir);
    let engine =
        Engine::load(&crate::support::tinybert::model(), &bundle, Backend::Tract).expect("engine");
    let t0 = projected(&bundle, &adapters[0], "t");
    let t1 = CoeffFile {
        task: "t".into(),
        ..projected(&bundle, &adapters[1], "t1")
    };
    let id = engine.insert_task(&t0).expect("insert task");
    let b = batch();

    let via_engine = engine.run(&b, id).expect("engine run");
    let mut session = engine.session(id).expect("session");
    assert_eq!(session.task(), id);
    let via_session = session.run(&b).expect("session run");
    assert_eq!(
        via_session, via_engine,
        "Session::run must be bit-identical to Engine::run for the same task and inputs"
    );
    // An encoder carries nothing between calls; a second call gives the same outputs.
    assert!(session.carried().is_empty());
    assert_eq!(session.run(&b).expect("second session run"), via_engine);

    // Replace the task in the store: the open session keeps task0's coefficients...
    engine.replace_task(id, &t1).expect("replace task");
    let after_engine = engine.run(&b, id).expect("engine run after replace");
    let moved = max_abs_diff(&after_engine, &via_engine);
    assert!(
        moved > 1e-3,
        "task1's coefficients must change the outputs for this test to mean anything ({moved:e})"
    );
    assert_eq!(
        session.run(&b).expect("session run after replace"),
        via_engine,
        "an open session must keep the coefficients it was opened with"
    );
    // ...while a session opened after the replace sees task1's, as Engine::run does.
    let mut fresh = engine.session(id).expect("session after replace");
    assert_eq!(fresh.run(&b).expect("fresh session run"), after_engine);

    // The new coefficients inserted as a task of their own give the same outputs.
    let id1 = engine
        .insert_task(&CoeffFile {
            task: "t1".into(),
            ..t1.clone()
        })
        .expect("insert task1");
    assert_eq!(engine.run(&b, id1).expect("task1 run"), after_engine);

    // Unloading does not end an open session either.
    engine.unload_task(id).expect("unload");
    assert!(engine.run(&b, id).is_err(), "an unloaded id no longer runs");
    assert_eq!(session.run(&b).expect("session after unload"), via_engine);
    assert!(
        engine.session(id).is_err(),
        "no new session on an unloaded id"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
