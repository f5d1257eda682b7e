//! Generation through the engine: the patched decoder against the merged weights, the cache
//! against full re-runs, mixed-task batches against requests run alone, pinned tasks.

use super::support::*;
use eigenlorax::serve::Backend;
use eigenlorax::serve::generate::{Finish, GenerateOptions, Generator, Request};

fn temp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("elx-dec-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens: n,
        ..Default::default()
    }
}

#[test]
fn patched_generation_equals_the_merged_model_and_a_batch_of_tasks_equals_each_alone() {
    let dir = temp("gen");
    let f = fixture(&dir, false);
    let g = Generator::load(&f.model, &f.bundle, Backend::Tract).expect("generator");
    // Coefficients large enough to change the greedy path of a random model.
    let tasks: Vec<_> = (0..3)
        .map(|i| coeffs(&f.bundle, 40 + i, &format!("t{i}"), 0.6))
        .collect();
    let ids: Vec<_> = tasks
        .iter()
        .map(|c| g.engine().insert_task(c).expect("task"))
        .collect();
    let prompts: [&[u32]; 3] = [&[1, 2, 3, 4, 5], &[9, 8], &[30, 31, 32, 33, 34, 35, 36, 37]];
    let n = 12;

    // Alone: the cache-based generator equals full re-runs of the merged model.
    let mut alone = Vec::new();
    for ((c, &id), p) in tasks.iter().zip(&ids).zip(prompts) {
        let mut toks = Vec::new();
        let fin = g
            .generate(id, p, &greedy(n), &mut |t| {
                toks.push(t.id);
                true
            })
            .expect("generate");
        assert_eq!(fin, Finish::Length);
        let reference = greedy_reference(&f.cfg, &merged(&f, c), p, n);
        assert_eq!(toks, reference, "task {}", c.task);
        alone.push(toks);
    }
    // The three tasks do lead to different outputs (the test would be vacuous otherwise).
    assert_ne!(alone[0], alone[1]);

    // Together, one batch per step (different tasks, prompt lengths and cache lengths).
    let reqs: Vec<Request> = ids
        .iter()
        .zip(prompts)
        .map(|(&task, p)| Request {
            task,
            prompt: p.to_vec(),
            options: greedy(n),
        })
        .collect();
    let batch = g.generate_batch(&reqs).expect("batch");
    for (b, a) in batch.iter().zip(&alone) {
        let toks: Vec<u32> = b.tokens.iter().map(|t| t.id).collect();
        assert_eq!(&toks, a);
        assert_eq!(b.finish, Finish::Length);
    }

    // Logits of one mixed step equal each row's own step, to rounding.
    let mut s: Vec<_> = ids.iter().map(|&id| g.sequence(id).expect("seq")).collect();
    let mut solo: Vec<_> = ids.iter().map(|&id| g.sequence(id).expect("seq")).collect();
    {
        let mut rows: Vec<_> = s.iter_mut().collect();
        g.feed(&mut rows, &prompts).expect("feed batch");
    }
    for (x, p) in solo.iter_mut().zip(prompts) {
        g.feed(&mut [x], &[p]).expect("feed alone");
    }
    for (a, b) in s.iter().zip(&solo) {
        assert_eq!(a.len(), b.len());
        let d = max_abs_diff(a.logits(), b.logits());
        assert!(d < 1e-4, "{d}");
    }
}

