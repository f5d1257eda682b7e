//! What is trained ([`Objective`]: a classifier's head or a user loss) and on which examples
//! ([`Split`]), with the check of a split against the model and the task's classes.

use super::ForwardModel;
use crate::error::{Error, Result};

/// Examples of one split: model example ids and, for classification, their class indices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Example ids understood by the model.
    pub ids: Vec<usize>,
    /// Class index per example (empty for a custom objective that does not use labels).
    pub labels: Vec<usize>,
}

/// A user loss on raw features: `(features [n x d], example ids) -> mean loss`.
pub type LossFn = Box<dyn Fn(&[f32], &[usize]) -> f64>;

/// What is trained.
pub enum Objective {
    /// Softmax cross-entropy of a linear head over `classes` classes (head trained exactly,
    /// coefficients by SPSA on the current head's loss).
    Classify {
        /// Number of classes (≥ 2).
        classes: usize,
    },
    /// A user loss on the features (regression, metric learning, ...); no head.
    Custom(LossFn),
}

/// Checks a split against the model (ids in range) and, for a classifier, its labels
/// against the task's classes.
pub(super) fn check_split<M: ForwardModel>(
    model: &M,
    s: &Split,
    what: &str,
    classes: Option<usize>,
) -> Result<()> {
    if s.ids.is_empty() {
        return Err(Error::Usage(format!("{what} split is empty")));
    }
    let n = model.num_examples();
    if let Some(i) = s.ids.iter().position(|&id| id >= n) {
        return Err(Error::Usage(format!(
            "{what} example {i}: id {} but the model holds {n} examples",
            s.ids[i]
        )));
    }
    if let Some(c) = classes {
        if s.labels.len() != s.ids.len() {
            return Err(Error::Usage(format!(
                "{what} split: {} labels for {} examples",
                s.labels.len(),
                s.ids.len()
            )));
        }
        if let Some(i) = s.labels.iter().position(|&y| y >= c) {
            return Err(Error::Usage(format!(
                "{what} example {i}: label {} but the task has {c} classes",
                s.labels[i]
            )));
        }
    }
    Ok(())
}
