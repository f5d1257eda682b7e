//! One held-out task ([`run_task`]): the subspaces (recycled, random, mean only, its own),
//! its data, the zero-shot rows side by side, then per few-shot size the head alone and the
//! two trainings.

use super::data::Reader;
use super::rows::{Training, ZeroShot, eval_metrics, file_len, timed};
use super::serving::{sequence_model, write_bound};
use super::{Base, FewShot, LooConfig, Method, MethodResult, TaskResult, TaskSpec};
use crate::adapter::Adapter;
use crate::bundle::random_control::random_subspace;
use crate::bundle::{Bundle, CoeffFile, Head, Provenance, SourceAdapter};
use crate::error::{Error, Result};
use crate::eval::{capture, layout_params};
use crate::finetune::{Objective, Split, recipe};
use crate::serve::{Backend, Engine};
use crate::subspace::{self, ExtractOptions, KRule, Subspace};
use crate::util::{Job, eval_threads, run_parallel};
use std::time::Instant;

/// The sizes of the few-shot rows: `cfg.few_shot` sorted (none when it is empty).
fn few_shot_sizes(cfg: &LooConfig) -> Result<Vec<usize>> {
    let mut sizes = cfg.few_shot.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.first() == Some(&0) || sizes.last().is_some_and(|&n| n > cfg.train_examples) {
        return Err(Error::Usage(format!(
            "few-shot sizes {sizes:?} must lie in 1..={} (the training examples)",
            cfg.train_examples
        )));
    }
    Ok(sizes)
}

/// The held-out task's coefficients in each zero-shot subspace and their bound bundles.
struct Spaces {
    recycled: Bundle,
    random: Bundle,
    mean_only: Option<Bundle>,
    own: Bundle,
}

