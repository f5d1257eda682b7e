//! A pool's structure: every adapter in the span of every other one alone
//! ([`pairwise_capture`]), the clusters of adapters that capture each other strongly
//! ([`clusters`]), the spread of held-out captures ([`Distribution`]) and a verdict per
//! cluster and for the rest ([`structure`]).

use super::verdict::verdict_with;
use super::{GAIN_CAPTURE, Gain, HeldOut, Pool, Verdict, chance_capture};
use crate::error::Result;
use crate::linalg;
use crate::subspace::{self, ExtractOptions, KRule, ModuleSubspace};
use std::collections::BTreeMap;
use std::path::Path;

/// Mutual capture at or above which two adapters are linked in the capture graph of
/// [`clusters`]: each puts at least this share of its ΔW inside the span of the other alone.
/// Fixed before any pool was measured against it (issue 28), from what was known then:
/// unrelated adapters of real models put about (r/in)·(r/out), far below 1%, of their ΔW in
/// one another's span, and the WordNet family's held-out adapters 0.3–3.9% in one other
/// adapter's energy-0.9 subspace (capture vs N at N = 1). Measured afterwards (kept, not
/// tuned): on WordNet, pairs of tasks that share a category (`event_vs_feeling` and
/// `feeling_vs_process`) link at this edge, four clusters of 2–4; on MiniLM no pair does.
pub const CLUSTER_EDGE_CAPTURE: f64 = 0.05;

/// A link also needs the mutual capture to be this many times the chance of the pair
/// ((r_j/in)·(r_j/out) per module), so that tiny modules, where 5% is chance, link nothing.
pub const CLUSTER_EDGE_OVER_CHANCE: f64 = 10.0;

/// Smallest group of linked adapters reported as a cluster.
pub const CLUSTER_MIN_SIZE: usize = 2;

/// Share of adapter `i`'s ΔW inside the span of adapter `j` alone.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PairCapture {
    /// ‖P_Bj·ΔW_i·P_Aj‖² / ‖ΔW_i‖² over the modules both have (weighted by ‖ΔW_i‖²), with
    /// P_Aj, P_Bj the projections on the row space of A_j and column space of B_j.
    pub captured: f64,
    /// The chance of the same sizes, (r_j/in)·(r_j/out) per module, weighted the same way.
    pub chance: f64,
}

/// Every adapter of `pool` in the span of every other one alone (N = 1, the whole span of
/// each: nothing truncated): `[i][j]` is `i` in `j`; the diagonal is `None`. A module whose
/// ΔW is zero in `j` spans nothing; adapters with no module in common capture nothing.
pub fn pairwise_capture(pool: &Pool) -> Result<Vec<Vec<Option<PairCapture>>>> {
    let full = ExtractOptions {
        canonicalize: true,
        center: false,
        k_rule_a: KRule::Energy(1.0),
        k_rule_b: KRule::Energy(1.0),
        pseudo: 0,
        seed: 0,
        full_spectrum: false,
    };
    let n = pool.len();
    // Each adapter's own span, per module (None: a zero ΔW).
    let mut spans: Vec<BTreeMap<&str, Option<ModuleSubspace>>> = Vec::with_capacity(n);
    for mods in &pool.modules {
        let mut m = BTreeMap::new();
        for (name, lora) in mods {
            let space = if subspace::is_zero_delta(lora) {
                None
            } else {
                Some(subspace::extract_module(std::slice::from_ref(lora), &full)?)
            };
            m.insert(name.as_str(), space);
        }
        spans.push(m);
    }
    let energies: Vec<BTreeMap<&str, f64>> = pool
        .modules
        .iter()
        .map(|mods| {
            mods.iter()
                .map(|(k, m)| {
                    (
                        k.as_str(),
                        linalg::lowrank_frob(m.b.as_ref(), m.a.as_ref()).powi(2),
                    )
                })
                .collect()
        })
        .collect();
    let mut out = vec![vec![None; n]; n];
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let (mut cap, mut chance, mut total) = (0.0, 0.0, 0.0);
            for (name, m) in &pool.modules[i] {
                let e = energies[i][name.as_str()];
                if e <= 0.0 {
                    continue;
                }
                let Some(span) = spans[j].get(name.as_str()) else {
                    continue;
                };
                total += e;
                if let Some(ms) = span {
                    let c = subspace::captured_energy(m, ms);
                    if c.is_finite() {
                        cap += e * c;
                    }
                    chance += e * chance_capture(
                        ms.v_a.nrows(),
                        ms.in_features,
                        ms.v_b.ncols(),
                        ms.out_features,
                    );
                }
            }
            out[i][j] = Some(if total > 0.0 {
                PairCapture {
                    captured: cap / total,
                    chance: chance / total,
                }
            } else {
                PairCapture {
                    captured: 0.0,
                    chance: 0.0,
                }
            });
        }
    }
    Ok(out)
}

