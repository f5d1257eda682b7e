//! The decoder graph on its own: one plan with symbolic shapes serves the prompt pass and
//! every decode step, and a step with the cache equals the full run's last row.

use super::support::*;
use eigenlorax::graph::llama;

#[test]
fn a_decode_step_with_the_cache_equals_the_full_runs_last_row() {
    for tied in [false, true] {
        let cfg = tiny_config(tied);
        let mut w = RandomWeights::new(&cfg, 7);
        let model = llama::build(&cfg, &mut w, "tiny").expect("build");
        let plan = tract_plan(&model);
        let ids: Vec<i64> = vec![3, 17, 42, 5, 60, 11, 29];
        let empty: Vec<Vec<f32>> = vec![Vec::new(); 2 * cfg.layers];
        let (full, _) = run_step(&plan, &cfg, &ids, &empty, 0);
        // Prompt of 4, then 3 single-token steps through the cache.
        let (mut logits, mut past) = run_step(&plan, &cfg, &ids[..4], &empty, 0);
        let v = cfg.vocab;
        assert!(max_abs_diff(&logits, &full[..4 * v]) < 1e-5);
        for (i, &t) in ids.iter().enumerate().skip(4) {
            let (l, p) = run_step(&plan, &cfg, &[t], &past, i);
            let row = &full[i * v..(i + 1) * v];
            let scale = row.iter().fold(1f32, |m, x| m.max(x.abs()));
            let d = max_abs_diff(&l, row);
            // f32 sums over a different number of terms: equal to rounding.
            assert!(
                d < 2e-6 * scale,
                "tied {tied} step {i}: {d} (scale {scale})"
            );
            logits = l;
            past = p;
        }
        assert_eq!(logits.len(), v);
        assert_eq!(past[0].len(), cfg.kv_heads * ids.len() * cfg.head_dim);
    }
}

#[test]
fn logits_positions_select_rows_of_the_full_logits_and_leave_the_cache_alone() {
    let cfg = tiny_config(true);
    let mut w = RandomWeights::new(&cfg, 11);
    let model = llama::build(&cfg, &mut w, "tiny").expect("build");
    let plan = tract_plan(&model);
    let ids: Vec<i64> = vec![3, 17, 42, 5, 60, 11, 29];
    let empty: Vec<Vec<f32>> = vec![Vec::new(); 2 * cfg.layers];
    let v = cfg.vocab;
    let (full, full_cache) = run_step(&plan, &cfg, &ids, &empty, 0);
    assert_eq!(full.len(), ids.len() * v);
    // The last position only (what a decode step reads), a repeat, and a negative index
    // (counted from the end, as ONNX Gather does).
    for positions in [vec![6i64], vec![0, 2, 2, 5], vec![-1, 1]] {
        let (some, cache) = run_step_at(&plan, &cfg, &ids, &empty, 0, &positions);
        assert_eq!(some.len(), positions.len() * v, "{positions:?}");
        for (j, &p) in positions.iter().enumerate() {
            let p = p.rem_euclid(ids.len() as i64) as usize;
            let d = max_abs_diff(&some[j * v..(j + 1) * v], &full[p * v..(p + 1) * v]);
            assert!(d < 1e-6, "{positions:?}: position {p} differs by {d}");
        }
        for (c, f) in cache.iter().zip(&full_cache) {
            assert_eq!(max_abs_diff(c, f), 0.0, "{positions:?}: the cache changed");
        }
    }
}
