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