/// Runs the leave-one-out evaluation of `tasks[held]` (see the module documentation).
/// `log` receives one line per phase.
pub fn run_task(
    cfg: &LooConfig,
    base: &Base,
    tasks: &[TaskSpec],
    held: usize,
    log: &mut dyn FnMut(&str),
) -> Result<TaskResult> {
    let started = Instant::now();
    let spec = tasks
        .get(held)
        .ok_or_else(|| Error::Usage(format!("no task {held} among {}", tasks.len())))?;
    let sizes = few_shot_sizes(cfg)?;
    let dir = cfg.out_dir.join(&spec.name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;

    // Subspaces: the other tasks' (recycled), a random one of the same K, the span of the
    // others' mean direction, the task's own.
    let adapter = Adapter::open(&spec.adapter)?;
    let others: Vec<Adapter> = tasks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != held)
        .map(|(_, t)| Adapter::open(&t.adapter))
        .collect::<Result<_>>()?;
    let quiet = |_: usize, _: usize, _: &str| {};
    let space = subspace::extract(&others, &cfg.extract, &quiet)?;
    let random = random_subspace(&space, cfg.random_seed);
    let cap = capture(&adapter, &space, &random)?;
    let random_cap = capture(&adapter, &random, &random)?;
    let mean_space = mean_direction_subspace(&others, &cfg.extract)?;
    let mean_cap = match &mean_space {
        Some(m) => Some(capture(&adapter, m, m)?),
        None => None,
    };
    let r_lora = adapter.modules.values().map(|m| m.rank).max().unwrap_or(0);
    let own_options = ExtractOptions {
        canonicalize: true,
        center: false,
        k_rule_a: KRule::Fixed(r_lora),
        k_rule_b: KRule::Fixed(r_lora),
        pseudo: 0,
        ..cfg.extract.clone()
    };
    let own = subspace::extract(std::slice::from_ref(&adapter), &own_options, &quiet)?;
    let own_coeffs = capture(&adapter, &own, &own)?;
    let sources: Vec<SourceAdapter> = others.iter().map(SourceAdapter::from).collect();
    let bundles = Spaces {
        recycled: write_bound(&dir.join("recycled.elxb"), &space, &sources, base)?,
        random: write_bound(&dir.join("random.elxb"), &random, &[], base)?,
        mean_only: match &mean_space {
            Some(m) => Some(write_bound(&dir.join("mean-only.elxb"), m, &sources, base)?),
            None => None,
        },
        own: write_bound(
            &dir.join("own-lora.elxb"),
            &own,
            &[SourceAdapter::from(&adapter)],
            base,
        )?,
    };
    log(&format!(
        "{}: subspace of the other {} adapters, K_A+K_B = {} over {} modules; holds {:.1}% of the held-out ΔW (random: {:.2}%, mean direction: {:.1}%)",
        spec.name,
        others.len(),
        cap.k_total,
        space.modules.len(),
        100.0 * cap.captured,
        100.0 * cap.random_captured,
        100.0 * mean_cap.as_ref().map_or(0.0, |m| m.captured)
    ));

    // Data: the first `train_examples` training examples (each few-shot size a prefix),
    // then the validation examples, then the test examples.
    let head = Head::read(&spec.head)?;
    let classes = head.labels.len();
    let reader = Reader::new(cfg)?;
    let (mut examples, mut labels) = reader.read(&spec.train, classes)?;
    let n_fit = cfg.train_examples + cfg.val_examples;
    if examples.len() < n_fit || cfg.train_examples == 0 || cfg.val_examples == 0 {
        return Err(Error::bad_file(
            &spec.train,
            format!(
                "expected at least {} training + {} validation examples, found {}",
                cfg.train_examples,
                cfg.val_examples,
                examples.len()
            ),
        ));
    }
    examples.truncate(n_fit);
    labels.truncate(n_fit);
    let (test_examples, test_labels) = reader.read(&spec.test, classes)?;
    let n_test = test_examples.len().min(cfg.test_examples);
    examples.extend(test_examples.into_iter().take(n_test));
    labels.extend(test_labels.into_iter().take(n_test));
    let split = |from: usize, to: usize| Split {
        ids: (from..to).collect(),
        labels: labels[from..to].to_vec(),
    };
    // Evaluation batches of similar lengths pad less; the order does not change the metrics.
    let by_length = |s: Split| {
        let mut order: Vec<usize> = (0..s.ids.len()).collect();
        order.sort_by_key(|&i| examples[s.ids[i]].input_ids.len());
        Split {
            ids: order.iter().map(|&i| s.ids[i]).collect(),
            labels: order.iter().map(|&i| s.labels[i]).collect(),
        }
    };
    let val = by_length(split(cfg.train_examples, n_fit));
    let test = by_length(split(n_fit, n_fit + n_test));
    let pad = reader.pad();
    let label_names = head.labels.clone();
    let head_params = classes * (head.weight.ncols() + 1);
    let refit_train = split(0, cfg.train_examples);
    let zero_shot = ZeroShot {
        cfg,
        examples: &examples,
        pad,
        train: &refit_train,
        val: &val,
        test: &test,
        head: &head,
        classes,
        head_params,
    };

    // Zero-shot rows: fixed coefficients, the adapter's own head, then a head refit on them;
    // independent jobs, one engine each, run side by side.
    let mut jobs: Vec<Job<'_, Vec<MethodResult>>> = Vec::new();
    // One engine for the own-LoRA bundle: the own LoRA, and the base model itself (zero
    // coefficients) under the full-training-set head and under a head refit on the device.
    jobs.push(Box::new(|| {
        let own_engine = Engine::load(&cfg.base, &bundles.own, cfg.serve_engine)?;
        let own_params = layout_params(&own_engine.layout(), &own_coeffs.coefficients)?;
        let mut own_row = zero_shot.row(
            Method::OwnLora,
            &mut zero_shot.model(&own_engine, &own_params)?,
        )?;
        own_row.trainable = cap.lora_params + head_params;
        own_row.file_bytes =
            file_len(&spec.adapter.join("adapter_model.safetensors")) + file_len(&spec.head);
        own_row.swap_ms = timed(|| {
            let a = Adapter::open(&spec.adapter)?;
            for name in a.modules.keys() {
                a.load_module(name)?;
            }
            Head::read(&spec.head).map(|_| ())
        })?;
        let mut rows = vec![own_row];
        let mut base_model = zero_shot.model(&own_engine, &vec![0.0; own_params.len()])?;
        let head_only_full = spec.head.with_file_name("head_only.safetensors");
        if head_only_full.is_file() {
            let full = Head::read(&head_only_full)?;
            let zs = ZeroShot {
                head: &full,
                ..zero_shot
            };
            let mut row = zs.row(Method::HeadOnlyFull, &mut base_model)?;
            row.file_bytes = file_len(&head_only_full);
            row.swap_ms = timed(|| Head::read(&head_only_full).map(|_| ()))?;
            rows.push(row);
        }
        rows.push(zero_shot.refit(Method::HeadOnly, base_model)?.0);
        Ok(rows)
    }));
    for (method, refit, bundle, coeffs, file_name) in [
        (
            Method::Projected,
            Method::ProjectedRefit,
            Some(&bundles.recycled),
            Some(&cap),
            "projected",
        ),
        (
            Method::MeanOnly,
            Method::MeanOnlyRefit,
            bundles.mean_only.as_ref(),
            mean_cap.as_ref(),
            "mean-only",
        ),
        (
            Method::RandomProjected,
            Method::RandomProjectedRefit,
            Some(&bundles.random),
            Some(&random_cap),
            "random-projected",
        ),
    ] {
        let (Some(bundle), Some(c)) = (bundle, coeffs) else {
            continue;
        };
        let (zero_shot, head, dir) = (&zero_shot, &head, &dir);
        jobs.push(Box::new(move || {
            let rt = Engine::load(&cfg.base, bundle, cfg.serve_engine)?;
            let params = layout_params(&rt.layout(), &c.coefficients)?;
            let mut model = zero_shot.model(&rt, &params)?;
            let own_head_row = zero_shot.row(method, &mut model)?;
            let (refit_row, refit_head) = zero_shot.refit(refit, model)?;
            // The same coefficients in two files: under the adapter's own head, and refit.
            let mut rows = Vec::new();
            for (mut row, head, path) in [
                (
                    own_head_row,
                    head.clone(),
                    dir.join(format!("{file_name}.elxc")),
                ),
                (
                    refit_row,
                    refit_head,
                    dir.join(format!("{file_name}-refit.elxc")),
                ),
            ] {
                let file = CoeffFile {
                    subspace_id: bundle.manifest.subspace_id.clone(),
                    task: spec.name.clone(),
                    provenance: Provenance::Projected,
                    modules: c.coefficients.clone(),
                    head: Some(head),
                };
                file.write(&path)?;
                row.trainable = c.coeff_params + head_params;
                row.file_bytes = file_len(&path);
                row.swap_ms = timed(|| rt.load_task(&path).map(|_| ()))?;
                rows.push(row);
            }
            Ok(rows)
        }));
    }
    let mut methods: Vec<MethodResult> = run_parallel(jobs, eval_threads())?
        .into_iter()
        .flatten()
        .collect();
    methods.sort_by_key(|m| m.method as usize);
    log(&format!("{}: zero-shot rows evaluated", spec.name));

    // Few-shot rows: per size, the head alone, then coefficients + head in the recycled
    // subspace and in the random basis (on tract one thread each: the runtime is Sync, and
    // each thread builds its own engine inputs; on ONNX Runtime one after the other, each
    // session using the cores itself).
    let rt = Engine::load(&cfg.base, &bundles.recycled, cfg.serve_engine)?;
    let random_rt = Engine::load(&cfg.base, &bundles.random, cfg.serve_engine)?;
    let mut head_model = sequence_model(&rt, examples.clone(), pad, cfg.max_length)?;
    let mut few_shot = Vec::new();
    for &n in &sizes {
        let train = split(0, n);
        let (misses0, t0) = (head_model.hits_misses().1, Instant::now());
        let mut ft = recipe::fit_head_only(
            head_model,
            &cfg.finetune,
            cfg.head_steps,
            cfg.finetune.head_lr,
            Objective::Classify { classes },
            train.clone(),
            Some(val.clone()),
        )?;
        let head_seconds = t0.elapsed().as_secs_f64();
        let head_engine = ft.model().hits_misses().1 - misses0;
        let head_eval = ft.evaluate(&test)?;
        let probe: Vec<f64> = ft.head().map(|h| h.params().to_vec()).unwrap_or_default();
        let mut head_file = ft.to_coeff_file(
            &bundles.recycled.manifest.subspace_id,
            &spec.name,
            &label_names,
        )?;
        head_file.modules.clear();
        let head_path = dir.join(format!("head-only-n{n}.elxc"));
        head_file.write(&head_path)?;
        head_model = ft.into_model();
        let head_only = MethodResult {
            method: Method::HeadOnly,
            train_examples: n,
            trainable: head_params,
            file_bytes: file_len(&head_path),
            swap_ms: timed(|| rt.load_task(&head_path).map(|_| ()))?,
            test: eval_metrics(&head_eval)?,
            engine_examples: head_engine,
            train_seconds: head_seconds,
        };
        let job = Training {
            cfg,
            examples: &examples,
            pad,
            splits: (&train, &val, &test),
            classes,
            labels: &label_names,
            task: &spec.name,
            probe: &probe,
        };
        let finetuned_path = dir.join(format!("finetuned-n{n}.elxc"));
        let random_path = dir.join(format!("random-basis-n{n}.elxc"));
        let (finetuned, control) = if cfg.train_engine == Backend::Tract {
            std::thread::scope(|s| {
                let ft = s.spawn(|| {
                    job.train(&rt, &bundles.recycled, &finetuned_path, Method::Finetuned)
                });
                let rd = s.spawn(|| {
                    job.train(
                        &random_rt,
                        &bundles.random,
                        &random_path,
                        Method::RandomBasis,
                    )
                });
                let join = |h: std::thread::ScopedJoinHandle<'_, Result<MethodResult>>| {
                    h.join()
                        .map_err(|_| Error::Usage("a training thread panicked".into()))?
                };
                (join(ft), join(rd))
            })
        } else {
            (
                job.train(&rt, &bundles.recycled, &finetuned_path, Method::Finetuned),
                job.train(
                    &random_rt,
                    &bundles.random,
                    &random_path,
                    Method::RandomBasis,
                ),
            )
        };
        let (finetuned, random_basis) = (finetuned?, control?);
        log(&format!(
            "{}: {n} examples: head only ({head_seconds:.1} s), finetuned ({:.1} s) and the random-basis control ({:.1} s), {}",
            spec.name,
            finetuned.train_seconds,
            random_basis.train_seconds,
            match cfg.train_engine {
                Backend::Tract => "in parallel on tract".to_string(),
                Backend::Ort(ep) => format!("one after the other on ONNX Runtime ({})", ep.name()),
            }
        ));
        few_shot.push(FewShot {
            examples: n,
            head_only,
            finetuned,
            random_basis,
        });
    }
    let reference_ce = methods
        .iter()
        .find(|m| m.method == Method::HeadOnlyFull)
        .or_else(|| methods.iter().find(|m| m.method == Method::HeadOnly))
        .map_or(f64::NAN, |m| m.test.cross_entropy);

    Ok(TaskResult {
        task: spec.name.clone(),
        k_a: space.modules.values().map(|m| m.a.k_total()).sum(),
        k_b: space.modules.values().map(|m| m.b.k_total()).sum(),
        captured: cap.captured,
        random_captured: cap.random_captured,
        mean_only_captured: mean_cap.as_ref().map_or(0.0, |m| m.captured),
        methods,
        few_shot,
        reference_ce,
        bundle: bundles.recycled.path.clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The span of the other adapters' mean direction alone, one vector per side (centering
/// with no principal direction kept); `None` when no module has a non-zero mean on both
/// sides. Modules whose mean vanishes on a side are left out.
pub(crate) fn mean_direction_subspace(
    others: &[Adapter],
    extract: &ExtractOptions,
) -> Result<Option<Subspace>> {
    let options = ExtractOptions {
        center: true,
        k_rule_a: KRule::Fixed(0),
        k_rule_b: KRule::Fixed(0),
        pseudo: 0,
        ..extract.clone()
    };
    let quiet = |_: usize, _: usize, _: &str| {};
    let mut s = subspace::extract(others, &options, &quiet)?;
    s.modules
        .retain(|_, m| m.v_a.nrows() == 1 && m.v_b.ncols() == 1);
    Ok((!s.modules.is_empty()).then_some(s))
}
