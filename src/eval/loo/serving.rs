//! What every row is served through: bundles written bound to the base model, the pooled
//! sequence model on an engine (its features cached), and pooled features under fixed
//! coefficients.

use super::Base;
use crate::bundle::{Bundle, SourceAdapter, StorageDtype};
use crate::error::Result;
use crate::finetune::ForwardModel;
use crate::finetune::cache::CachedFeatures;
use crate::finetune::data::Example;
use crate::finetune::seq::SequenceModel;
use crate::graph;
use crate::serve::{Engine, HiddenState};
use crate::subspace::Subspace;
use std::path::Path;

/// The model every row evaluates: the sequence model on an engine, its features cached.
pub(super) type Model = CachedFeatures<SequenceModel<HiddenState>>;

/// Writes `space` as an f32 bundle bound to the base model and reads it back.
pub(crate) fn write_bound(
    path: &Path,
    space: &Subspace,
    sources: &[SourceAdapter],
    base: &Base,
) -> Result<Bundle> {
    let manifest = Bundle::write(path, space, sources, StorageDtype::F32, None)?;
    let binding = graph::bind(
        &base.model,
        base.sha256.clone(),
        &base.name,
        &manifest,
        None,
    )?;
    Bundle::write(path, space, sources, StorageDtype::F32, Some(&binding))?;
    Bundle::read(path)
}

/// The pooled sequence model of `examples` on `engine`, its features cached.
pub(super) fn sequence_model(
    engine: &Engine,
    examples: Vec<Example>,
    pad: i64,
    max_length: usize,
) -> Result<Model> {
    Ok(CachedFeatures::new(SequenceModel::on_engine(
        engine, examples, pad, max_length,
    )?))
}

/// Pooled features [n x d] of `ids` under fixed coefficient values.
pub(super) fn features<M: ForwardModel>(
    model: &mut M,
    ids: &[usize],
    params: &[f32],
    batch: usize,
) -> Result<(Vec<f32>, usize)> {
    let (mut all, mut chunk, mut d) = (Vec::new(), Vec::new(), 0);
    for part in ids.chunks(batch.max(1)) {
        d = model.features(part, params, &mut chunk)?;
        all.extend_from_slice(&chunk);
    }
    Ok((all, d))
}