/// Groups of adapters that capture each other strongly: the connected components, of at
/// least [`CLUSTER_MIN_SIZE`] adapters, of the graph that links `i` and `j` when both
/// `pair[i][j]` and `pair[j][i]` reach [`CLUSTER_EDGE_CAPTURE`] and [`CLUSTER_EDGE_OVER_CHANCE`]
/// times their chance. Each cluster lists indices ascending; clusters are ordered by their
/// first member.
pub fn clusters(pair: &[Vec<Option<PairCapture>>]) -> Vec<Vec<usize>> {
    let n = pair.len();
    let strong = |p: Option<PairCapture>| {
        p.is_some_and(|p| {
            p.captured >= CLUSTER_EDGE_CAPTURE && p.captured >= CLUSTER_EDGE_OVER_CHANCE * p.chance
        })
    };
    let mut seen = vec![false; n];
    let mut out = Vec::new();
    for start in 0..n {
        if seen[start] {
            continue;
        }
        seen[start] = true;
        let mut comp = vec![start];
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            for (j, s) in seen.iter_mut().enumerate() {
                let linked = strong(pair.get(i).and_then(|r| r.get(j).copied().flatten()))
                    && strong(pair.get(j).and_then(|r| r.get(i).copied().flatten()));
                if !*s && linked {
                    *s = true;
                    comp.push(j);
                    stack.push(j);
                }
            }
        }
        if comp.len() >= CLUSTER_MIN_SIZE {
            comp.sort_unstable();
            out.push(comp);
        }
    }
    out
}

/// The spread of held-out captures over a group of adapters.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Distribution {
    /// Adapters in the group.
    pub n: usize,
    /// Smallest capture.
    pub min: f64,
    /// First quartile (linear interpolation between order statistics).
    pub q1: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub q3: f64,
    /// Largest capture.
    pub max: f64,
    /// Median of the random controls.
    pub random_median: f64,
    /// How many capture at least [`GAIN_CAPTURE`].
    pub above_gain: usize,
}

/// The `q`-quantile of sorted values, interpolating linearly (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let x = q * (n - 1) as f64;
            let lo = x.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (x - lo as f64) * (sorted[hi] - sorted[lo])
        }
    }
}

impl Distribution {
    /// The distribution of `rows[i].recycled` over `members` (all rows when `None`).
    pub fn of(rows: &[HeldOut], members: Option<&[usize]>) -> Distribution {
        let picked: Vec<&HeldOut> = match members {
            Some(m) => m.iter().filter_map(|&i| rows.get(i)).collect(),
            None => rows.iter().collect(),
        };
        let mut caps: Vec<f64> = picked.iter().map(|h| h.recycled.captured).collect();
        let mut rand: Vec<f64> = picked.iter().map(|h| h.recycled.random).collect();
        caps.sort_by(f64::total_cmp);
        rand.sort_by(f64::total_cmp);
        Distribution {
            n: caps.len(),
            min: caps.first().copied().unwrap_or(f64::NAN),
            q1: quantile(&caps, 0.25),
            median: quantile(&caps, 0.5),
            q3: quantile(&caps, 0.75),
            max: caps.last().copied().unwrap_or(f64::NAN),
            random_median: quantile(&rand, 0.5),
            above_gain: caps.iter().filter(|&&c| c >= GAIN_CAPTURE).count(),
        }
    }

