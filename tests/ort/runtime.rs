//! ONNX Runtime backend against references: base model, merged weights, per-row tasks.
//! Needs ORT_DYLIB_PATH (tools/install_onnxruntime.sh); without it every test fails.
#![cfg(feature = "ort")]

use crate::support::ort as ort_support;

use eigenlorax::serve::ExecutionProvider;
use eigenlorax::serve::backend::ort::{OrtModel, OrtRuntime, plain_inputs};
use ort_support::*;

fn runtime(ep: ExecutionProvider) -> OrtRuntime {
    require_ort();
    OrtRuntime::from_model(base_model(), &bundle(), ep)
        .expect("patched model loads in ONNX Runtime")
}

fn run_plain(
    model: &eigenlorax::graph::pb::ModelProto,
    x: &[eigenlorax::serve::input::InputTensor],
) -> Vec<f32> {
    let m =
        OrtModel::new(model, &plain_inputs(model), ExecutionProvider::Cpu).expect("model loads");
    let out = m.run(x).expect("model runs");
    assert_eq!(out.len(), 1);
    out.into_iter().next().map(|o| o.data).unwrap_or_default()
}

#[test]
fn zero_coefficients_give_the_base_model() {
    let rt = runtime(ExecutionProvider::Cpu);
    let zero = rt.insert_task(&zero_task()).unwrap();
    let x = input(4, 7);
    let patched = rt.run(&x, zero).unwrap();
    let base = run_plain(&base_model(), &x);
    assert_eq!(patched[0].shape, vec![4, SEQ, D_OUT]);
    let d = max_abs_diff(&patched[0].data, &base);
    println!(
        "zero coefficients vs base: max |diff| = {d:e} (max |y| = {})",
        max_abs(&base)
    );
    assert!(max_abs(&base) > 0.1);
    assert!(d <= 1e-6, "zero coefficients changed the output by {d}");
}

#[test]
fn patched_graph_equals_merged_weights() {
    let rt = runtime(ExecutionProvider::Cpu);
    let b = bundle();
    let x = input(3, 8);
    let base = run_plain(&base_model(), &x);
    // A full-rank task and one of lower rank than r_max (zero-padded by the store).
    for (t, name) in [
        (task("a", 21, 2, false), "rank 2"),
        (task("b", 22, 1, false), "rank 1"),
    ] {
        let id = rt.insert_task(&t).unwrap();
        let patched = rt.run(&x, id).unwrap();
        let merged = run_plain(&merged_model(&b, &t), &x);
        let d = max_abs_diff(&patched[0].data, &merged);
        let moved = max_abs_diff(&merged, &base);
        println!("{name}: patched vs merged max |diff| = {d:e}; task moves the output by {moved}");
        assert!(
            moved > 0.05,
            "the task must change the output for the check to mean anything"
        );
        assert!(d <= 1e-4, "patched and merged differ by {d}");
    }
}

#[test]
fn task_swap_needs_no_rebuild_and_mixed_batch_matches_rows() {
    let rt = runtime(ExecutionProvider::Cpu);
    let b = bundle();
    let (ta, tb) = (task("a", 31, 2, false), task("b", 32, 2, false));
    let (a, bb) = (rt.insert_task(&ta).unwrap(), rt.insert_task(&tb).unwrap());
    let x = input(3, 9);
    // Swapping back and forth on one session gives each task's merged reference every time.
    let ref_a = run_plain(&merged_model(&b, &ta), &x);
    let ref_b = run_plain(&merged_model(&b, &tb), &x);
    for _ in 0..2 {
        assert!(max_abs_diff(&rt.run(&x, a).unwrap()[0].data, &ref_a) <= 1e-4);
        assert!(max_abs_diff(&rt.run(&x, bb).unwrap()[0].data, &ref_b) <= 1e-4);
    }
    // Mixed batch: row i with task i, against each row run alone with its task's merged model.
    let order = [a, bb, a];
    let mixed = rt.run_mixed(&x, &order).unwrap();
    assert_eq!(mixed[0].shape, vec![3, SEQ, D_OUT]);
    let per = SEQ * D_OUT;
    let mut worst = 0f32;
    for (row, t) in [&ta, &tb, &ta].into_iter().enumerate() {
        let want = run_plain(&merged_model(&b, t), &rows_of(&x, row));
        worst = worst.max(max_abs_diff(
            &mixed[0].data[row * per..(row + 1) * per],
            &want,
        ));
    }
    println!("mixed batch [a, b, a] vs per-row merged: max |diff| = {worst:e}");
    assert!(worst <= 1e-4, "mixed batch differs by {worst}");
    // The tasks differ on these rows, so a batch that ignored the per-row task would fail.
    assert!(max_abs_diff(&ref_a, &ref_b) > 0.05);
    // A wrong batch size is an error, not a panic.
    assert!(rt.run_mixed(&x, &[a, bb]).is_err());
}

