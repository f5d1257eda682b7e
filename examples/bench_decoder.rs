//! Decoder benchmark (BENCHMARKS.md, "Decoder"): a model folder from `elx import-gguf`, on
//! tract with N threads.
//!
//! ```text
//! cargo run --release --example bench_decoder -- MODEL_DIR [THREADS] [PROMPT_TOKENS] [NEW_TOKENS] [WEIGHTS] [HELD_OUT] [ENGINE] [TOKENS_PER_CALL]
//! ```
//!
//! WEIGHTS is how the engine stores the base weights (`f32`, default, `q4_0`, or `q4_1` on
//! ONNX Runtime); ENGINE `tract` (default) or `ort` (ONNX Runtime's CPU provider, build with
//! `--features ort` and set `ORT_DYLIB_PATH`); HELD_OUT a
//! text file whose perplexity is measured (default `/usr/share/common-licenses/GPL-3`: the
//! first 1,024 tokens, as two windows of 512 each scored from an empty cache); TOKENS_PER_CALL
//! the positions one engine call computes (`Generator::set_tokens_per_call`; default the
//! library's, `all` for a whole prompt or window in one call).
//!
//! Prints one JSON object: load time; prefill tok/s of a PROMPT_TOKENS prompt (the model's own
//! tokens, a fixed English text repeated); decode tok/s over NEW_TOKENS greedy tokens; time to
//! first token; peak RSS against the f32 weights and the KV cache (after generation, then
//! after the perplexity too, then over the whole run); then, with a random
//! subspace bound over every q/k/v/o/gate/up/down projection (K 16 per side, rank 8) and 8
//! tasks of random coefficients (timings do not depend on the values): decode tok/s with a
//! task, the cost of switching a request's task, and the throughput of 8 requests with 8
//! different tasks decoded as one batch against the same 8 served one after another.

use eigenlorax::bundle::{Bundle, CoeffFile, Provenance, StorageDtype};
use eigenlorax::graph::llama::files::MODEL_FILE;
use eigenlorax::serve::Backend;
use eigenlorax::serve::backend::WeightFormat;
use eigenlorax::serve::generate::{
    DEFAULT_TOKENS_PER_CALL, GenerateOptions, Generator, PromptTokenizer, Request, argmax,
};
use eigenlorax::subspace::{Coefficients, ExtractOptions, ModuleSubspace, SideInfo, Subspace};
use eigenlorax::util::GaussianRng;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

