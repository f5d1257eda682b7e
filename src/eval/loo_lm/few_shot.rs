//! The few-shot comparison of a held-out task (issue 27, target 2): at each training-set size,
//! coefficients trained in the recycled subspace against the same number trained in a random
//! basis (test NLL), and against a LoRA trained on the host on the same pairs (the lowest
//! validation NLL, and the steps taken to reach it: the paper's Figure 3).

use super::{LmMethod, LmTaskResult};
use crate::error::{Error, Result};
use std::path::Path;

/// A LoRA's validation curve from the host's training script:
/// `<dir>/<task>/metrics.json` of `tools/workload/train_wordnet_gen.py train [--train-n N]`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostLoraCurve {
    /// Training pairs (`recipe.train_n`).
    pub examples: usize,
    /// (step, validation NLL per answer token), step 0 (the base model) first.
    pub points: Vec<(u64, f64)>,
}

impl HostLoraCurve {
    /// Reads `dir/<task>/metrics.json`: `Ok(None)` when the file is not there, an error naming
    /// the file when it is there but is not such a file.
    pub fn read(dir: &Path, task: &str) -> Result<Option<Self>> {
        let path = dir.join(task).join("metrics.json");
        if !path.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let m: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad_file(&path, format!("expected JSON ({e})")))?;
        let points = m["val_curve"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .map(|p| Some((p.get(0)?.as_u64()?, p.get(1)?.as_f64()?)))
                    .collect::<Option<Vec<_>>>()
            })
            .filter(|p| !p.is_empty() && p.iter().all(|&(_, v)| v.is_finite()))
            .ok_or_else(|| {
                Error::bad_file(
                    &path,
                    "expected `val_curve`: a non-empty list of [step, finite NLL] pairs",
                )
            })?;
        let examples = m["recipe"]["train_n"]
            .as_u64()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::bad_file(&path, "expected `recipe.train_n`: the training pairs (> 0)")
            })? as usize;
        Ok(Some(HostLoraCurve { examples, points }))
    }
}

/// The lowest point of a validation curve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LowestPoint {
    /// The step (the first, on a tie).
    pub step: u64,
    /// Its validation NLL per answer token.
    pub val_nll: f64,
}

impl LowestPoint {
    /// The lowest point of `points` (step, NLL); `None` when empty.
    pub fn of(points: &[(u64, f64)]) -> Option<Self> {
        points
            .iter()
            .fold(None, |best: Option<(u64, f64)>, &(s, v)| match best {
                Some((_, b)) if b <= v => best,
                _ => Some((s, v)),
            })
            .map(|(step, val_nll)| LowestPoint { step, val_nll })
    }
}

/// One held-out task at one training-set size: the recycled subspace against the random
/// basis and the host's LoRA.
#[derive(Clone, Debug, PartialEq)]
pub struct FewShotCell {
    /// Held-out task.
    pub task: String,
    /// Training pairs.
    pub examples: usize,
    /// Coefficients in the recycled subspace: lowest validation point, test NLL, Rouge-L.
    pub recycled: LowestPoint,
    /// See `recycled`.
    pub recycled_test_nll: f64,
    /// See `recycled`.
    pub recycled_rouge_l: f64,
    /// The same in a random basis of the same size.
    pub random: LowestPoint,
    /// See `random`.
    pub random_test_nll: f64,
    /// See `random`.
    pub random_rouge_l: f64,
    /// The host LoRA on the same pairs, when its curve was given.
    pub lora: Option<LowestPoint>,
    /// The first step at which the recycled curve is at or below the LoRA's lowest validation
    /// NLL (`None`: never, or no LoRA curve).
    pub recycled_reaches_lora_at: Option<u64>,
}

impl FewShotCell {
    /// Recycled has the strictly lower test NLL than the random basis.
    pub fn beats_random_on_test_nll(&self) -> bool {
        self.recycled_test_nll < self.random_test_nll
    }

    /// Recycled reaches the LoRA's lowest validation NLL in strictly fewer steps than the
    /// LoRA took to reach it; `None` without a LoRA curve.
    pub fn reaches_lora_sooner(&self) -> Option<bool> {
        let lora = self.lora?;
        Some(self.recycled_reaches_lora_at.is_some_and(|s| s < lora.step))
    }
}