    /// The verdict for new tasks like these adapters, from the median capture and the median
    /// random control (a few outliers do not move it).
    pub fn verdict(&self) -> Verdict {
        verdict_with(
            self.median,
            self.random_median,
            "the median held-out adapter puts",
            "its",
        )
    }
}

/// One cluster of a pool with its verdict.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cluster {
    /// Indices into the pool, ascending.
    pub members: Vec<usize>,
    /// Their held-out captures.
    pub distribution: Distribution,
    /// For new tasks like the cluster's.
    pub verdict: Verdict,
}

/// A pool's held-out captures seen as a whole, as clusters, and as the rest.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Structure {
    /// Every held-out adapter.
    pub all: Distribution,
    /// Clusters of adapters that capture each other strongly ([`clusters`]).
    pub clusters: Vec<Cluster>,
    /// The adapters in no cluster (empty when every adapter is in one).
    pub rest: Vec<usize>,
    /// Their distribution (`n` = 0 when none).
    pub rest_distribution: Distribution,
    /// The verdict for the rest; for the whole pool when there is no cluster.
    pub verdict: Verdict,
    /// One line for people: the verdict for the rest and for each cluster.
    pub line: String,
}

/// The verdict per cluster and for the rest, from the held-out rows of a pool and its
/// pairwise captures. `names` label the cluster members (the pool's names).
pub fn structure(
    rows: &[HeldOut],
    pair: &[Vec<Option<PairCapture>>],
    names: &[String],
) -> Structure {
    let all = Distribution::of(rows, None);
    let found = clusters(pair);
    let in_cluster: Vec<bool> = (0..rows.len())
        .map(|i| found.iter().any(|c| c.contains(&i)))
        .collect();
    let rest: Vec<usize> = (0..rows.len()).filter(|&i| !in_cluster[i]).collect();
    let rest_distribution = Distribution::of(rows, Some(&rest));
    let clusters: Vec<Cluster> = found
        .into_iter()
        .map(|members| {
            let d = Distribution::of(rows, Some(&members));
            Cluster {
                verdict: d.verdict(),
                distribution: d,
                members,
            }
        })
        .collect();
    let verdict = if clusters.is_empty() {
        all.verdict()
    } else {
        rest_distribution.verdict()
    };
    let gain_words = |g: Gain| match g {
        Gain::Expected => "expected gain",
        Gain::Partial => "partial gain at best",
        Gain::None => "no gain expected",
    };
    let line = if clusters.is_empty() {
        format!(
            "new tasks like these: {} (no cluster of adapters that capture each other; median {:.1}%, quartiles {:.1}–{:.1}%, {} of {} at or above {:.0}%)",
            verdict.line.trim_start_matches("new tasks like these: "),
            100.0 * all.median,
            100.0 * all.q1,
            100.0 * all.q3,
            all.above_gain,
            all.n,
            100.0 * GAIN_CAPTURE
        )
    } else {
        let mut parts = Vec::new();
        if rest_distribution.n > 0 {
            parts.push(format!(
                "{} for {} of {} held-out adapters, the ones in no cluster (median {:.1}%, {:.1}–{:.1}%; random {:.2}%)",
                gain_words(verdict.gain),
                rest_distribution.n,
                rows.len(),
                100.0 * rest_distribution.median,
                100.0 * rest_distribution.min,
                100.0 * rest_distribution.max,
                100.0 * rest_distribution.random_median
            ));
        }
        for c in &clusters {
            let shown: Vec<String> = c
                .members
                .iter()
                .take(4)
                .filter_map(|&i| names.get(i).map(|n| short_name(Path::new(n))))
                .collect();
            let more = c.members.len().saturating_sub(shown.len());
            parts.push(format!(
                "a cluster of {} ({}{}) shares {:.1}–{:.1}% (median {:.1}%): {} for tasks like those",
                c.members.len(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
                100.0 * c.distribution.min,
                100.0 * c.distribution.max,
                100.0 * c.distribution.median,
                gain_words(c.verdict.gain)
            ));
        }
        format!("new tasks: {}", parts.join("; "))
    };
    Structure {
        all,
        clusters,
        rest,
        rest_distribution,
        verdict,
        line,
    }
}

/// A path's file name for tables (the last component, or the path itself).
pub fn short_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}