#[test]
fn a_request_keeps_its_task_when_the_task_is_replaced_and_bad_feeds_are_refused() {
    let dir = temp("pin");
    let f = fixture(&dir, true);
    let g = Generator::load(&f.model, &f.bundle, Backend::Tract).expect("generator");
    let c0 = coeffs(&f.bundle, 1, "t", 0.6);
    let c1 = coeffs(&f.bundle, 2, "t", 0.6);
    let id = g.engine().insert_task(&c0).expect("task");
    let mut seq = g.sequence(id).expect("seq");
    g.feed(&mut [&mut seq], &[&[3, 4, 5]]).expect("feed");
    g.engine().replace_task(id, &c1).expect("replace");
    g.feed(&mut [&mut seq], &[&[6]]).expect("feed");
    // The pinned request still runs c0: its logits are those of c0's merged model.
    let plan = tract_plan(
        &eigenlorax::graph::llama::build(&f.cfg, &mut merged(&f, &c0), "m").expect("build"),
    );
    let empty: Vec<Vec<f32>> = vec![Vec::new(); 2 * f.cfg.layers];
    let (full, _) = run_step(&plan, &f.cfg, &[3, 4, 5, 6], &empty, 0);
    let last = &full[3 * f.cfg.vocab..];
    assert!(max_abs_diff(seq.logits(), last) < 1e-4);
    // A new request gets c1.
    let mut s1 = g.sequence(id).expect("seq");
    g.feed(&mut [&mut s1], &[&[3, 4, 5, 6]]).expect("feed");
    assert!(max_abs_diff(s1.logits(), last) > 1e-3);

    let e = g
        .feed(&mut [&mut s1], &[&[f.cfg.vocab as u32]])
        .expect_err("id");
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    let long: Vec<u32> = vec![1; f.cfg.max_position];
    let e = g.feed(&mut [&mut s1], &[&long]).expect_err("context");
    assert!(
        e.to_string().contains("exceed the model's context of 64"),
        "{e}"
    );
    assert_eq!(s1.len(), 4, "a refused feed changes nothing");
    let e = g.feed(&mut [&mut s1], &[&[]]).expect_err("empty");
    assert!(e.to_string().contains("no new tokens"), "{e}");
}

#[test]
fn prompts_fed_in_calls_of_a_few_positions_give_what_one_call_gives() {
    let dir = temp("calls");
    let f = fixture(&dir, false);
    let whole = Generator::load(&f.model, &f.bundle, Backend::Tract).expect("generator");
    let tasks: Vec<_> = (0..3)
        .map(|i| coeffs(&f.bundle, 60 + i, &format!("t{i}"), 0.6))
        .map(|c| whole.engine().insert_task(&c).expect("task"))
        .collect();
    let prompts: [&[u32]; 3] = [&[1, 2, 3, 4, 5], &[9, 8], &[30, 31, 32, 33, 34, 35, 36, 37]];
    // 7 positions a call: a batch of 3 takes 2 tokens a row a call (4 calls), alone 7.
    let mut split = whole.clone();
    split.set_tokens_per_call(7);
    assert_eq!(split.tokens_per_call(), 7);
    assert!(
        whole.tokens_per_call() >= 24,
        "the default feeds these prompts in one call"
    );

    // A batch: every row's next-token logits, and the cache they grow, as after one call.
    let mut a: Vec<_> = tasks
        .iter()
        .map(|&t| whole.sequence(t).expect("seq"))
        .collect();
    let mut b: Vec<_> = tasks
        .iter()
        .map(|&t| split.sequence(t).expect("seq"))
        .collect();
    whole
        .feed(&mut a.iter_mut().collect::<Vec<_>>(), &prompts)
        .expect("one call");
    split
        .feed(&mut b.iter_mut().collect::<Vec<_>>(), &prompts)
        .expect("in calls");
    for (x, y) in a.iter_mut().zip(b.iter_mut()) {
        assert_eq!(x.len(), y.len());
        let d = max_abs_diff(x.logits(), y.logits());
        assert!(d < 1e-5, "next-token logits differ by {d}");
        // The caches agree: one more token gives the same logits.
        whole.feed(&mut [x], &[&[7]]).expect("step");
        split.feed(&mut [y], &[&[7]]).expect("step");
        let d = max_abs_diff(x.logits(), y.logits());
        assert!(d < 1e-5, "logits after the caches differ by {d}");
    }

    // Scoring: every position's logits, and the per-token NLLs of a batch.
    let long: Vec<u32> = (0..23).map(|i| (i * 7 + 3) % 40).collect();
    let (sa, sb) = (
        whole.score(tasks[0], &long).expect("score"),
        split.score(tasks[0], &long).expect("score in calls"),
    );
    assert_eq!(sa.len(), long.len() * whole.vocab());
    assert_eq!(sb.len(), sa.len());
    assert!(max_abs_diff(&sa, &sb) < 1e-5);
    let rows: Vec<(_, &[u32])> = vec![
        (tasks[1], &long),
        (tasks[2], &long[..4]),
        (tasks[0], &long[5..]),
    ];
    let (na, nb) = (
        whole.token_nll_batch(&rows).expect("nll"),
        split.token_nll_batch(&rows).expect("nll in calls"),
    );
    for ((x, y), (_, ids)) in na.iter().zip(&nb).zip(&rows) {
        assert_eq!(x.len(), ids.len() - 1);
        assert_eq!(y.len(), x.len());
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        }
    }
    // One position a call, and the generations agree token for token.
    split.set_tokens_per_call(0);
    assert_eq!(split.tokens_per_call(), 1);
    let mut out = [Vec::new(), Vec::new()];
    for (g, o) in [&whole, &split].into_iter().zip(out.iter_mut()) {
        g.generate(tasks[2], prompts[2], &greedy(10), &mut |t| {
            o.push(t.id);
            true
        })
        .expect("generate");
    }
    assert_eq!(out[0], out[1]);
    assert_eq!(out[0].len(), 10);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `model` as imported before `logits_positions` existed: the head reads every position.
