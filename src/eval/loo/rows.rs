//! The rows of a held-out task: fixed zero-shot coefficients under the adapter's own head or
//! a head refit on the device ([`ZeroShot`]), and coefficients + head trained on the device
//! ([`Training`]); each row's test metrics, file size and cold-swap time.

use super::serving::{Model, features, sequence_model};
use super::{LooConfig, Method, MethodResult};
use crate::bundle::{Bundle, Head};
use crate::error::{Error, Result};
use crate::eval::{Metrics, head_metrics};
use crate::finetune::cache::CachedFeatures;
use crate::finetune::data::Example;
use crate::finetune::pinned::PinnedCoefficients;
use crate::finetune::seq::SequenceModel;
use crate::finetune::{FinetuneConfig, ForwardModel, Objective, Split, recipe};
use crate::serve::Engine;
use std::path::Path;
use std::time::Instant;

/// The base model pinned at fixed coefficients, its features cached.
type Pinned = PinnedCoefficients<Model>;

/// What the zero-shot rows share: fixed coefficients evaluated on the test split, under the
/// given head or under a head refit on the training split.
#[derive(Clone, Copy)]
pub(super) struct ZeroShot<'a> {
    pub(super) cfg: &'a LooConfig,
    pub(super) examples: &'a [Example],
    pub(super) pad: i64,
    pub(super) train: &'a Split,
    pub(super) val: &'a Split,
    pub(super) test: &'a Split,
    pub(super) head: &'a Head,
    pub(super) classes: usize,
    pub(super) head_params: usize,
}

impl ZeroShot<'_> {
    /// The model of `rt` pinned at `params` (its layout).
    pub(super) fn model(&self, rt: &Engine, params: &[f32]) -> Result<Pinned> {
        PinnedCoefficients::new(
            sequence_model(rt, self.examples.to_vec(), self.pad, self.cfg.max_length)?,
            params.to_vec(),
        )
    }

    /// Test metrics of the head under `model`'s coefficients; size and swap fields are left
    /// for the caller.
    pub(super) fn row(&self, method: Method, model: &mut Pinned) -> Result<MethodResult> {
        let (feats, d) = features(model, &self.test.ids, &[], self.cfg.finetune.eval_batch)?;
        Ok(MethodResult {
            method,
            train_examples: 0,
            trainable: self.head_params,
            file_bytes: 0,
            swap_ms: 0.0,
            test: head_metrics(self.head, &feats, d, &self.test.labels)?,
            engine_examples: 0,
            train_seconds: 0.0,
        })
    }

    /// A head fitted on the training split under `model`'s coefficients (the head-only
    /// recipe, early-stopped on validation), evaluated on the test split, and the head; size
    /// and swap fields are left for the caller.
    pub(super) fn refit(&self, method: Method, model: Pinned) -> Result<(MethodResult, Head)> {
        let (mut model, t0) = (model, Instant::now());
        let misses0 = model.inner().hits_misses().1;
        let mut ft = recipe::fit_head_only(
            model,
            &self.cfg.finetune,
            self.cfg.head_steps,
            self.cfg.finetune.head_lr,
            Objective::Classify {
                classes: self.classes,
            },
            self.train.clone(),
            Some(self.val.clone()),
        )?;
        let train_seconds = t0.elapsed().as_secs_f64();
        let eval = ft.evaluate(self.test)?;
        let head = ft
            .labelled_head(&self.head.labels)?
            .ok_or_else(|| Error::Usage("a classifier without a head".into()))?;
        model = ft.into_model();
        let row = MethodResult {
            method,
            train_examples: self.train.ids.len(),
            trainable: self.head_params,
            file_bytes: 0,
            swap_ms: 0.0,
            test: eval_metrics(&eval)?,
            engine_examples: model.inner().hits_misses().1 - misses0,
            train_seconds,
        };
        Ok((row, head))
    }
}

/// What the two coefficient trainings share.
pub(super) struct Training<'a> {
    pub(super) cfg: &'a LooConfig,
    pub(super) examples: &'a [Example],
    pub(super) pad: i64,
    pub(super) splits: (&'a Split, &'a Split, &'a Split),
    pub(super) classes: usize,
    pub(super) labels: &'a [String],
    pub(super) task: &'a str,
    pub(super) probe: &'a [f64],
}

impl Training<'_> {
    /// Training of coefficients + head on the configured engine for `bundle`, the head
    /// starting from the head-only solution (LP-FT) or from zero (`warm_start_head`),
    /// evaluated on the test split and saved to `path`; `rt` (the serving engine, the same bundle) serves
    /// the file, and trains too when the configured engine is tract.
    pub(super) fn train(
        &self,
        rt: &Engine,
        bundle: &Bundle,
        path: &Path,
        method: Method,
    ) -> Result<MethodResult> {
        let engine = if self.cfg.train_engine == self.cfg.serve_engine {
            rt.clone()
        } else {
            Engine::load(&self.cfg.base, bundle, self.cfg.train_engine)?
        };
        let model = CachedFeatures::new(SequenceModel::for_training(
            &engine,
            self.examples.to_vec(),
            self.pad,
            self.cfg.max_length,
            self.cfg.finetune.grad,
        )?);
        let mut r = self.train_on(model, bundle, path, method)?;
        r.swap_ms = timed(|| rt.load_task(path).map(|_| ()))?;
        Ok(r)
    }

    /// The training itself, on any engine; `swap_ms` is left at 0 for the caller.
    fn train_on(
        &self,
        model: Model,
        bundle: &Bundle,
        path: &Path,
        method: Method,
    ) -> Result<MethodResult> {
        let cfg = self.cfg;
        let (train, val, test) = self.splits;
        let t0 = Instant::now();
        // A warm-started head is evaluated before the first step, so training can only
        // return something at least as good on validation as the head-only start.
        let mut ft = recipe::joint(
            model,
            FinetuneConfig {
                eval_at_start: cfg.warm_start_head && cfg.start_competes,
                head_lr: cfg.finetune_head_lr.unwrap_or(cfg.finetune.head_lr),
                ..cfg.finetune.clone()
            },
            Objective::Classify {
                classes: self.classes,
            },
            train.clone(),
            Some(val.clone()),
            cfg.warm_start_head.then_some(self.probe),
        )?;
        ft.fit(&mut |_| {})?;
        let seconds = t0.elapsed().as_secs_f64();
        let engine_examples = ft.model().hits_misses().1;
        let eval = ft.evaluate(test)?;
        ft.save(path, &bundle.manifest.subspace_id, self.task, self.labels)?;
        let trainable = ft
            .model()
            .layout()
            .iter()
            .map(|l| cfg.finetune.rank * (l.k_a + l.k_b))
            .sum::<usize>()
            + ft.head().map(|h| h.params().len()).unwrap_or(0);
        Ok(MethodResult {
            method,
            train_examples: train.ids.len(),
            trainable,
            file_bytes: file_len(path),
            swap_ms: 0.0,
            test: eval_metrics(&eval)?,
            engine_examples,
            train_seconds: seconds,
        })
    }
}

pub(super) fn eval_metrics(e: &crate::finetune::Eval) -> Result<Metrics> {
    match (e.accuracy, e.cross_entropy) {
        (Some(accuracy), Some(cross_entropy)) => Ok(Metrics {
            accuracy,
            cross_entropy,
            examples: e.examples,
        }),
        _ => Err(Error::Usage(
            "a classifier evaluation without accuracy".into(),
        )),
    }
}

/// Milliseconds `f` takes.
pub(super) fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Bytes of the file at `p` (0 when it cannot be read).
pub(super) fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}
