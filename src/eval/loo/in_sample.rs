//! In-sample serving ([`in_sample`]): every task of a family served from one bundle of all
//! its adapters at several energy shares, against each task's own LoRA, with the bytes each
//! keeps resident.

use super::data::Reader;
use super::serving::{features, sequence_model, write_bound};
use super::{Base, LooConfig, TaskSpec};
use crate::adapter::Adapter;
use crate::bundle::{Head, SourceAdapter};
use crate::error::{Error, Result};
use crate::eval::{Metrics, capture, head_metrics, layout_params};
use crate::finetune::ForwardModel;
use crate::serve::Engine;
use crate::subspace::{self, ExtractOptions, KRule};
use crate::util::{Job, eval_threads, run_parallel};
use std::path::Path;

/// One energy share of [`in_sample`]: every task of a family served from one bundle of all
/// the family's adapters.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InSampleRow {
    /// The energy share each side keeps.
    pub energy: f64,
    /// Σ (K_A + K_B) over the modules.
    pub k_total: usize,
    /// Per task: its own LoRA and the projection into this bundle, both with its own head.
    pub tasks: Vec<InSampleTask>,
    /// Bytes resident for all tasks: the bases (f32) plus every task's coefficients (f32).
    pub resident_bytes: u64,
    /// Bytes of every task's LoRA A and B (f32), what serving the LoRAs keeps resident.
    pub lora_bytes: u64,
}

/// One task of an [`InSampleRow`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct InSampleTask {
    /// Task name.
    pub task: String,
    /// Share of the task's ΔW inside the bundle.
    pub captured: f64,
    /// The task's own LoRA.
    pub lora: Metrics,
    /// The task served from the bundle.
    pub served: Metrics,
}

/// Serves every task of `tasks` from one bundle of all their adapters at each energy share,
/// against each task's own LoRA (both with the task's own head, on the first `test_examples`
/// test examples). The own LoRA runs through the same patch, as the span of all the
/// adapters holds each of them exactly (energy 1). The bundles go to `dir`.
pub fn in_sample(
    cfg: &LooConfig,
    base: &Base,
    tasks: &[TaskSpec],
    energies: &[f64],
    test_examples: usize,
    dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<InSampleRow>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let adapters: Vec<Adapter> = tasks
        .iter()
        .map(|t| Adapter::open(&t.adapter))
        .collect::<Result<_>>()?;
    let reader = Reader::new(cfg)?;
    let pad = reader.pad();
    // Every task's test examples in one list: (task, ids range, labels, head).
    let mut examples = Vec::new();
    let mut per_task = Vec::new();
    for t in tasks {
        let head = Head::read(&t.head)?;
        let (ex, labels) = reader.read(&t.test, head.labels.len())?;
        let n = ex.len().min(test_examples);
        let from = examples.len();
        examples.extend(ex.into_iter().take(n));
        per_task.push((from..from + n, labels[..n].to_vec(), head));
    }
    let quiet = |_: usize, _: usize, _: &str| {};
    let sources: Vec<SourceAdapter> = adapters.iter().map(SourceAdapter::from).collect();
    let lora_bytes: u64 = adapters
        .iter()
        .flat_map(|a| a.modules.values())
        .map(|m| (4 * m.rank * (m.in_features + m.out_features)) as u64)
        .sum();
    let mut reference: Option<Vec<Metrics>> = None;
    let mut rows = Vec::new();
    // Energy 1 first: the exact span, which serves every own LoRA.
    let mut all = vec![1.0];
    all.extend(energies.iter().copied().filter(|&e| e < 1.0));
    for energy in all {
        let options = ExtractOptions {
            k_rule_a: KRule::Energy(energy),
            k_rule_b: KRule::Energy(energy),
            center: false,
            pseudo: 0,
            ..cfg.extract.clone()
        };
        let space = subspace::extract(&adapters, &options, &quiet)?;
        let bundle = write_bound(
            &dir.join(format!("all-{:.0}.elxb", 1000.0 * energy)),
            &space,
            &sources,
            base,
        )?;
        let rt = Engine::load(&cfg.base, &bundle, cfg.serve_engine)?;
        // The tasks in contiguous chunks, one thread and one model each.
        let tasks_per_job = per_task.len().div_ceil(eval_threads()).max(1);
        let jobs: Vec<Job<'_, Vec<(Metrics, f64, usize)>>> = adapters
            .chunks(tasks_per_job)
            .zip(per_task.chunks(tasks_per_job))
            .map(|(adapters, per_task)| {
                let (rt, examples, space) = (&rt, &examples, &space);
                Box::new(move || {
                    let mut model = sequence_model(rt, examples.clone(), pad, cfg.max_length)?;
                    let mut out = Vec::new();
                    for (a, (range, labels, head)) in adapters.iter().zip(per_task) {
                        let cap = capture(a, space, space)?;
                        let params = layout_params(model.layout(), &cap.coefficients)?;
                        let ids: Vec<usize> = range.clone().collect();
                        let (feats, d) =
                            features(&mut model, &ids, &params, cfg.finetune.eval_batch)?;
                        let served = head_metrics(head, &feats, d, labels)?;
                        out.push((served, cap.captured, cap.coeff_params));
                    }
                    Ok(out)
                }) as Job<'_, _>
            })
            .collect();
        let mut served = Vec::new();
        let mut captured = Vec::new();
        let mut coeff_bytes = 0u64;
        for (metrics, cap, coeff_params) in
            run_parallel(jobs, eval_threads())?.into_iter().flatten()
        {
            served.push(metrics);
            captured.push(cap);
            coeff_bytes += 4 * coeff_params as u64;
        }
        let k_total = space
            .modules
            .values()
            .map(|m| m.a.k_total() + m.b.k_total())
            .sum();
        let bases: u64 = space
            .modules
            .values()
            .map(|m| 4 * (m.v_a.nrows() * m.in_features + m.out_features * m.v_b.ncols()) as u64)
            .sum();
        log(&format!(
            "in-sample: energy {:.0}%: K_A+K_B = {k_total}, {} tasks served",
            100.0 * energy,
            tasks.len()
        ));
        let lora = match &reference {
            None => {
                reference = Some(served.clone());
                continue;
            }
            Some(r) => r.clone(),
        };
        rows.push(InSampleRow {
            energy,
            k_total,
            tasks: tasks
                .iter()
                .zip(lora)
                .zip(served)
                .zip(captured)
                .map(|(((t, lora), served), captured)| InSampleTask {
                    task: t.name.clone(),
                    captured,
                    lora,
                    served,
                })
                .collect(),
            resident_bytes: bases + coeff_bytes,
            lora_bytes,
        });
    }
    Ok(rows)
}
