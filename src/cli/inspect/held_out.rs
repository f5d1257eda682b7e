//! `--held-out`: each adapter against the subspace of the others, the capture against N, the
//! pool's clusters and the verdict, printed (and plotted with `--plot`).

use super::pct2;
use crate::cli::{Table, file_size, pct, plot_capture, plot_curve};
use eigenlorax::Result;
use eigenlorax::bundle::Bundle;
use eigenlorax::eval::capture_vs_chance;
use std::path::{Path, PathBuf};

/// `--held-out`: the adapters as a pool, each against the others' subspace, then capture vs N.
pub(super) fn held_out_report(
    b: &Bundle,
    paths: &[PathBuf],
    seed: u64,
    plot: Option<&Path>,
    allow_mixed_bases: bool,
) -> Result<capture_vs_chance::Verdict> {
    let pool = capture_vs_chance::Pool::load_with(paths, allow_mixed_bases)?;
    let options = &b.manifest.options;
    let rows = capture_vs_chance::held_out(&pool, options, seed)?;
    outln!()?;
    outln!(
        "held out, each adapter against the subspace of the other {} (extracted like this bundle):",
        pool.len() - 1
    )?;
    let mut t = Table::new(&[
        "adapter",
        "K_A+K_B",
        "captured",
        "input side",
        "output side",
        "random",
        "chance",
        "mean only",
        "basis only",
        "mean+basis",
    ]);
    for h in &rows {
        t.row(vec![
            h.name.clone(),
            h.k_total.to_string(),
            pct(h.recycled.captured),
            pct(h.recycled.input_side),
            pct(h.recycled.output_side),
            pct2(h.recycled.random),
            pct2(h.recycled.chance),
            pct(h.mean_only),
            pct(h.basis_only),
            pct(h.mean_plus_basis),
        ]);
    }
    let m = capture_vs_chance::HeldOutMean::of(&rows);
    t.row(vec![
        "mean".into(),
        format!("{:.0}", m.k_total),
        pct(m.recycled.captured),
        pct(m.recycled.input_side),
        pct(m.recycled.output_side),
        pct2(m.recycled.random),
        pct2(m.recycled.chance),
        pct(m.mean_only),
        pct(m.basis_only),
        pct(m.mean_plus_basis),
    ]);
    out!("{}", t.render())?;
    outln!(
        "(input / output side: the share inside V_A alone (rows of A) or V_B alone (columns of B); \
         mean only / basis only / mean+basis: the others' centered subspace split into its mean direction and its principal directions)"
    )?;
    let curve = capture_vs_chance::capture_vs_n(
        &pool,
        &capture_vs_chance::doubling_sizes(pool.len() - 1),
        options,
        seed,
    )?;
    outln!()?;
    outln!("capture vs N (every adapter held out against N of the others):")?;
    let mut t = Table::new(&["N", "K_A+K_B", "captured", "min", "max", "random", "chance"]);
    for c in &curve {
        t.row(vec![
            c.n.to_string(),
            format!("{:.0}", c.k_total),
            pct(c.captured),
            pct(c.min),
            pct(c.max),
            pct2(c.random),
            pct2(c.chance),
        ]);
    }
    out!("{}", t.render())?;
    let pair = capture_vs_chance::pairwise_capture(&pool)?;
    let st = capture_vs_chance::structure(&rows, &pair, &pool.names);
    let d = &st.all;
    outln!()?;
    outln!(
        "distribution of the held-out capture: median {}, quartiles {} – {}, min {}, max {}; {} of {} at or above the gain threshold {} (random: median {})",
        pct(d.median),
        pct(d.q1),
        pct(d.q3),
        pct(d.min),
        pct(d.max),
        d.above_gain,
        d.n,
        pct(capture_vs_chance::GAIN_CAPTURE),
        pct2(d.random_median)
    )?;
    if st.clusters.is_empty() {
        outln!(
            "clusters: none (no two adapters put {} or more of their ΔW in each other's span, {}x chance)",
            pct(capture_vs_chance::CLUSTER_EDGE_CAPTURE),
            capture_vs_chance::CLUSTER_EDGE_OVER_CHANCE
        )?;
    } else {
        outln!(
            "clusters (adapters that each put {} or more of their ΔW in the other's span, {}x chance, linked):",
            pct(capture_vs_chance::CLUSTER_EDGE_CAPTURE),
            capture_vs_chance::CLUSTER_EDGE_OVER_CHANCE
        )?;
        let mut t =
            Table::new(&["cluster", "adapters", "median", "min", "max", "verdict"]).left(&[5]);
        for (i, c) in st.clusters.iter().enumerate() {
            t.row(vec![
                (i + 1).to_string(),
                c.members.len().to_string(),
                pct(c.distribution.median),
                pct(c.distribution.min),
                pct(c.distribution.max),
                format!("{:?}", c.verdict.gain).to_lowercase(),
            ]);
        }
        let r = &st.rest_distribution;
        if r.n > 0 {
            t.row(vec![
                "rest".into(),
                r.n.to_string(),
                pct(r.median),
                pct(r.min),
                pct(r.max),
                format!("{:?}", st.verdict.gain).to_lowercase(),
            ]);
        }
        out!("{}", t.render())?;
        for (i, c) in st.clusters.iter().enumerate() {
            let names: Vec<&str> = c
                .members
                .iter()
                .filter_map(|&k| pool.names.get(k).map(String::as_str))
                .collect();
            outln!("  cluster {}: {}", i + 1, names.join(", "))?;
        }
    }
    if let Some(p) = plot {
        let out = plot_curve::path_beside(p, "capture-vs-n");
        plot_curve::write(
            &out,
            &format!("held-out capture vs N ({} adapters)", pool.len()),
            &curve,
        )?;
        outln!("wrote plot {} ({})", out.display(), file_size(&out))?;
        let bars: Vec<plot_capture::Bar> = rows
            .iter()
            .enumerate()
            .map(|(i, h)| plot_capture::Bar {
                name: capture_vs_chance::short_name(Path::new(&h.name)),
                captured: h.recycled.captured,
                random: h.recycled.random,
                cluster: st.clusters.iter().position(|c| c.members.contains(&i)),
            })
            .collect();
        let out = plot_curve::path_beside(p, "capture-per-adapter");
        plot_capture::write(
            &out,
            &format!("held-out capture per adapter ({} adapters)", pool.len()),
            &bars,
        )?;
        outln!("wrote plot {} ({})", out.display(), file_size(&out))?;
    }
    Ok(capture_vs_chance::Verdict {
        gain: st.verdict.gain,
        line: st.line,
    })
}
