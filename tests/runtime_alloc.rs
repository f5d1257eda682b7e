//! A task swap allocates nothing, and a loaded task costs little more than its coefficients:
//! counted with a per-thread counting global allocator (in its own test binary so that it
//! does not affect the other tests).
#![cfg(feature = "tract")]

#[path = "support/runtime.rs"]
mod runtime_support;

use eigenlorax::serve::backend::tract::Runtime;
use runtime_support::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use tract_onnx::prelude::*;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    /// Bytes allocated minus bytes freed on this thread (as requested, not as the system
    /// allocator rounds them).
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn live(delta: i64) {
    // `try_with`: the thread-locals may be gone while a thread shuts down.
    let _ = LIVE.try_with(|c| c.set(c.get() + delta));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        live(layout.size() as i64);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        live(layout.size() as i64);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        live(new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        live(-(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread (its result is dropped outside the count).
fn count<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = ALLOCS.with(|c| c.get());
    let out = f();
    let after = ALLOCS.with(|c| c.get());
    (after - before, out)
}

#[test]
fn swapping_tasks_allocates_nothing() {
    let dir = temp_dir("alloc");
    let path = write_model(&dir, "base.onnx", &model(&Weights::random(3)));
    let mut b = bundle(4, "sub-a");
    bind_bundle(&mut b, &path);
    let rt = Runtime::load(&path, &b).expect("load");
    let a = rt.insert_task(&coeffs(1, "sub-a", "a", 4, 0.5)).expect("a");
    let bb = rt.insert_task(&coeffs(2, "sub-a", "b", 3, 0.5)).expect("b");
    let x = input(9, 2, 6);
    let xs: [TValue; 1] = [Tensor::from_shape(&x.0, &x.1).expect("tensor").into()];
    // Warm up (lazy one-time state, thread-local scratch).
    for id in [a, bb, a, bb, a] {
        rt.run(&xs, id).expect("warm");
    }

    // Selecting a task alone: an Arc clone under a read lock.
    let (select, task_b) = count(|| rt.task(bb).expect("select"));
    println!("select task: {select} allocations");
    assert_eq!(select, 0, "selecting a task allocated");
    drop(task_b);

    let mut same = Vec::new();
    let mut swap = Vec::new();
    for _ in 0..5 {
        rt.run(&xs, a).expect("run a");
        let (n_aa, out_aa) = count(|| rt.run(&xs, a).expect("run a again"));
        rt.run(&xs, a).expect("run a");
        let (n_ab, out_ab) = count(|| rt.run(&xs, bb).expect("run b after a"));
        let diff = out_aa[0]
            .to_plain_array_view::<f32>()
            .expect("f32")
            .iter()
            .zip(out_ab[0].to_plain_array_view::<f32>().expect("f32").iter())
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff > 1e-3, "task b gave task a's result (diff {diff})");
        same.push(n_aa);
        swap.push(n_ab);
    }
    println!("allocations per run: A after A {same:?}, B after A {swap:?}");
    assert_eq!(
        same, swap,
        "a run after a task swap allocated differently from a repeated run"
    );
}

/// The same on the tiny BERT fixture, whose plans are per input shape.
#[test]
fn swapping_tasks_allocates_nothing_with_per_shape_plans() {
    use eigenlorax::bundle::CoeffFile;
    let dir = temp_dir("alloc-bert");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures");
    let adapters: Vec<eigenlorax::adapter::Adapter> = (0..2)
        .map(|i| {
            eigenlorax::adapter::Adapter::open(&root.join(format!("adapters/task{i}")))
                .expect("adapter")
        })
        .collect();
    let opts = eigenlorax::subspace::ExtractOptions::default();
    let sub = eigenlorax::subspace::extract(&adapters, &opts, &|_, _, _| {}).expect("extract");
    let p = dir.join("b.elxb");
    eigenlorax::bundle::Bundle::write(&p, &sub, &[], eigenlorax::bundle::StorageDtype::F32, None)
        .expect("write");
    let mut b = eigenlorax::bundle::Bundle::read(&p).expect("read");
    let base = root.join("tiny-bert/model.onnx");
    b.manifest.binding = Some(eigenlorax::graph::bind_file(&base, &b, None).expect("bind"));
    let rt = Runtime::load(&base, &b).expect("load");
    assert!(!rt.is_shape_generic());
    let task = |i: usize| {
        let modules = adapters[i]
            .module_names()
            .into_iter()
            .map(|m| {
                let lm = adapters[i].load_module(m).expect("module");
                (
                    m.to_string(),
                    eigenlorax::subspace::project(&lm, &b.subspace.modules[m]),
                )
            })
            .collect();
        let c = CoeffFile {
            subspace_id: b.manifest.subspace_id.clone(),
            task: format!("task{i}"),
            provenance: eigenlorax::bundle::Provenance::Projected,
            modules,
            head: None,
        };
        rt.insert_task(&c).expect("insert")
    };
    let (a, bb) = (task(0), task(1));
    let ids: Vec<i64> = (0..32).map(|i| 5 + (i * 7) % 190).collect();
    let xs: [TValue; 2] = [
        Tensor::from_shape(&[2, 16], &ids).expect("ids").into(),
        Tensor::from_shape(&[2, 16], &[1i64; 32])
            .expect("mask")
            .into(),
    ];
    for id in [a, bb, a, bb, a] {
        rt.run(&xs, id).expect("warm");
    }
    let (select, t) = count(|| rt.task(bb).expect("select"));
    assert_eq!(select, 0);
    drop(t);
    let mut same = Vec::new();
    let mut swap = Vec::new();
    for _ in 0..3 {
        rt.run(&xs, a).expect("a");
        same.push(count(|| rt.run(&xs, a).expect("a again")).0);
        rt.run(&xs, a).expect("a");
        swap.push(count(|| rt.run(&xs, bb).expect("b after a")).0);
    }
    println!("tiny BERT allocations per run: A after A {same:?}, B after A {swap:?}");
    assert_eq!(same, swap);
}

/// A warm mixed-task run reuses its stacked coefficient buffers: it allocates exactly what the
/// same mixed plan allocates when fed ready-made stacked tensors, plus the run's input list,
/// whatever the row-to-task assignment; and the reused buffers carry the current rows.
#[test]
fn mixed_runs_reuse_coefficient_buffers() {
    let dir = temp_dir("alloc-mixed");
    let path = write_model(&dir, "base.onnx", &model(&Weights::random(3)));
    let mut b = bundle(4, "sub-a");
    bind_bundle(&mut b, &path);
    let rt = Runtime::load(&path, &b).expect("load");
    let a = rt.insert_task(&coeffs(1, "sub-a", "a", 4, 0.5)).expect("a");
    let bb = rt.insert_task(&coeffs(2, "sub-a", "b", 3, 0.5)).expect("b");
    let x = input(9, 2, 6);
    let xs: [TValue; 1] = [Tensor::from_shape(&x.0, &x.1).expect("tensor").into()];

    // The reference: the same patched graph for 2 tasks, with stacked tensors built here.
    let patched = eigenlorax::graph::patch(&model(&Weights::random(3)), &b, 2).expect("patch");
    let bytes = eigenlorax::graph::onnx::encode_model(&patched.proto);
    let plain = tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .expect("read");
    let names: Vec<String> = plain
        .input_outlets()
        .expect("inputs")
        .iter()
        .map(|o| plain.node(o.node).name.clone())
        .collect();
    let plan = plain
        .into_optimized()
        .expect("optimize")
        .into_runnable()
        .expect("plan");
    let feed = |rows: [eigenlorax::serve::TaskId; 2]| -> TVec<TValue> {
        let (t0, t1) = (rt.task(rows[0]).expect("t0"), rt.task(rows[1]).expect("t1"));
        names
            .iter()
            .map(|n| {
                if n == "x" {
                    return xs[0].clone();
                }
                fn find<'a>(
                    t: &'a eigenlorax::serve::TaskData,
                    inputs: &'a [eigenlorax::graph::CoeffInput],
                    n: &str,
                ) -> eigenlorax::serve::CoeffTensor<'a> {
                    t.tensors(inputs).find(|c| c.name == n).expect("coeff")
                }
                let (c0, c1) = (
                    find(&t0, rt.coeff_inputs(), n),
                    find(&t1, rt.coeff_inputs(), n),
                );
                let data: Vec<f32> = c0.data.iter().chain(c1.data).copied().collect();
                Tensor::from_shape(&[2, c0.shape[1], c0.shape[2]], &data)
                    .expect("stack")
                    .into()
            })
            .collect()
    };
    let flat = |o: &TVec<TValue>| -> Vec<f32> {
        o[0].to_plain_array_view::<f32>()
            .expect("f32")
            .iter()
            .copied()
            .collect()
    };
    for rows in [[a, bb], [bb, a], [a, a], [bb, a]] {
        rt.run_mixed(&xs, &rows).expect("warm");
        plan.run(feed(rows)).expect("warm reference");
    }
    let mut mixed = Vec::new();
    let mut direct = Vec::new();
    for rows in [[a, bb], [bb, a], [bb, bb], [a, bb]] {
        let v = feed(rows);
        let held: Vec<TValue> = v.iter().cloned().collect(); // the runtime's inputs are shared too
        let (n_direct, want) = count(|| plan.run(v).expect("reference"));
        let (n_mixed, got) = count(|| rt.run_mixed(&xs, &rows).expect("mixed"));
        drop(held);
        let d = max_abs_diff(&flat(&got), &flat(&want));
        assert!(
            d <= 1e-6,
            "mixed run {rows:?} differs from the reference by {d}"
        );
        mixed.push(n_mixed);
        direct.push(n_direct);
    }
    println!("allocations per mixed run: runtime {mixed:?}, plan fed directly {direct:?}");
    for (m, d) in mixed.iter().zip(&direct) {
        assert_eq!(
            *m,
            d + 1,
            "a warm mixed run allocated beyond the plan's own run and its input list"
        );
    }
}

