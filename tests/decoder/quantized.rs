//! Base weights stored as Q4_0 on tract (`WeightFormat::Q4_0`): the logits equal those of the
//! model whose product weights went through a Q4_0 round trip (an implementation here, not
//! tract's), the subspace's own products stay f32, and a tied LM head quantizes too.

use super::support::*;
use eigenlorax::serve::Backend;
use eigenlorax::serve::backend::WeightFormat;
use eigenlorax::serve::generate::Generator;

fn temp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("elx-dec-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

/// ggml's Q4_0 round trip of `w` ([out, in] row-major, blocks of 32 along `in`): per block
/// the scale d = m / -8 for m the value of largest magnitude, stored as f16; codes
/// `min(15, trunc(x / d + 8.5))`; values `(code - 8) · d`.
fn q4_0_round_trip(w: &[f32]) -> Vec<f32> {
    w.chunks(32)
        .flat_map(|block| {
            let m = block
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = m / -8.0;
            let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
            let stored = half::f16::from_f32(d).to_f32();
            block
                .iter()
                .map(move |&x| {
                    let code = ((x * inv + 8.5) as i32).clamp(0, 15);
                    (code - 8) as f32 * stored
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The fixture with every matrix-product weight (projections and LM head, not the token
/// embedding the Gather reads) whose input width is a multiple of 32 through the Q4_0 round
/// trip (here hidden 32 is, the MLP's 48 is not: down_proj stays f32).
fn quantized(f: &Fixture) -> Fixture {
    let mut weights = f.weights.clone();
    for (name, (shape, v)) in weights.tensors.iter_mut() {
        if (name.ends_with("_proj.weight") || name == "lm_head.weight") && shape[1] % 32 == 0 {
            *v = q4_0_round_trip(v);
        }
    }
    Fixture {
        cfg: f.cfg.clone(),
        weights,
        model: f.model.clone(),
        bundle: f.bundle.clone(),
    }
}

fn reference_logits(f: &Fixture, w: &RandomWeights, ids: &[u32]) -> Vec<f32> {
    let model = eigenlorax::graph::llama::build(&f.cfg, &mut w.clone(), "ref").expect("build");
    let plan = tract_plan(&model);
    let empty: Vec<Vec<f32>> = vec![Vec::new(); 2 * f.cfg.layers];
    let ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    run_step(&plan, &f.cfg, &ids, &empty, 0).0
}

#[test]
fn q4_0_weights_give_the_round_tripped_models_logits_with_the_subspace_in_f32() {
    let dir = temp("q40");
    let f = fixture(&dir, false);
    let c = coeffs(&f.bundle, 7, "t", 0.6);
    let prompt = [1u32, 5, 9, 13, 2, 7, 40, 41];

    let q = Generator::load_with(&f.model, &f.bundle, Backend::Tract, WeightFormat::Q4_0)
        .expect("q4_0 generator");
    let id = q.engine().insert_task(&c).expect("task");
    let ours = q.score(id, &prompt).expect("score");

    // The reference: round-tripped base weights, with the task's ΔW merged in f32.
    let fq = quantized(&f);
    let want = reference_logits(&f, &merged(&fq, &c), &prompt);
    let d = max_abs_diff(&ours, &want);
    // The same model had the subspace been quantized too, or the weights not at all, is
    // much further away.
    let f32_logits = reference_logits(&f, &merged(&f, &c), &prompt);
    let far = max_abs_diff(&want, &f32_logits);
    assert!(d < 2e-3, "q4_0 engine vs round-tripped reference: {d}");
    assert!(
        far > 50.0 * d,
        "quantization changed the logits by {far} only (vs {d})"
    );

    // Greedy generation through the cache matches the reference's full re-runs.
    let mut toks = Vec::new();
    let opts = eigenlorax::serve::generate::GenerateOptions {
        max_tokens: 10,
        ..Default::default()
    };
    q.generate(id, &prompt, &opts, &mut |t| {
        toks.push(t.id);
        true
    })
    .expect("generate");
    assert_eq!(
        toks,
        greedy_reference(&f.cfg, &merged(&fq, &c), &prompt, 10)
    );
}

#[test]
fn a_tied_lm_head_is_quantized_and_the_embedding_lookup_stays_f32() {
    let dir = temp("q40tied");
    let f = fixture(&dir, true);
    let prompt = [3u32, 1, 4, 1, 5, 9, 2, 6];
    let q = Generator::load_with(&f.model, &f.bundle, Backend::Tract, WeightFormat::Q4_0)
        .expect("q4_0 generator");
    let id = q
        .engine()
        .insert_task(&eigenlorax::bundle::CoeffFile::base(
            &f.bundle.manifest.subspace_id,
        ))
        .expect("base task");
    let ours = q.score(id, &prompt).expect("score");
    // Tied: the head reads the embedding transposed; only the head's copy is quantized, so
    // the reference keeps the embedding for the lookup and uses the round trip for the head.
    // That is the untied model whose lm_head is the embedding's round trip.
    let mut w = quantized(&f).weights;
    let (shape, emb) = f.weights.tensors["model.embed_tokens.weight"].clone();
    let mut cfg = f.cfg.clone();
    cfg.tied_embeddings = false;
    w.tensors
        .insert("lm_head.weight".into(), (shape, q4_0_round_trip(&emb)));
    let model = eigenlorax::graph::llama::build(&cfg, &mut w, "ref").expect("build");
    let plan = tract_plan(&model);
    let empty: Vec<Vec<f32>> = vec![Vec::new(); 2 * cfg.layers];
    let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
    let want = run_step(&plan, &cfg, &ids, &empty, 0).0;
    let d = max_abs_diff(&ours, &want);
    assert!(d < 2e-3, "tied q4_0 vs reference: {d}");
}

#[test]
fn weight_formats_parse_by_name_and_an_unknown_one_is_refused() {
    assert_eq!("q4_0".parse::<WeightFormat>().unwrap(), WeightFormat::Q4_0);
    assert_eq!("Q4_1".parse::<WeightFormat>().unwrap(), WeightFormat::Q4_1);
    assert_eq!("F32".parse::<WeightFormat>().unwrap(), WeightFormat::F32);
    let e = "q8".parse::<WeightFormat>().unwrap_err().to_string();
    assert!(
        e.contains("`f32`, `q4_0` or `q4_1`") && e.contains("q8"),
        "{e}"
    );
}