#[test]
fn requesting_cuda_without_a_gpu_falls_back_to_cpu_with_a_warning() {
    let cpu = runtime(ExecutionProvider::Cpu);
    let rt = runtime(ExecutionProvider::Cuda);
    let (tc, tg) = (
        cpu.insert_task(&task("a", 41, 2, false)).unwrap(),
        rt.insert_task(&task("a", 41, 2, false)).unwrap(),
    );
    let x = input(2, 10);
    let want = cpu.run(&x, tc).unwrap();
    let got = rt.run(&x, tg).unwrap();
    if rt.provider() == ExecutionProvider::Cuda {
        // A machine with a GPU build and a GPU: CUDA must agree with the CPU.
        assert!(max_abs_diff(&got[0].data, &want[0].data) <= 1e-3);
    } else {
        assert_eq!(rt.provider(), ExecutionProvider::Cpu);
        assert!(
            rt.warnings().iter().any(|w| w.contains("CUDA")),
            "expected a CUDA fallback warning, got {:?}",
            rt.warnings()
        );
        assert_eq!(got[0].data, want[0].data);
    }
    let trt = runtime(ExecutionProvider::TensorRt);
    if trt.provider() == ExecutionProvider::Cpu {
        assert!(
            trt.warnings().iter().any(|w| w.contains("TensorRT")),
            "{:?}",
            trt.warnings()
        );
    }
}

#[test]
fn bad_inputs_are_errors() {
    let rt = runtime(ExecutionProvider::Cpu);
    let id = rt.insert_task(&task("a", 51, 2, false)).unwrap();
    let mut x = input(2, 11);
    x[0].shape = vec![2, SEQ + 1, D_IN];
    let e = rt.run(&x, id).unwrap_err().to_string();
    assert!(e.contains("`x`"), "{e}");
    let mut x = input(2, 11);
    x[0].name = "nope".into();
    assert!(rt.run(&x, id).is_err());
    let wrong = eigenlorax::serve::store::TaskId(99);
    assert!(rt.run(&input(1, 1), wrong).is_err());
}

/// tract and ONNX Runtime run the same patched graph: single task and mixed batch.
#[cfg(feature = "tract")]
#[test]
fn tract_and_onnx_runtime_agree_on_the_patched_graph() {
    use eigenlorax::serve::backend::tract::Runtime;
    use eigenlorax::serve::backend::tract::{from_tract, to_tract};
    use eigenlorax::serve::input::check_inputs;
    require_ort();
    let (path, b) = base_on_disk("agree");
    let tr = Runtime::load(&path, &b).expect("tract loads the patched model");
    let ort =
        OrtRuntime::load(&path, &b, ExecutionProvider::Cpu).expect("ORT loads the patched model");
    let (ta, tb) = (task("a", 61, 2, false), task("b", 62, 1, false));
    let (tra, trb) = (tr.insert_task(&ta).unwrap(), tr.insert_task(&tb).unwrap());
    let (ora, orb) = (ort.insert_task(&ta).unwrap(), ort.insert_task(&tb).unwrap());
    let x = input(3, 12);
    let ordered = check_inputs(ort.inputs(), &x).unwrap();
    let tx = to_tract(&ordered).unwrap();
    let names = ort.output_names().to_vec();
    let mut worst_single = 0f32;
    for (t_id, o_id) in [(tra, ora), (trb, orb)] {
        let t_out = from_tract(&names, &tr.run(&tx, t_id).unwrap()).unwrap();
        let o_out = ort.run(&x, o_id).unwrap();
        assert_eq!(t_out[0].shape, o_out[0].shape);
        worst_single = worst_single.max(max_abs_diff(&t_out[0].data, &o_out[0].data));
    }
    let t_mixed = from_tract(&names, &tr.run_mixed(&tx, &[trb, tra, trb]).unwrap()).unwrap();
    let o_mixed = ort.run_mixed(&x, &[orb, ora, orb]).unwrap();
    let worst_mixed = max_abs_diff(&t_mixed[0].data, &o_mixed[0].data);
    println!(
        "tract vs ORT: single-task max |diff| = {worst_single:e}, mixed batch = {worst_mixed:e} (max |y| = {})",
        max_abs(&o_mixed[0].data)
    );
    assert!(
        worst_single <= 1e-4,
        "single-task outputs differ by {worst_single}"
    );
    assert!(
        worst_mixed <= 1e-4,
        "mixed-batch outputs differ by {worst_mixed}"
    );
    // Row 0 of the mixed batch ran task b, so it must differ from task a's output there.
    let per = SEQ * D_OUT;
    let single_a = ort.run(&x, ora).unwrap();
    assert!(max_abs_diff(&o_mixed[0].data[..per], &single_a[0].data[..per]) > 0.05);
    // The base model file is checked against the bundle's binding.
    let mut other = b.clone();
    if let Some(binding) = other.manifest.binding.as_mut() {
        binding.base_sha256 = "0".repeat(64);
    }
    let e = OrtRuntime::load(&path, &other, ExecutionProvider::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("SHA-256"), "{e}");
}