/// The few-shot cells of one task: every size with both a recycled and a random-basis trained
/// row, each beside the host LoRA curve of the same size when `lora` has one.
pub fn few_shot_cells(r: &LmTaskResult, lora: &[HostLoraCurve]) -> Vec<FewShotCell> {
    let curve = |m: LmMethod, n: usize| {
        r.trained(m, n).and_then(|row| {
            let points: Vec<(u64, f64)> = row.curve.iter().map(|p| (p.step, p.val_nll)).collect();
            Some((row, points.clone(), LowestPoint::of(&points)?))
        })
    };
    let mut sizes: Vec<usize> = r
        .rows
        .iter()
        .filter(|x| x.method == LmMethod::Finetuned)
        .map(|x| x.train_examples)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
        .into_iter()
        .filter_map(|n| {
            let (rec_row, rec_points, recycled) = curve(LmMethod::Finetuned, n)?;
            let (rnd_row, _, random) = curve(LmMethod::RandomBasis, n)?;
            let lora = lora
                .iter()
                .find(|c| c.examples == n)
                .and_then(|c| LowestPoint::of(&c.points));
            let recycled_reaches_lora_at = lora.and_then(|l| {
                rec_points
                    .iter()
                    .find(|&&(_, v)| v <= l.val_nll)
                    .map(|&(s, _)| s)
            });
            Some(FewShotCell {
                task: r.task.clone(),
                examples: n,
                recycled,
                recycled_test_nll: rec_row.nll,
                recycled_rouge_l: rec_row.rouge_l,
                random,
                random_test_nll: rnd_row.nll,
                random_rouge_l: rnd_row.rouge_l,
                lora,
                recycled_reaches_lora_at,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{CurvePoint, LmRow};
    use super::*;

    fn trained(method: LmMethod, n: usize, nll: f64, curve: &[(u64, f64)]) -> LmRow {
        LmRow {
            method,
            train_examples: n,
            parameters: 10,
            file_bytes: 100,
            rouge_l: 0.5,
            exact_match: 0.5,
            nll,
            train_seconds: 1.0,
            score_seconds: 1.0,
            curve: curve
                .iter()
                .map(|&(step, val_nll)| CurvePoint {
                    step,
                    val_nll,
                    train_loss: f64::NAN,
                })
                .collect(),
            best_step: 0,
            fixed_k: None,
        }
    }

    fn task(rows: Vec<LmRow>) -> LmTaskResult {
        LmTaskResult {
            task: "t".into(),
            sources: 2,
            k_a: 1,
            k_b: 1,
            captured: 0.5,
            random_captured: 0.1,
            mean_only_captured: 0.0,
            k_sweep: Vec::new(),
            rows,
            seconds: 1.0,
        }
    }

    #[test]
    fn lowest_point_takes_the_first_of_a_tie() {
        let p = LowestPoint::of(&[(0, 4.0), (2, 1.5), (4, 1.5), (6, 2.0)]).unwrap();
        assert_eq!((p.step, p.val_nll), (2, 1.5));
        assert_eq!(LowestPoint::of(&[]), None);
    }

    #[test]
    fn cells_pair_the_sizes_and_judge_both_clauses() {
        let r = task(vec![
            trained(
                LmMethod::Finetuned,
                16,
                1.20,
                &[(0, 4.0), (2, 2.0), (4, 1.4), (6, 1.6)],
            ),
            trained(
                LmMethod::Finetuned,
                64,
                1.00,
                &[(0, 4.0), (8, 1.3), (16, 1.1)],
            ),
            trained(
                LmMethod::RandomBasis,
                16,
                1.25,
                &[(0, 4.0), (2, 2.5), (4, 1.5)],
            ),
            trained(LmMethod::RandomBasis, 64, 0.90, &[(0, 4.0), (8, 1.2)]),
        ]);
        let lora = [
            HostLoraCurve {
                examples: 16,
                points: vec![(0, 4.0), (2, 2.1), (4, 1.7), (6, 1.45)],
            },
            HostLoraCurve {
                examples: 64,
                points: vec![(0, 4.0), (8, 1.05)],
            },
        ];
        let cells = few_shot_cells(&r, &lora);
        assert_eq!(cells.len(), 2);
        let (a, b) = (&cells[0], &cells[1]);
        assert_eq!(a.examples, 16);
        assert!(a.beats_random_on_test_nll());
        // The LoRA's lowest is 1.45 at step 6; recycled is at 1.4 by step 4.
        assert_eq!(a.recycled_reaches_lora_at, Some(4));
        assert_eq!(a.reaches_lora_sooner(), Some(true));
        assert_eq!(b.examples, 64);
        assert!(!b.beats_random_on_test_nll());
        // 1.1 never reaches the LoRA's 1.05.
        assert_eq!(b.recycled_reaches_lora_at, None);
        assert_eq!(b.reaches_lora_sooner(), Some(false));
        // Without host curves the second clause is unknown, not false.
        let bare = few_shot_cells(&r, &[]);
        assert_eq!(bare[0].reaches_lora_sooner(), None);
        assert!(bare[0].lora.is_none());
    }

    #[test]
    fn reaching_the_lora_at_its_own_step_is_not_sooner() {
        let r = task(vec![
            trained(LmMethod::Finetuned, 16, 1.0, &[(0, 4.0), (4, 1.5)]),
            trained(LmMethod::RandomBasis, 16, 1.0, &[(0, 4.0), (4, 1.6)]),
        ]);
        let lora = [HostLoraCurve {
            examples: 16,
            points: vec![(0, 4.0), (4, 1.5)],
        }];
        let c = &few_shot_cells(&r, &lora)[0];
        assert_eq!(c.recycled_reaches_lora_at, Some(4));
        assert_eq!(c.reaches_lora_sooner(), Some(false));
        // Equal test NLL is not a win either.
        assert!(!c.beats_random_on_test_nll());
    }

    #[test]
    fn runs_merge_by_row_and_refuse_to_mix_experiments() {
        let base = || trained(LmMethod::Base, 0, 4.0, &[]);
        let mut a = task(vec![
            base(),
            trained(LmMethod::Finetuned, 64, 1.0, &[(0, 4.0), (8, 1.2)]),
        ]);
        let b = task(vec![
            base(),
            trained(LmMethod::Finetuned, 16, 1.5, &[(0, 4.0), (2, 2.0)]),
            trained(LmMethod::RandomBasis, 16, 1.6, &[(0, 4.0), (2, 2.1)]),
        ]);
        a.merge(b.clone()).unwrap();
        let order: Vec<(LmMethod, usize)> = a
            .rows
            .iter()
            .map(|r| (r.method, r.train_examples))
            .collect();
        assert_eq!(
            order,
            [
                (LmMethod::Base, 0),
                (LmMethod::Finetuned, 16),
                (LmMethod::Finetuned, 64),
                (LmMethod::RandomBasis, 16),
            ]
        );
        assert_eq!(a.seconds, 2.0);
        // Merging the same run again changes nothing.
        let before = a.rows.len();
        a.merge(b.clone()).unwrap();
        assert_eq!(a.rows.len(), before);
        // A fixed row with other figures: another model, adapters or test set.
        let mut other = b.clone();
        other.rows[0].nll = 4.1;
        let e = a.merge(other).unwrap_err();
        assert!(e.contains("base model") && e.contains("differs"), "{e}");
        // Another subspace for the same task.
        let mut other = b.clone();
        other.sources = 3;
        assert!(a.merge(other).unwrap_err().contains("subspaces differ"));
        let mut other = b;
        other.task = "u".into();
        assert!(a.merge(other).unwrap_err().contains("tasks differ"));
    }

    #[test]
    fn host_metrics_are_read_or_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("elx-host-curve-{}", std::process::id()));
        let write = |task: &str, text: &str| {
            std::fs::create_dir_all(dir.join(task)).unwrap();
            std::fs::write(dir.join(task).join("metrics.json"), text).unwrap();
        };
        write(
            "good",
            r#"{"recipe": {"train_n": 64}, "val_curve": [[0, 4.2], [8, 1.4]]}"#,
        );
        write("no_n", r#"{"recipe": {}, "val_curve": [[0, 4.2]]}"#);
        write(
            "bad_curve",
            r#"{"recipe": {"train_n": 16}, "val_curve": [[0]]}"#,
        );
        write("not_json", "{");
        let good = HostLoraCurve::read(&dir, "good").unwrap().unwrap();
        assert_eq!(good.examples, 64);
        assert_eq!(good.points, vec![(0, 4.2), (8, 1.4)]);
        assert_eq!(HostLoraCurve::read(&dir, "absent").unwrap(), None);
        for (task, expected) in [
            ("no_n", "recipe.train_n"),
            ("bad_curve", "val_curve"),
            ("not_json", "expected JSON"),
        ] {
            let e = HostLoraCurve::read(&dir, task).unwrap_err().to_string();
            assert!(e.contains(expected) && e.contains(task), "{task}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
