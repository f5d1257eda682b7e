//! The decoder on ONNX Runtime (feature `ort`): the same logits as tract (≤ 1e-4) for a
//! mixed-task batch with caches of different lengths, and the same greedy tokens.

use super::support::*;
use eigenlorax::serve::generate::{GenerateOptions, Generator, Request};
use eigenlorax::serve::{Backend, ExecutionProvider};

#[test]
fn onnx_runtime_gives_tracts_logits_and_tokens_on_a_mixed_task_batch() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| !p.is_empty()),
        "ORT_DYLIB_PATH is not set: run tools/install_onnxruntime.sh and export it"
    );
    let dir = std::env::temp_dir().join(format!("elx-dec-ort-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let f = fixture(&dir, true);
    let t = Generator::load(&f.model, &f.bundle, Backend::Tract).expect("tract");
    let o =
        Generator::load(&f.model, &f.bundle, Backend::Ort(ExecutionProvider::Cpu)).expect("ort");
    let cs: Vec<_> = (0..3)
        .map(|i| coeffs(&f.bundle, 70 + i, &format!("t{i}"), 0.6))
        .collect();
    let ids_t: Vec<_> = cs
        .iter()
        .map(|c| t.engine().insert_task(c).expect("task"))
        .collect();
    let ids_o: Vec<_> = cs
        .iter()
        .map(|c| o.engine().insert_task(c).expect("task"))
        .collect();
    let prompts: [&[u32]; 3] = [&[5, 6, 7], &[1], &[40, 41, 42, 43, 44, 45]];
    let mut st: Vec<_> = ids_t.iter().map(|&i| t.sequence(i).expect("seq")).collect();
    let mut so: Vec<_> = ids_o.iter().map(|&i| o.sequence(i).expect("seq")).collect();
    for step in 0..4 {
        let toks: Vec<Vec<u32>> = if step == 0 {
            prompts.iter().map(|p| p.to_vec()).collect()
        } else {
            (0..3).map(|r| vec![(7 * step + r) as u32 % 61]).collect()
        };
        let refs: Vec<&[u32]> = toks.iter().map(|v| &v[..]).collect();
        t.feed(&mut st.iter_mut().collect::<Vec<_>>(), &refs)
            .expect("tract feed");
        o.feed(&mut so.iter_mut().collect::<Vec<_>>(), &refs)
            .expect("ort feed");
        for (a, b) in st.iter().zip(&so) {
            let d = max_abs_diff(a.logits(), b.logits());
            assert!(d < 1e-4, "step {step}: {d}");
        }
    }
    let reqs: Vec<Request> = (0..3)
        .map(|i| Request {
            task: ids_t[i],
            prompt: prompts[i].to_vec(),
            options: GenerateOptions {
                max_tokens: 8,
                ..Default::default()
            },
        })
        .collect();
    let a = t.generate_batch(&reqs).expect("tract batch");
    let reqs_o: Vec<Request> = reqs
        .iter()
        .zip(&ids_o)
        .map(|(r, &task)| Request { task, ..r.clone() })
        .collect();
    let b = o.generate_batch(&reqs_o).expect("ort batch");
    for (x, y) in a.iter().zip(&b) {
        let tx: Vec<u32> = x.tokens.iter().map(|t| t.id).collect();
        let ty: Vec<u32> = y.tokens.iter().map(|t| t.id).collect();
        assert_eq!(tx, ty);
    }
}

#[test]
fn onnx_runtime_gives_tracts_next_token_loss_and_gradients() {
    let dir = std::env::temp_dir().join(format!("elx-dec-ort-grad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let f = fixture(&dir, true);
    let t = super::train::gradients_on(&f, Backend::Tract);
    let o = super::train::gradients_on(&f, Backend::Ort(ExecutionProvider::Cpu));
    assert!(
        ((t.loss - o.loss) / t.loss).abs() < 1e-5,
        "{} vs {}",
        t.loss,
        o.loss
    );
    let to: Vec<f64> = t.params.iter().map(|&x| f64::from(x)).collect();
    let oo: Vec<f64> = o.params.iter().map(|&x| f64::from(x)).collect();
    let e = super::fd_support::rel(&oo, &to);
    assert!(
        e < 1e-4,
        "ONNX Runtime's gradients differ from tract's by {e:.2e}"
    );
}

/// A Llama whose reduced axes span several blocks of 32 (hidden 96: three blocks, an odd
/// count, which packs zero points in half a byte; the MLP's 64: two).
fn blocky_config() -> eigenlorax::graph::llama::LlamaConfig {
    eigenlorax::graph::llama::LlamaConfig {
        hidden: 96,
        heads: 4,
        kv_heads: 2,
        head_dim: 24,
        intermediate: 64,
        ..tiny_config(true)
    }
}

/// How the test model's weights are stored before the engine sees them.
#[derive(Clone, Copy, PartialEq)]
enum Blocks {
    /// llama.cpp's Q4_1 (f16 scale and minimum).
    Q4_1,
    /// Q4_0 with an f32 scale.
    Q4_0,
    /// llama.cpp's Q8_0 (f16 scale).
    Q8_0,
}

/// `w` ([rows, cols] row-major, blocks of 32 along each row) through a round trip in `b`.
fn round_trip(w: &[f32], b: Blocks) -> Vec<f32> {
    w.chunks(32)
        .flat_map(|blk| {
            let out: Vec<f32> = match b {
                Blocks::Q4_1 => {
                    let lo = blk.iter().copied().fold(f32::INFINITY, f32::min);
                    let hi = blk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let d = (hi - lo) / 15.0;
                    let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
                    let (d16, m16) = (
                        half::f16::from_f32(d).to_f32(),
                        half::f16::from_f32(lo).to_f32(),
                    );
                    blk.iter()
                        .map(|&x| (((x - lo) * inv + 0.5) as i32).clamp(0, 15) as f32 * d16 + m16)
                        .collect()
                }
                Blocks::Q4_0 => {
                    let m = blk
                        .iter()
                        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    let d = m / -8.0;
                    let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
                    blk.iter()
                        .map(|&x| ((x * inv + 8.5) as i32).clamp(0, 15) as f32 * d - 8.0 * d)
                        .collect()
                }
                Blocks::Q8_0 => {
                    let amax = blk.iter().fold(0f32, |m, &v| m.max(v.abs()));
                    let d16 = half::f16::from_f32(amax / 127.0).to_f32();
                    let inv = if d16 == 0.0 { 0.0 } else { 1.0 / d16 };
                    blk.iter()
                        .map(|&x| ((x * inv).round()).clamp(-127.0, 127.0) * d16)
                        .collect()
                }
            };
            out
        })
        .collect()
}

/// Random weights whose projections hold `body` blocks and whose tied embedding (the LM
/// head) holds `head` blocks, as a model imported from a GGUF file of that format does.
fn blocky_weights(body: Blocks, head: Blocks) -> RandomWeights {
    let cfg = blocky_config();
    let mut w = RandomWeights::new(&cfg, 23);
    for (name, (shape, v)) in w.tensors.iter_mut() {
        if name.ends_with("_proj.weight") {
            assert_eq!(shape[1] % 32, 0, "{name}");
            *v = round_trip(v, body);
        } else if name == "model.embed_tokens.weight" {
            *v = round_trip(v, head);
        }
    }
    w
}

/// The inputs of a first pass over `ids` (one row, empty caches) for the graph inputs
/// `names` of a blocky model.
fn first_pass_inputs(names: &[String], ids: &[i64]) -> Vec<eigenlorax::serve::input::InputTensor> {
    use eigenlorax::serve::input::{InputTensor, TensorData};
    let cfg = blocky_config();
    let s = ids.len();
    names
        .iter()
        .map(|n| {
            let (shape, data) = match n.as_str() {
                "input_ids" => (vec![1, s], TensorData::I64(ids.to_vec())),
                "attention_mask" => (vec![1, s], TensorData::I64(vec![1; s])),
                "position_ids" => (vec![1, s], TensorData::I64((0..s as i64).collect())),
                "logits_positions" => (vec![s], TensorData::I64((0..s as i64).collect())),
                _ => (
                    vec![1, cfg.kv_heads, 0, cfg.head_dim],
                    TensorData::F32(Vec::new()),
                ),
            };
            InputTensor {
                name: n.clone(),
                shape,
                data,
            }
        })
        .collect()
}

fn logits_of(model: &eigenlorax::graph::ModelProto, ids: &[i64]) -> Vec<f32> {
    use eigenlorax::serve::backend::ort::{OrtModel, plain_inputs};
    let names = plain_inputs(model);
    let inputs = first_pass_inputs(&names, ids);
    let m = OrtModel::new(model, &names, ExecutionProvider::Cpu).expect("session");
    m.run(&inputs).expect("run").swap_remove(0).data
}

#[test]
fn four_bit_blocks_on_onnx_runtime_are_the_models_own_weights() {
    use eigenlorax::serve::backend::WeightFormat;
    use eigenlorax::serve::backend::ort::quant::{Head, quantize_matmuls, quantize_matmuls_with};
    let cfg = blocky_config();
    let ids = [3i64, 1, 4, 1, 5, 9, 2, 6, 53, 58];
    for (format, body) in [
        (WeightFormat::Q4_1, Blocks::Q4_1),
        (WeightFormat::Q4_0, Blocks::Q4_0),
    ] {
        // Every product in the body's blocks, the head included, with f32 activations: the
        // packed blocks give the f32 model's logits.
        let model =
            eigenlorax::graph::llama::build(&cfg, &mut blocky_weights(body, body), "blocky")
                .expect("build");
        let want = logits_of(&model, &ids);
        let mut q = model.clone();
        let n = quantize_matmuls_with(&mut q, format, Head::LikeBody).expect("quantize");
        assert_eq!(n, 7 * cfg.layers + 1, "{format:?}: products quantized");
        let g = q.graph.as_ref().expect("graph");
        assert!(
            g.initializer
                .iter()
                .all(|t| !t.name.ends_with("_proj.weight")),
            "the f32 weights are dropped"
        );
        assert!(
            g.node.iter().any(|n| n.op_type == "Gather"),
            "the embedding lookup stays"
        );
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let exact = max_abs_diff(&logits_of(&q, &ids), &want);
        assert!(
            exact < 1e-5 * scale,
            "{format:?}: {exact} (logits up to {scale})"
        );

        // As served: the head (an embedding in Q8_0 blocks, as GGUF files ship it) multiplied
        // in 8 bits with 8-bit activations, the only approximation left.
        let model = eigenlorax::graph::llama::build(
            &cfg,
            &mut blocky_weights(body, Blocks::Q8_0),
            "blocky",
        )
        .expect("build");
        let want = logits_of(&model, &ids);
        let mut s = model.clone();
        quantize_matmuls(&mut s, format).expect("quantize");
        let heads = s.graph.as_ref().expect("graph").node.iter().filter(|n| {
            n.op_type == "MatMulNBits" && n.attribute.iter().any(|a| a.name == "bits" && a.i == 8)
        });
        assert_eq!(heads.count(), 1, "one 8-bit product: the head");
        // Only the token embedding is looked up in 8 bits: the rotary tables (gathered by
        // position) keep their f32 values.
        let g = s.graph.as_ref().expect("graph");
        for table in ["/rotary/cos_table", "/rotary/signed_sin_table"] {
            assert!(
                g.initializer
                    .iter()
                    .any(|t| t.name == table && t.data_type == eigenlorax::graph::onnx::FLOAT),
                "{table} stays f32"
            );
        }
        let served = max_abs_diff(&logits_of(&s, &ids), &want);
        assert!(
            served < 1e-2 * scale,
            "{format:?}: served {served} (logits up to {scale})"
        );
    }
}

#[test]
fn q4_1_weights_serve_a_task_on_onnx_runtime_and_tract_refuses_them() {
    use eigenlorax::serve::backend::WeightFormat;
    let dir = std::env::temp_dir().join(format!("elx-dec-ort-q41-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let f = fixture_with(
        &dir,
        blocky_config(),
        blocky_weights(Blocks::Q4_1, Blocks::Q8_0),
    );
    let Err(e) = Generator::load_with(&f.model, &f.bundle, Backend::Tract, WeightFormat::Q4_1)
    else {
        panic!("q4_1 on tract is refused")
    };
    let e = e.to_string();
    assert!(e.contains("q4_1") && e.contains("--backend ort"), "{e}");
    let ort = Backend::Ort(ExecutionProvider::Cpu);
    let exact = Generator::load(&f.model, &f.bundle, ort).expect("f32");
    let q = Generator::load_with(&f.model, &f.bundle, ort, WeightFormat::Q4_1).expect("q4_1");
    let c = coeffs(&f.bundle, 9, "t", 0.6);
    let (a, b) = (
        exact.engine().insert_task(&c).expect("task"),
        q.engine().insert_task(&c).expect("task"),
    );
    let prompt = [5u32, 6, 7, 8, 40, 41];
    let want = exact.score(a, &prompt).expect("score");
    let got = q.score(b, &prompt).expect("score");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = max_abs_diff(&got, &want);
    assert!(
        d < 2e-2 * scale,
        "q4_1 with a task: {d} (logits up to {scale})"
    );
    // The task changes the logits far more than the 4-bit products do.
    let base = exact
        .engine()
        .insert_task(&eigenlorax::bundle::CoeffFile::base(
            &f.bundle.manifest.subspace_id,
        ))
        .expect("base");
    let task_effect = max_abs_diff(&exact.score(base, &prompt).expect("score"), &want);
    assert!(
        task_effect > 5.0 * d,
        "task {task_effect} vs quantization {d}"
    );
}

#[test]
fn the_token_embedding_in_q8_0_blocks_looks_up_the_same_rows() {
    // A token embedding that holds Q8_0 blocks (f16 scales, as a GGUF file ships it) and a
    // bare lookup: served with 4-bit weights, the rows come from i8 codes and block scales,
    // and equal the f32 rows.
    use eigenlorax::graph::onnx::{Dim, INT64, node, tensor_f32, value_info};
    use eigenlorax::graph::pb::{GraphProto, ModelProto, OperatorSetIdProto};
    use eigenlorax::serve::backend::WeightFormat;
    use eigenlorax::serve::backend::ort::OrtModel;
    use eigenlorax::serve::backend::ort::quant::quantize_matmuls;
    use eigenlorax::serve::input::{InputTensor, TensorData};
    let (v, h) = (50, 96);
    let mut rng = eigenlorax::util::GaussianRng::new(11);
    let raw: Vec<f32> = (0..v * h)
        .map(|_| rng.next_normal() as f32 * 0.05)
        .collect();
    let emb = round_trip(&raw, Blocks::Q8_0);
    let ids: Vec<i64> = vec![0, 7, 49, 7, 23];
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "lookup".into(),
            node: vec![node(
                "Gather",
                "embed",
                &["emb", "input_ids"],
                &["rows"],
                vec![],
            )],
            initializer: vec![tensor_f32("emb", &[v, h], &emb)],
            input: vec![value_info(
                "input_ids",
                INT64,
                &[Dim::Fixed(1), Dim::Fixed(ids.len())],
            )],
            output: vec![value_info(
                "rows",
                eigenlorax::graph::onnx::FLOAT,
                &[Dim::Fixed(1), Dim::Fixed(ids.len()), Dim::Fixed(h)],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut q = model.clone();
    assert_eq!(
        quantize_matmuls(&mut q, WeightFormat::Q4_1).expect("quantize"),
        1
    );
    let g = q.graph.as_ref().expect("graph");
    assert!(
        g.initializer.iter().all(|t| t.name != "emb"),
        "the f32 table is dropped"
    );
    // Codes and scales: 9 bits a value against 32 (the 0/1 block expander is shared).
    let q_bytes: usize = g
        .initializer
        .iter()
        .filter(|t| !t.name.contains("block_expander"))
        .map(|t| t.raw_data.len())
        .sum();
    assert_eq!(q_bytes, v * h + v * (h / 32) * 4, "codes and scales");
    let input = [InputTensor {
        name: "input_ids".into(),
        shape: vec![1, ids.len()],
        data: TensorData::I64(ids.clone()),
    }];
    let names = ["input_ids".to_string()];
    let run = |m: &ModelProto| {
        let s = OrtModel::new(m, &names, ExecutionProvider::Cpu).expect("session");
        s.run(&input).expect("run").swap_remove(0).data
    };
    let (want, got) = (run(&model), run(&q));
    let expect: Vec<f32> = ids
        .iter()
        .flat_map(|&i| emb[i as usize * h..(i as usize + 1) * h].to_vec())
        .collect();
    assert_eq!(want, expect, "the f32 lookup");
    assert_eq!(got, want, "the Q8_0 lookup gives the f32 rows bit for bit");
}

#[test]
fn a_model_spooled_to_a_file_gives_the_logits_of_the_model_in_memory() {
    // Large models reach ONNX Runtime as a file whose weights it maps (serve::backend::ort::
    // spool); the blocky model is small, so it is spooled on request here.
    use eigenlorax::serve::backend::ort::{OrtModel, plain_inputs};
    let model = eigenlorax::graph::llama::build(
        &blocky_config(),
        &mut blocky_weights(Blocks::Q4_1, Blocks::Q8_0),
        "blocky",
    )
    .expect("build");
    let ids = [3i64, 1, 4, 1, 5, 9, 2, 6];
    let names = plain_inputs(&model);
    let inputs = first_pass_inputs(&names, &ids);
    let parent = std::env::temp_dir().join(format!("elx-spool-test-{}", std::process::id()));
    std::fs::create_dir_all(&parent).expect("temp dir");
    let spooled =
        OrtModel::new_spooled(&model, &names, ExecutionProvider::Cpu, &parent).expect("spooled");
    assert_eq!(
        std::fs::read_dir(&parent).expect("read dir").count(),
        0,
        "the spool folder is removed once the session is built"
    );
    let in_memory = OrtModel::new(&model, &names, ExecutionProvider::Cpu).expect("in memory");
    let a = spooled.run(&inputs).expect("run spooled");
    let b = in_memory.run(&inputs).expect("run in memory");
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.shape, y.shape, "{}", x.name);
        assert_eq!(x.data, y.data, "{}: the same bits", x.name);
    }
    let _ = std::fs::remove_dir_all(&parent);

    // A folder that cannot be made is an error naming it, not a panic.
    let missing = parent.join("no/such/dir");
    let err = OrtModel::new_spooled(&model, &names, ExecutionProvider::Cpu, &missing)
        .expect_err("no folder");
    assert!(err.to_string().contains("no/such/dir"), "{err}");
}
