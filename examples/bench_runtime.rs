//! Runtime benchmark on a synthetic 12-layer, d=384 graph (24 adapted MatMuls, bias-anchored
//! like the torch legacy export): base vs patched latency, task swap cost (warm: select a
//! loaded task; cold: load a coefficient file) vs merging a LoRA into the weights (the merge
//! arithmetic alone, and merge + rebuilding the tract plan, which constant weights require).
//!
//! `cargo run --release --example bench_runtime [-- --seq 128 --iters 30]`
//! Prints measured medians only.

use eigenlorax::bundle::format::SideSummary;
use eigenlorax::bundle::{Bundle, CoeffFile, Manifest, ModuleManifest, Provenance, StorageDtype};
use eigenlorax::graph::onnx::{self, Dim, node, tensor_f32, value_info};
use eigenlorax::graph::pb::{GraphProto, ModelProto, OperatorSetIdProto};
use eigenlorax::serve::backend::tract::Runtime;
use eigenlorax::subspace::{Coefficients, ExtractOptions, ModuleSubspace, SideInfo, Subspace};
use eigenlorax::util::GaussianRng;
use faer::Mat;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;

const LAYERS: usize = 12;
const D: usize = 384;
const K: usize = 32;
const R: usize = 8;

fn module_names() -> Vec<String> {
    (0..LAYERS)
        .flat_map(|l| [format!("layer.{l}.query"), format!("layer.{l}.value")])
        .collect()
}

fn weights(seed: u64) -> Vec<Vec<f32>> {
    let mut g = GaussianRng::new(seed);
    let s = 1.0 / (D as f64).sqrt();
    module_names()
        .iter()
        .map(|_| (0..D * D).map(|_| (g.next_normal() * s) as f32).collect())
        .collect()
}