fn without_logits_positions(
    mut model: eigenlorax::graph::ModelProto,
    vocab: usize,
) -> eigenlorax::graph::ModelProto {
    use eigenlorax::graph::llama::{LOGITS, LOGITS_POSITIONS};
    let g = model.graph.as_mut().expect("graph");
    let at = g
        .node
        .iter()
        .position(|n| n.input.iter().any(|i| i == LOGITS_POSITIONS))
        .expect("the positions' Gather");
    let gather = g.node.remove(at);
    for n in &mut g.node {
        for i in &mut n.input {
            if *i == gather.output[0] {
                *i = gather.input[0].clone();
            }
        }
    }
    g.input.retain(|i| i.name != LOGITS_POSITIONS);
    let out = g
        .output
        .iter_mut()
        .find(|o| o.name == LOGITS)
        .expect("logits");
    *out = eigenlorax::graph::onnx::value_info(
        LOGITS,
        eigenlorax::graph::onnx::FLOAT,
        &[
            eigenlorax::graph::onnx::Dim::Param("batch".into()),
            eigenlorax::graph::onnx::Dim::Param("sequence".into()),
            eigenlorax::graph::onnx::Dim::Fixed(vocab),
        ],
    );
    model
}

#[test]
fn a_model_without_logits_positions_generates_and_scores_the_same() {
    let (new_dir, old_dir) = (temp("lp-new"), temp("lp-old"));
    let cfg = tiny_config(true);
    let vocab = cfg.vocab;
    let weights = RandomWeights::new(&cfg, 11);
    let new = fixture_with(&new_dir, cfg.clone(), weights.clone());
    let built = eigenlorax::graph::llama::build(&cfg, &mut weights.clone(), "tiny").expect("build");
    let old = fixture_with_model(
        &old_dir,
        cfg,
        weights,
        &without_logits_positions(built, vocab),
    );
    let gens: Vec<Generator> = [&new, &old]
        .iter()
        .map(|f| Generator::load(&f.model, &f.bundle, Backend::Tract).expect("generator"))
        .collect();
    assert!(gens[0].decoder().logits_positions && !gens[1].decoder().logits_positions);
    let c = coeffs(&new.bundle, 70, "t", 0.6);
    let ids: Vec<_> = gens
        .iter()
        .map(|g| g.engine().insert_task(&c).expect("task"))
        .collect();
    let prompt: &[u32] = &[30, 31, 32, 33, 34, 35, 36, 37, 2, 5];
    // Per model: greedy tokens, token NLLs of two rows, every position's logits.
    type Outputs = (Vec<u32>, Vec<Vec<f64>>, Vec<f32>);
    let mut out: Vec<Outputs> = Vec::new();
    for (g, &id) in gens.iter().zip(&ids) {
        let mut g2 = Generator::new(g.engine().clone()).expect("generator");
        // 3 positions a call: the prompt's last call reads one position of three.
        g2.set_tokens_per_call(3);
        let mut toks = Vec::new();
        g2.generate(id, prompt, &greedy(12), &mut |t| {
            toks.push(t.id);
            true
        })
        .expect("generate");
        let nll = g2
            .token_nll_batch(&[(id, prompt), (id, &prompt[3..])])
            .expect("nll");
        let scores = g2.score(id, prompt).expect("score");
        out.push((toks, nll, scores));
    }
    assert_eq!(out[0].0, out[1].0, "greedy tokens");
    for (a, b) in out[0].1.iter().zip(&out[1].1) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "nll {x} vs {y}");
        }
    }
    assert_eq!(out[0].2.len(), prompt.len() * vocab);
    assert!(max_abs_diff(&out[0].2, &out[1].2) < 1e-5);
}