fn vm(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn orthonormal(rng: &mut GaussianRng, n: usize, k: usize) -> faer::Mat<f64> {
    let m = faer::Mat::<f64>::from_fn(n, k, |_, _| rng.next_normal());
    m.qr().compute_thin_Q()
}

fn side(k: usize) -> SideInfo {
    SideInfo {
        spectrum: vec![1.0; k],
        total_energy: k as f64,
        full_spectrum: true,
        k_principal: k,
        mean_vector: false,
        pseudo: 0,
        energy_kept: 1.0,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(args.get(1).expect("MODEL_DIR"));
    let threads: usize = args.get(2).map_or(2, |s| s.parse().expect("threads"));
    let n_prompt: usize = args
        .get(3)
        .map_or(128, |s| s.parse().expect("prompt tokens"));
    if n_prompt < 40 {
        // The batch's 8 requests take windows prompt[i..i + 32], i < 8.
        eprintln!("PROMPT_TOKENS must be at least 40, found {n_prompt}");
        std::process::exit(2);
    }
    let n_new: usize = args.get(4).map_or(128, |s| s.parse().expect("new tokens"));
    let weights: WeightFormat = args.get(5).map_or(WeightFormat::F32, |s| {
        s.parse().expect("weights: f32, q4_0 or q4_1")
    });
    let held_out = args
        .get(6)
        .map_or("/usr/share/common-licenses/GPL-3", |s| s.as_str());
    let engine = match args.get(7).map_or("tract", |s| s.as_str()) {
        "tract" => Backend::Tract,
        "ort" => Backend::Ort(eigenlorax::serve::ExecutionProvider::Cpu),
        other => panic!("ENGINE: expected tract or ort, found {other}"),
    };
    let tokens_per_call = match args.get(8).map(String::as_str) {
        None => DEFAULT_TOKENS_PER_CALL,
        Some("all") => usize::MAX,
        Some(n) => n.parse().expect("TOKENS_PER_CALL: a number or `all`"),
    };
    eigenlorax::serve::backend::set_cpu_threads(threads);
    let model = dir.join(MODEL_FILE);
    let tok = PromptTokenizer::open(&dir.join("tokenizer.json")).expect("tokenizer");
    let text =
        "The river runs through the old town, past the mill and the church, and on to the sea. ";
    let mut prompt = Vec::new();
    while prompt.len() < n_prompt {
        prompt.extend(tok.encode(text, false).expect("encode"));
    }
    prompt.truncate(n_prompt);

    // The base model alone.
    let t0 = Instant::now();
    let (mut g, base) = Generator::load_base_with(&model, engine, weights).expect("load");
    g.set_tokens_per_call(tokens_per_call);
    let load_s = t0.elapsed().as_secs_f64();
    let rss_loaded = vm("VmRSS:");
    let mut seq = g.sequence(base).expect("seq");
    let t = Instant::now();
    g.feed(&mut [&mut seq], &[&prompt]).expect("prefill");
    let prefill_s = t.elapsed().as_secs_f64();
    let mut next = argmax(seq.logits()) as u32;
    let ttft_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..n_new {
        g.feed(&mut [&mut seq], &[&[next]]).expect("decode");
        next = argmax(seq.logits()) as u32;
    }
    let decode_s = t.elapsed().as_secs_f64();
    let d = g.decoder();
    let kv_bytes = (n_prompt + n_new) * d.floats_per_token() * 4;
    let weights_bytes = std::fs::metadata(&model).map(|m| m.len()).unwrap_or(0);
    let peak_base_kib = vm("VmHWM:");
    drop(seq);
    // Perplexity on the held-out text.
    let text = std::fs::read_to_string(held_out).expect("held-out text");
    let ids = tok.encode(&text, false).expect("encode held-out");
    let mut nll = Vec::new();
    for w in ids.chunks_exact(512).take(2) {
        nll.extend(g.token_nll(base, w).expect("score"));
    }
    let perplexity = (nll.iter().sum::<f64>() / nll.len() as f64).exp();
    // llama.cpp's benchmark reports its peak after generation and perplexity alike.
    let peak_scored_kib = vm("VmHWM:");
    drop(g);

    // A random subspace over every projection, 8 tasks.
    let work = std::env::temp_dir().join(format!("elx-bench-decoder-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config"))
            .expect("config json");
    let n = |k: &str| cfg[k].as_u64().expect(k) as usize;
    let (h, layers, heads, kvh, hd, f) = (
        n("hidden_size"),
        n("num_hidden_layers"),
        n("num_attention_heads"),
        n("num_key_value_heads"),
        n("head_dim"),
        n("intermediate_size"),
    );
    let (k, r) = (16, 8);
    let mut rng = GaussianRng::new(1);
    let mut modules = BTreeMap::new();
    for l in 0..layers {
        for (m, din, dout) in [
            ("self_attn.q_proj", h, heads * hd),
            ("self_attn.k_proj", h, kvh * hd),
            ("self_attn.v_proj", h, kvh * hd),
            ("self_attn.o_proj", heads * hd, h),
            ("mlp.gate_proj", h, f),
            ("mlp.up_proj", h, f),
            ("mlp.down_proj", f, h),
        ] {
            modules.insert(
                format!("model.layers.{l}.{m}"),
                ModuleSubspace {
                    in_features: din,
                    out_features: dout,
                    r_max: r,
                    n_adapters: 8,
                    v_a: orthonormal(&mut rng, din, k).transpose().to_owned(),
                    v_b: orthonormal(&mut rng, dout, k),
                    a: side(k),
                    b: side(k),
                },
            );
        }
    }
    let sub = Subspace {
        modules,
        options: ExtractOptions::default(),
    };
    let unbound = work.join("random.elxb");
    Bundle::write(&unbound, &sub, &[], StorageDtype::F32, None).expect("write bundle");
    let b = Bundle::read(&unbound).expect("read");
    let binding = eigenlorax::graph::bind_file(&model, &b, None).expect("bind");
    let bound = work.join("bound.elxb");
    b.with_binding(Some(&binding), &bound).expect("bound");
    let bundle = Bundle::read(&bound).expect("read bound");
    let mut g = Generator::load_with(&model, &bundle, engine, weights).expect("load with bundle");
    g.set_tokens_per_call(tokens_per_call);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let mut gr = GaussianRng::new(100 + i);
            let modules = bundle
                .subspace
                .modules
                .keys()
                .map(|m| {
                    let alpha_a = faer::Mat::from_fn(r, k, |_, _| gr.next_normal() * 0.01);
                    let alpha_b = faer::Mat::from_fn(k, r, |_, _| gr.next_normal() * 0.01);
                    (m.clone(), Coefficients { alpha_a, alpha_b })
                })
                .collect();
            let c = CoeffFile {
                subspace_id: bundle.manifest.subspace_id.clone(),
                task: format!("t{i}"),
                provenance: Provenance::Projected,
                modules,
                head: None,
            };
            g.engine().insert_task(&c).expect("task")
        })
        .collect();
    // Decode with one task.
    let short: Vec<u32> = prompt[..32].to_vec();
    let mut seq = g.sequence(tasks[0]).expect("seq");
    g.feed(&mut [&mut seq], &[&short]).expect("prefill");
    let steps = 32;
    let t = Instant::now();
    for _ in 0..steps {
        let x = argmax(seq.logits()) as u32;
        g.feed(&mut [&mut seq], &[&[x]]).expect("decode");
    }
    let decode_task_s = t.elapsed().as_secs_f64() / steps as f64;
    // Task switch: opening a request on another task (its coefficients pinned), repeated.
    let reps = 10_000;
    let t = Instant::now();
    for i in 0..reps {
        std::hint::black_box(g.sequence(tasks[i % 8]).expect("seq"));
    }
    let switch_s = t.elapsed().as_secs_f64() / reps as f64;
    // 8 requests, 8 tasks: one batch against one after another.
    let new = 32;
    let reqs: Vec<Request> = tasks
        .iter()
        .enumerate()
        .map(|(i, &task)| Request {
            task,
            prompt: prompt[i..i + 32].to_vec(),
            options: GenerateOptions {
                max_tokens: new,
                ..Default::default()
            },
        })
        .collect();
    let t = Instant::now();
    let together = g.generate_batch(&reqs).expect("batch");
    let batch_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut alone = Vec::new();
    for r in &reqs {
        let mut toks = Vec::new();
        g.generate(r.task, &r.prompt, &r.options, &mut |t| {
            toks.push(t.id);
            true
        })
        .expect("alone");
        alone.push(toks);
    }
    let sequential_s = t.elapsed().as_secs_f64();
    let same = together
        .iter()
        .zip(&alone)
        .filter(|(a, b)| a.tokens.iter().map(|t| t.id).collect::<Vec<_>>() == **b)
        .count();
    // Where a row of the batch leaves the request run alone: the step, and the alone run's
    // margin between its top two logits there (a near-tie that rounding can flip, or not).
    let mut divergent = Vec::new();
    for (row, (a, b)) in together.iter().zip(&alone).enumerate() {
        let ids: Vec<u32> = a.tokens.iter().map(|t| t.id).collect();
        let Some(step) = ids.iter().zip(b).position(|(x, y)| x != y) else {
            continue;
        };
        let mut context = reqs[row].prompt.clone();
        context.extend_from_slice(&b[..step]);
        let mut seq = g.sequence(reqs[row].task).expect("seq");
        g.feed(&mut [&mut seq], &[&context]).expect("rescore");
        let mut top: Vec<f32> = seq.logits().to_vec();
        top.sort_by(|x, y| y.total_cmp(x));
        divergent
            .push(serde_json::json!({"row": row, "step": step, "top2_margin": top[0] - top[1]}));
    }
    let out = serde_json::json!({
        "engine": engine.name(),
        "threads": threads,
        "tokens_per_call": tokens_per_call,
        "weights": weights.name(),
        "held_out": held_out,
        "held_out_tokens": nll.len(),
        "perplexity": perplexity,
        "load_s": load_s,
        "prompt_tokens": n_prompt,
        "new_tokens": n_new,
        "prefill_tok_s": n_prompt as f64 / prefill_s,
        "ttft_s": ttft_s,
        "decode_tok_s": n_new as f64 / decode_s,
        "weights_bytes": weights_bytes,
        "kv_bytes": kv_bytes,
        "rss_after_load_kib": rss_loaded,
        "peak_rss_base_kib": peak_base_kib,
        "peak_rss_base_scored_kib": peak_scored_kib,
        "peak_over_weights_plus_kv": peak_base_kib as f64 * 1024.0 / (weights_bytes as f64 + kv_bytes as f64),
        "subspace": {"modules": bundle.subspace.modules.len(), "k": k, "r": r},
        "decode_with_task_tok_s": 1.0 / decode_task_s,
        "task_switch_us": switch_s * 1e6,
        "batch8_tok_s": (8 * new) as f64 / batch_s,
        "sequential8_tok_s": (8 * new) as f64 / sequential_s,
        "batch_over_sequential": sequential_s / batch_s,
        "batch_rows_equal_alone": same,
        "batch_rows_divergent": divergent,
        "peak_rss_kib": vm("VmHWM:"),
    });
    println!("{out}");
    let _ = std::fs::remove_dir_all(&work);
}