/// Item 6 of issue 14: the store keeps one copy of each task. With MiniLM's layout (12
/// adapted modules, LoRA rank 8, K_A = K_B = K), the live heap bytes of 100 loaded tasks are
/// within 10% of their raw f32 coefficients for K = 8..64 (before: two copies plus per-tensor
/// names and headers, 2.1-3.2x), against a LoRA adapter's 294,912 bytes.
#[test]
fn a_loaded_task_costs_its_coefficients() {
    use eigenlorax::bundle::{CoeffFile, Provenance};
    use eigenlorax::graph::CoeffInput;
    use eigenlorax::serve::TaskStore;
    let manifest = bundle(1, "sub-a").manifest;
    let file = CoeffFile {
        subspace_id: manifest.subspace_id.clone(),
        task: "task".into(),
        provenance: Provenance::ZeroShot,
        modules: Default::default(),
        head: None,
    };
    let lora = 12 * 8 * (384 + 384) * 4;
    for k in [8usize, 16, 32, 64] {
        let inputs: Vec<CoeffInput> = (0..6)
            .flat_map(|l| {
                ["query", "value"].map(|m| format!("encoder.layer.{l}.attention.self.{m}"))
            })
            .map(|module| CoeffInput {
                alpha_a: format!("{module}.alpha_a_t"),
                alpha_b: format!("{module}.alpha_b_t"),
                module,
                k_a: k,
                k_b: k,
                r: 8,
            })
            .collect();
        let store = TaskStore::new(&manifest, &inputs);
        let raw = 4 * 12 * 8 * (k + k);
        let n = 100;
        let before = LIVE.with(Cell::get);
        for _ in 0..n {
            store.insert(&file).expect("insert");
        }
        let per_task = (LIVE.with(Cell::get) - before) as f64 / n as f64;
        println!(
            "K = {k}: {per_task:.0} bytes per task, raw coefficients {raw} ({:.3}x); a LoRA is {lora} bytes ({:.1}x the task)",
            per_task / raw as f64,
            lora as f64 / per_task
        );
        assert!(
            per_task >= raw as f64 && per_task <= 1.10 * raw as f64,
            "K = {k}: {per_task:.0} bytes per task against {raw} of coefficients"
        );
        drop(store);
    }
}
