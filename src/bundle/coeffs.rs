//! The `.elxc` coefficient file of one task.

use crate::error::Result;
use crate::subspace::Coefficients;
use faer::Mat;
use std::collections::BTreeMap;
use std::path::Path;

/// How a coefficient file was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provenance {
    /// Analytic projection of an existing adapter.
    Projected,
    /// Trained on device.
    Finetuned,
    /// Random coefficients in the subspace, head trained only.
    ZeroShot,
}

/// A linear classification head on pooled features.
#[derive(Clone, Debug)]
pub struct Head {
    /// [classes x features]
    pub weight: Mat<f64>,
    /// [classes]
    pub bias: Vec<f64>,
    /// One label per class.
    pub labels: Vec<String>,
}

/// One task's coefficients.
#[derive(Clone, Debug)]
pub struct CoeffFile {
    pub subspace_id: String,
    pub task: String,
    pub provenance: Provenance,
    pub modules: BTreeMap<String, Coefficients>,
    pub head: Option<Head>,
}

impl CoeffFile {
    /// Writes atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let _ = path;
        todo!("bundle helper")
    }

    /// Reads and validates a coefficient file (no subspace check).
    pub fn read(path: &Path) -> Result<CoeffFile> {
        let _ = path;
        todo!("bundle helper")
    }

    /// Reads a coefficient file and checks it against a bundle: same subspace id (an error
    /// naming both ids otherwise), known modules, shapes that fit K_A / K_B.
    pub fn read_for(path: &Path, bundle: &super::Manifest) -> Result<CoeffFile> {
        let _ = (path, bundle);
        todo!("bundle helper")
    }
}