/// x [1, seq, D] -> 24 x (MatMul + bias Add [+ Relu]) -> y.
fn model(ws: &[Vec<f32>]) -> ModelProto {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut cur = "x".to_string();
    for (i, (m, w)) in module_names().iter().zip(ws).enumerate() {
        let wn = format!("onnx::MatMul_{}", 100 + i);
        let bn = format!("{m}.bias");
        inits.push(tensor_f32(&wn, &[D, D], w));
        inits.push(tensor_f32(&bn, &[D], &vec![0.01; D]));
        let (mm, add, act) = (format!("{m}/mm"), format!("{m}/add"), format!("{m}/act"));
        nodes.push(node(
            "MatMul",
            &format!("/{m}/MatMul"),
            &[&cur, &wn],
            &[&mm],
            vec![],
        ));
        nodes.push(node(
            "Add",
            &format!("/{m}/Add"),
            &[&mm, &bn],
            &[&add],
            vec![],
        ));
        nodes.push(node(
            "Relu",
            &format!("/{m}/Relu"),
            &[&add],
            &[&act],
            vec![],
        ));
        cur = act;
    }
    nodes.push(node("Identity", "/out", &[&cur], &["y"], vec![]));
    let dims = [Dim::Fixed(1), Dim::Param("seq".into()), Dim::Fixed(D)];
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(GraphProto {
            name: "bench".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info("x", onnx::FLOAT, &dims)],
            output: vec![value_info("y", onnx::FLOAT, &dims)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn orthonormal_cols(g: &mut GaussianRng, n: usize, k: usize) -> Mat<f64> {
    let mut m = Mat::<f64>::from_fn(n, k, |_, _| g.next_normal());
    for j in 0..k {
        for _ in 0..2 {
            for p in 0..j {
                let dot: f64 = (0..n).map(|i| m[(i, j)] * m[(i, p)]).sum();
                for i in 0..n {
                    let v = m[(i, p)];
                    m[(i, j)] -= dot * v;
                }
            }
        }
        let nrm: f64 = (0..n).map(|i| m[(i, j)] * m[(i, j)]).sum::<f64>().sqrt();
        for i in 0..n {
            m[(i, j)] /= nrm;
        }
    }
    m
}

fn bundle() -> Bundle {
    let mut g = GaussianRng::new(5);
    let side = SideInfo {
        spectrum: vec![1.0; K],
        total_energy: K as f64,
        full_spectrum: true,
        k_principal: K,
        mean_vector: false,
        pseudo: 0,
        energy_kept: 1.0,
    };
    let summary = SideSummary {
        k_principal: K,
        mean_vector: false,
        pseudo: 0,
        energy_kept: 1.0,
        total_energy: None,
        full_spectrum: true,
    };
    let (mut modules, mut mm) = (BTreeMap::new(), BTreeMap::new());
    for m in module_names() {
        let v_a = orthonormal_cols(&mut g, D, K).transpose().to_owned();
        let v_b = orthonormal_cols(&mut g, D, K);
        modules.insert(
            m.clone(),
            ModuleSubspace {
                in_features: D,
                out_features: D,
                r_max: R,
                n_adapters: 8,
                v_a,
                v_b,
                a: side.clone(),
                b: side.clone(),
            },
        );
        mm.insert(
            m,
            ModuleManifest {
                in_features: D,
                out_features: D,
                r_max: R,
                n_adapters: 8,
                k_a: K,
                k_b: K,
                a: summary.clone(),
                b: summary.clone(),
            },
        );
    }
    let options = ExtractOptions::default();
    Bundle {
        path: "bench.elxb".into(),
        manifest: Manifest {
            format_version: 1,
            subspace_id: "bench-subspace".into(),
            dtype: StorageDtype::F32,
            options: options.clone(),
            modules: mm,
            sources: vec![],
            binding: None,
            base: None,
        },
        subspace: Subspace { modules, options },
    }
}

fn coeffs(seed: u64) -> CoeffFile {
    let mut g = GaussianRng::new(seed);
    let modules = module_names()
        .into_iter()
        .map(|m| {
            let alpha_a = Mat::<f64>::from_fn(R, K, |_, _| g.next_normal() * 0.05);
            let alpha_b = Mat::<f64>::from_fn(K, R, |_, _| g.next_normal() * 0.05);
            (m, Coefficients { alpha_a, alpha_b })
        })
        .collect();
    CoeffFile {
        subspace_id: "bench-subspace".into(),
        task: format!("task{seed}"),
        provenance: Provenance::Projected,
        modules,
        head: None,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(iters: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..iters)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

fn arg(name: &str, default: usize) -> usize {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> eigenlorax::Result<()> {
    let seq = arg("--seq", 128);
    let iters = arg("--iters", 30);
    let dir = std::env::temp_dir().join(format!("elx-bench-runtime-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| eigenlorax::Error::io(&dir, e))?;
    let ws = weights(1);
    let base_path = dir.join("base.onnx");
    let base_bytes = onnx::encode_model(&model(&ws));
    std::fs::write(&base_path, &base_bytes).map_err(|e| eigenlorax::Error::io(&base_path, e))?;
    let mut b = bundle();
    b.manifest.binding = Some(eigenlorax::graph::bind_file(&base_path, &b, None)?);

    let plan_of = |bytes: &[u8]| -> TractResult<Arc<TypedRunnableModel>> {
        tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])?
            .into_optimized()?
            .into_runnable()
    };
    let fail = |e: TractError| eigenlorax::Error::Usage(format!("{e:#}"));
    let mut g = GaussianRng::new(9);
    let xdata: Vec<f32> = (0..seq * D).map(|_| g.next_normal() as f32).collect();
    let x: TValue = Tensor::from_shape(&[1, seq, D], &xdata)
        .map_err(fail)?
        .into();

    println!(
        "synthetic graph: {LAYERS} layers x 2 adapted MatMul (d={D}), K_A=K_B={K}, r={R}, input [1, {seq}, {D}], median of {iters}"
    );
    let base_plan = plan_of(&base_bytes).map_err(fail)?;
    let t_base = time(iters, || base_plan.run(tvec![x.clone()]));

    let t0 = Instant::now();
    let rt = Runtime::load(&base_path, &b)?;
    let t_load = t0.elapsed();
    let a = rt.insert_task(&coeffs(1))?;
    let cfile = dir.join("task2.elxc");
    coeffs(2).write(&cfile)?;
    let bb = rt.load_task(&cfile)?;
    let xs = [x.clone()];
    let t_patched = time(iters, || rt.run(&xs, a));
    // The previous association of the patch (X·V_Aᵀ first), same coefficients, same engine.
    let act = eigenlorax::graph::patch_with(
        &model(&ws),
        &b,
        1,
        eigenlorax::graph::PatchForm::Activations,
    )?;
    let act_bytes = onnx::encode_model(&act.proto);
    let act_model = tract_onnx::onnx()
        .model_for_read(&mut &act_bytes[..])
        .map_err(fail)?;
    let task_a = rt.task(a)?;
    let values_a = rt.coeff_values(&task_a)?;
    let feed: TVec<TValue> = act_model
        .input_outlets()
        .map_err(fail)?
        .iter()
        .map(|o| {
            let n = &act_model.node(o.node).name;
            match task_a.tensors(rt.coeff_inputs()).position(|c| c.name == n) {
                Some(j) => values_a[j].clone(),
                None => x.clone(),
            }
        })
        .collect();
    let act_plan = act_model
        .into_optimized()
        .map_err(fail)?
        .into_runnable()
        .map_err(fail)?;
    let t_act = time(iters, || act_plan.run(feed.clone()));
    let t_alt = time(iters, || {
        let _ = rt.run(&xs, a);
        rt.run(&xs, bb)
    });

    // Swap: warm (select a loaded task), cold (load a coefficient file into the store).
    let t_select = time(iters.max(1000), || rt.task(bb));
    let t_cold = time(iters, || rt.load_task(&cfile));

    // The alternative: merge one LoRA (B·A per module, f32) into the weights ...
    let c = coeffs(3);
    let deltas: Vec<(Vec<f32>, Vec<f32>)> = module_names()
        .iter()
        .map(|m| {
            let s = &b.subspace.modules[m];
            let co = &c.modules[m];
            let bm = &s.v_b * &co.alpha_b; // [D x R]
            let am = &co.alpha_a * &s.v_a; // [R x D]
            let bf: Vec<f32> = (0..D * R).map(|i| bm[(i / R, i % R)] as f32).collect();
            let af: Vec<f32> = (0..R * D).map(|i| am[(i / D, i % D)] as f32).collect();
            (bf, af)
        })
        .collect();
    let merge = |ws: &mut [Vec<f32>]| {
        for (w, (bf, af)) in ws.iter_mut().zip(&deltas) {
            // W is stored [in x out]: W[i][o] += Σ_j B[o][j]·A[j][i].
            for i in 0..D {
                for o in 0..D {
                    let mut s = 0f32;
                    for j in 0..R {
                        s += bf[o * R + j] * af[j * D + i];
                    }
                    w[i * D + o] += s;
                }
            }
        }
    };
    let t_merge = time(iters.min(10), || {
        let mut w2 = ws.clone();
        merge(&mut w2);
        w2
    });
    // ... and rebuild the engine plan, since tract folds constant weights into the plan.
    let t_merge_rebuild = time(iters.min(5), || {
        let mut w2 = ws.clone();
        merge(&mut w2);
        plan_of(&onnx::encode_model(&model(&w2)))
    });

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "runtime load (hash + patch + optimize): {:9.2} ms",
        ms(t_load)
    );
    println!(
        "base run:                               {:9.3} ms",
        ms(t_base)
    );
    println!(
        "patched run (one task):                 {:9.3} ms   patched/base = {:.3}",
        ms(t_patched),
        t_patched.as_secs_f64() / t_base.as_secs_f64()
    );
    println!(
        "patched run, X·V_A-first form:          {:9.3} ms   patched/base = {:.3}",
        ms(t_act),
        t_act.as_secs_f64() / t_base.as_secs_f64()
    );
    println!(
        "two runs alternating tasks A,B:         {:9.3} ms   = {:.3} x one run",
        ms(t_alt),
        t_alt.as_secs_f64() / t_patched.as_secs_f64()
    );
    println!(
        "swap warm (select a loaded task):       {:9.3} us",
        us(t_select)
    );
    println!(
        "swap cold (load .elxc, {} bytes):    {:9.3} ms",
        std::fs::metadata(&cfile).map(|m| m.len()).unwrap_or(0),
        ms(t_cold)
    );
    println!(
        "merge LoRA into weights (arithmetic):   {:9.3} ms",
        ms(t_merge)
    );
    println!(
        "merge + rebuild tract plan:             {:9.3} ms",
        ms(t_merge_rebuild)
    );
    println!(
        "ratios: merge+rebuild / swap cold = {:.1}, merge+rebuild / swap warm = {:.0}, merge / swap warm = {:.0}",
        t_merge_rebuild.as_secs_f64() / t_cold.as_secs_f64(),
        t_merge_rebuild.as_secs_f64() / t_select.as_secs_f64(),
        t_merge.as_secs_f64() / t_select.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
