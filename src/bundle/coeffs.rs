//! The `.elxc` coefficient file of one task.
//!
//! Layout (safetensors, all f32):
//!
//! | tensor | shape |
//! |---|---|
//! | `<module>.alpha_A` | [r, K_A] |
//! | `<module>.alpha_B` | [K_B, r] |
//! | `head.weight` (optional) | [C, d] |
//! | `head.bias` (optional) | `[C]` |
//!
//! and `__metadata__["eigenlorax"]` = JSON `{kind: "coefficients", format_version,
//! subspace_id, task, provenance, labels, rank}` where `rank` maps each module to its r and
//! `labels` holds one label per head class (`null` without a head).
//!
//! Format **2** (written only when there is something to carry) adds what a projected PEFT
//! adapter holds besides its LoRA pairs ([`PassThrough`]): its non-LoRA tensors as
//! `peft:<key>` (dtype, shape and bytes as stored in the adapter) and, under `peft` in the
//! metadata, `task_type`, `fan_in_fan_out`, `modules_to_save`, `target_modules` and the
//! list of carried keys. `elx reconstruct` writes them back. Format 1 files read as before.

use super::format::{METADATA_KEY, check_tensor, manifest_json};
pub use crate::adapter::peft::PassThrough;
use crate::error::{Error, Result};
pub use crate::task::{Coefficients, Head};
use crate::tensorfile::{self, Dtype, TensorFile, TensorOut};
use faer::Mat;
use std::collections::BTreeMap;
use std::path::Path;

/// Coefficient file format version written by this build when it carries a PEFT
/// [`PassThrough`]; without one it writes [`COEFF_FORMAT_PLAIN`], so such files stay
/// readable by older builds.
pub const COEFF_FORMAT_VERSION: u32 = 2;

/// Format version of a coefficient file without a pass-through.
pub const COEFF_FORMAT_PLAIN: u32 = 1;

/// Tensor name prefix of carried PEFT tensors.
pub const PASS_THROUGH_PREFIX: &str = "peft:";

/// The `peft` entry of the metadata (format 2).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct PeftMeta {
    task_type: Option<String>,
    fan_in_fan_out: bool,
    modules_to_save: serde_json::Value,
    target_modules: serde_json::Value,
    tensors: Vec<String>,
}

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

impl Provenance {
    /// Name as written in the file.
    pub fn name(self) -> &'static str {
        match self {
            Provenance::Projected => "projected",
            Provenance::Finetuned => "finetuned",
            Provenance::ZeroShot => "zero-shot",
        }
    }
}

impl Head {
    /// Reads a head file: a safetensors file with `head.weight` [C, d] and `head.bias` [C] (any
    /// float dtype) and, in `__metadata__`, `labels` as a JSON list of C strings (class
    /// indices "0".."C-1" when absent). This is the layout of the fixtures' `head.safetensors`
    /// and of a head saved beside a PEFT adapter by `tools/`.
    pub fn read(path: &Path) -> Result<Head> {
        let tf = TensorFile::open(path)?;
        let info = tf.info(HEAD_WEIGHT).ok_or_else(|| {
            Error::bad_tensor(
                path,
                HEAD_WEIGHT,
                "expected this tensor [classes, features], found none",
            )
        })?;
        let (classes, features) = match info.shape.as_slice() {
            [c, d] if *c > 0 && *d > 0 => (*c, *d),
            other => {
                return Err(Error::bad_tensor(
                    path,
                    HEAD_WEIGHT,
                    format!(
                        "expected a non-empty 2-D tensor [classes, features], found shape {other:?}"
                    ),
                ));
            }
        };
        let weight = tf.read_mat(HEAD_WEIGHT, Some([classes, features]))?;
        let (shape, bias) = match tf.info(HEAD_BIAS) {
            Some(_) => tf.read_f64(HEAD_BIAS)?,
            None => {
                return Err(Error::bad_tensor(
                    path,
                    HEAD_BIAS,
                    format!("expected this tensor [{classes}], found none"),
                ));
            }
        };
        if shape != [classes] {
            return Err(Error::bad_tensor(
                path,
                HEAD_BIAS,
                format!("expected shape [{classes}], found {shape:?}"),
            ));
        }
        let labels = match tf.metadata().and_then(|m| m.get("labels")) {
            None => (0..classes).map(|i| i.to_string()).collect(),
            Some(json) => {
                let labels: Vec<String> = serde_json::from_str(json).map_err(|e| {
                    Error::bad_tensor(
                        path,
                        "__metadata__.labels",
                        format!("expected a JSON list of strings ({e})"),
                    )
                })?;
                if labels.len() != classes {
                    return Err(Error::bad_tensor(
                        path,
                        "__metadata__.labels",
                        format!(
                            "expected {classes} labels (one per row of head.weight), found {}",
                            labels.len()
                        ),
                    ));
                }
                labels
            }
        };
        Ok(Head {
            weight,
            bias,
            labels,
        })
    }
}

/// One task's coefficients.
#[derive(Clone, Debug)]
pub struct CoeffFile {
    /// Id of the bundle these coefficients belong to.
    pub subspace_id: String,
    /// Task name.
    pub task: String,
    /// How it was made.
    pub provenance: Provenance,
    /// Per-module coefficients (a subset of the bundle's modules; absent ones are zero).
    pub modules: BTreeMap<String, Coefficients>,
    /// Optional classification head.
    pub head: Option<Head>,
}

/// The JSON metadata of a coefficient file.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct CoeffMeta {
    kind: String,
    format_version: u32,
    subspace_id: String,
    task: String,
    provenance: Provenance,
    labels: Option<Vec<String>>,
    rank: BTreeMap<String, usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peft: Option<PeftMeta>,
}

const KIND: &str = "coefficients";
const HEAD_WEIGHT: &str = "head.weight";
const HEAD_BIAS: &str = "head.bias";

fn mat_values(m: &Mat<f64>) -> Vec<f64> {
    (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)]))
        .collect()
}

/// Whether every value stays finite once stored as float32 (1e39 is a finite f64 but an
/// infinite f32: the file would hold `inf`).
fn all_finite(v: &[f64]) -> bool {
    v.iter()
        .all(|x| x.is_finite() && x.abs() <= f64::from(f32::MAX))
}

impl CoeffFile {
    /// The task that runs the base model: no module's coefficients, which the runtime
    /// serves as all zeros (no correction).
    pub fn base(subspace_id: &str) -> CoeffFile {
        CoeffFile {
            subspace_id: subspace_id.to_string(),
            task: "base".into(),
            provenance: Provenance::ZeroShot,
            modules: BTreeMap::new(),
            head: None,
        }
    }

    /// Writes atomically (all tensors as f32), format 1.
    pub fn write(&self, path: &Path) -> Result<()> {
        self.write_with(path, None)
    }

    /// Writes atomically, with a PEFT adapter's [`PassThrough`] (format 2; format 1 when
    /// `None`). The carried tensors keep their dtype and bytes.
    pub fn write_with(&self, path: &Path, pass: Option<&PassThrough>) -> Result<()> {
        let mut tensors = Vec::new();
        let mut rank = BTreeMap::new();
        for (name, c) in &self.modules {
            let r = c.alpha_a.nrows();
            if c.alpha_b.ncols() != r {
                return Err(Error::Usage(format!(
                    "module `{name}`: alpha_A has {r} rows but alpha_B has {} columns",
                    c.alpha_b.ncols()
                )));
            }
            let (a, b) = (mat_values(&c.alpha_a), mat_values(&c.alpha_b));
            if !all_finite(&a) || !all_finite(&b) {
                return Err(Error::Numeric(format!(
                    "module `{name}`: coefficients that are not finite as float32"
                )));
            }
            tensors.push(TensorOut::from_f64(
                format!("{name}.alpha_A"),
                Dtype::F32,
                vec![r, c.alpha_a.ncols()],
                &a,
            ));
            tensors.push(TensorOut::from_f64(
                format!("{name}.alpha_B"),
                Dtype::F32,
                vec![c.alpha_b.nrows(), r],
                &b,
            ));
            rank.insert(name.clone(), r);
        }
        let labels = match &self.head {
            Some(h) => {
                let classes = h.weight.nrows();
                if h.bias.len() != classes || h.labels.len() != classes {
                    return Err(Error::Usage(format!(
                        "head: weight has {classes} rows, bias {} entries and {} labels",
                        h.bias.len(),
                        h.labels.len()
                    )));
                }
                let w = mat_values(&h.weight);
                if !all_finite(&w) || !all_finite(&h.bias) {
                    return Err(Error::Numeric(
                        "head: weights that are not finite as float32".into(),
                    ));
                }
                tensors.push(TensorOut::from_f64(
                    HEAD_WEIGHT,
                    Dtype::F32,
                    vec![classes, h.weight.ncols()],
                    &w,
                ));
                tensors.push(TensorOut::from_f64(
                    HEAD_BIAS,
                    Dtype::F32,
                    vec![classes],
                    &h.bias,
                ));
                Some(h.labels.clone())
            }
            None => None,
        };
        let peft = pass.map(|p| PeftMeta {
            task_type: p.task_type.clone(),
            fan_in_fan_out: p.fan_in_fan_out,
            modules_to_save: p.modules_to_save.clone(),
            target_modules: p.target_modules.clone(),
            tensors: p.tensors.iter().map(|t| t.name.clone()).collect(),
        });
        for t in pass.map_or(&[][..], |p| &p.tensors[..]) {
            tensors.push(TensorOut {
                name: format!("{PASS_THROUGH_PREFIX}{}", t.name),
                ..t.clone()
            });
        }
        let meta = CoeffMeta {
            kind: KIND.into(),
            format_version: if peft.is_some() {
                COEFF_FORMAT_VERSION
            } else {
                COEFF_FORMAT_PLAIN
            },
            subspace_id: self.subspace_id.clone(),
            task: self.task.clone(),
            provenance: self.provenance,
            labels,
            rank,
            peft,
        };
        let json = serde_json::to_string(&meta)
            .map_err(|e| Error::Usage(format!("cannot serialize metadata: {e}")))?;
        let mut md = BTreeMap::new();
        md.insert(METADATA_KEY.to_string(), json);
        tensorfile::write(path, tensors, md)
    }

    /// Reads and validates a coefficient file (no subspace check).
    pub fn read(path: &Path) -> Result<CoeffFile> {
        Self::parse(TensorFile::open(path)?)
    }

    /// Validates a coefficient file held in memory (no subspace check); `name` stands for
    /// its path in error messages.
    pub fn from_bytes(name: &Path, bytes: Vec<u8>) -> Result<CoeffFile> {
        Self::parse(TensorFile::from_bytes(name, bytes)?)
    }

    /// Reads the tensors and metadata of a validated safetensors file.
    fn parse(tf: TensorFile) -> Result<CoeffFile> {
        let path = tf.path().to_path_buf();
        let path = path.as_path();
        let meta = parse_meta(&tf)?;
        let mut modules = BTreeMap::new();
        let mut head_seen = false;
        for name in tf.names() {
            if let Some(module) = name.strip_suffix(".alpha_A") {
                let r = *meta.rank.get(module).ok_or_else(|| {
                    Error::bad_tensor(
                        path,
                        name,
                        format!("expected module `{module}` listed in the metadata's rank map"),
                    )
                })?;
                let a = read_2d(&tf, name, Some(r), None)?;
                let b_name = format!("{module}.alpha_B");
                let b = read_2d(&tf, &b_name, None, Some(r))?;
                modules.insert(
                    module.to_string(),
                    Coefficients {
                        alpha_a: a,
                        alpha_b: b,
                    },
                );
            } else if let Some(module) = name.strip_suffix(".alpha_B") {
                if tf.info(&format!("{module}.alpha_A")).is_none() {
                    return Err(Error::bad_tensor(
                        path,
                        format!("{module}.alpha_A"),
                        "expected this tensor beside alpha_B",
                    ));
                }
            } else if name == HEAD_WEIGHT || name == HEAD_BIAS {
                head_seen = true;
            } else if let Some(key) = name.strip_prefix(PASS_THROUGH_PREFIX)
                && meta
                    .peft
                    .as_ref()
                    .is_some_and(|p| p.tensors.iter().any(|t| t == key))
            {
                // A carried PEFT tensor: read by `read_pass_through`.
            } else {
                return Err(Error::bad_tensor(
                    path,
                    name,
                    "expected only `<module>.alpha_A`, `<module>.alpha_B`, `head.weight`, `head.bias`",
                ));
            }
        }
        if let Some(m) = meta.rank.keys().find(|m| !modules.contains_key(*m)) {
            return Err(Error::bad_tensor(
                path,
                format!("{m}.alpha_A"),
                "expected this tensor (its module is in the rank map)",
            ));
        }
        let head = match (head_seen, meta.labels) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(Error::bad_tensor(
                    path,
                    HEAD_WEIGHT,
                    "expected this tensor (the metadata lists head labels)",
                ));
            }
            (true, labels) => {
                let weight = read_2d(&tf, HEAD_WEIGHT, None, None)?;
                let classes = weight.nrows();
                check_tensor(&tf, HEAD_BIAS, Dtype::F32, Some(&[classes]))?;
                let (_, bias) = tf.read_f64(HEAD_BIAS)?;
                let labels = labels.unwrap_or_default();
                if labels.len() != classes {
                    return Err(Error::bad_tensor(
                        path,
                        "__metadata__.eigenlorax.labels",
                        format!(
                            "expected {classes} labels (one per head class), found {}",
                            labels.len()
                        ),
                    ));
                }
                Some(Head {
                    weight,
                    bias,
                    labels,
                })
            }
        };
        Ok(CoeffFile {
            subspace_id: meta.subspace_id,
            task: meta.task,
            provenance: meta.provenance,
            modules,
            head,
        })
    }

    /// The PEFT [`PassThrough`] a coefficient file carries (format 2), `None` when it carries
    /// none. A listed tensor that is missing is an error naming it.
    pub fn read_pass_through(path: &Path) -> Result<Option<PassThrough>> {
        let tf = TensorFile::open(path)?;
        let meta = parse_meta(&tf)?;
        let Some(p) = meta.peft else {
            return Ok(None);
        };
        let mut tensors = Vec::with_capacity(p.tensors.len());
        for key in &p.tensors {
            let stored = format!("{PASS_THROUGH_PREFIX}{key}");
            let shape = tf.info(&stored).map(|i| i.shape).ok_or_else(|| {
                Error::bad_tensor(
                    path,
                    &stored,
                    "expected this tensor (the metadata lists it as carried)",
                )
            })?;
            let (dtype, data) = tf.raw(&stored)?;
            tensors.push(TensorOut {
                name: key.clone(),
                dtype,
                shape,
                data: data.to_vec(),
            });
        }
        Ok(Some(PassThrough {
            task_type: p.task_type,
            fan_in_fan_out: p.fan_in_fan_out,
            modules_to_save: p.modules_to_save,
            target_modules: p.target_modules,
            tensors,
        }))
    }

    /// Reads a coefficient file and checks it against a bundle ([`CoeffFile::check_for`]).
    pub fn read_for(path: &Path, bundle: &super::Manifest) -> Result<CoeffFile> {
        let c = CoeffFile::read(path)?;
        c.check_for(path, bundle)?;
        Ok(c)
    }

    /// [`CoeffFile::read_for`] on a file held in memory; `name` stands for its path.
    pub fn from_bytes_for(
        name: &Path,
        bytes: Vec<u8>,
        bundle: &super::Manifest,
    ) -> Result<CoeffFile> {
        let c = CoeffFile::from_bytes(name, bytes)?;
        c.check_for(name, bundle)?;
        Ok(c)
    }

    /// Checks these coefficients against a bundle: same subspace id (an error naming both
    /// ids otherwise), known modules, shapes that fit K_A / K_B, a rank of at most the
    /// module's r_max (what the patched graph holds), magnitudes an f32 run can carry
    /// ([`crate::task::Coefficients::check_magnitude`]). `path` names the source in errors.
    pub fn check_for(&self, path: &Path, bundle: &super::Manifest) -> Result<()> {
        if self.subspace_id != bundle.subspace_id {
            return Err(Error::SubspaceMismatch {
                path: path.to_path_buf(),
                expected: bundle.subspace_id.clone(),
                found: self.subspace_id.clone(),
            });
        }
        for (name, co) in &self.modules {
            let mm = bundle.modules.get(name).ok_or_else(|| {
                Error::bad_tensor(
                    path,
                    format!("{name}.alpha_A"),
                    format!(
                        "expected a module of subspace {}, which has no module `{name}`",
                        bundle.subspace_id
                    ),
                )
            })?;
            if co.alpha_a.ncols() != mm.k_a {
                return Err(Error::bad_tensor(
                    path,
                    format!("{name}.alpha_A"),
                    format!(
                        "expected shape [r, {}] (K_A of the bundle), found [{}, {}]",
                        mm.k_a,
                        co.alpha_a.nrows(),
                        co.alpha_a.ncols()
                    ),
                ));
            }
            if co.alpha_b.nrows() != mm.k_b {
                return Err(Error::bad_tensor(
                    path,
                    format!("{name}.alpha_B"),
                    format!(
                        "expected shape [{}, r] (K_B of the bundle), found [{}, {}]",
                        mm.k_b,
                        co.alpha_b.nrows(),
                        co.alpha_b.ncols()
                    ),
                ));
            }
            if co.alpha_a.nrows() > mm.r_max {
                return Err(Error::bad_tensor(
                    path,
                    format!("{name}.alpha_A"),
                    format!(
                        "expected a rank of at most {} (the bundle's r_max for this module, what a bound model holds), found {}; extract the bundle with this adapter among its sources to serve it",
                        mm.r_max,
                        co.alpha_a.nrows()
                    ),
                ));
            }
            co.check_magnitude(mm.in_features)
                .map_err(|m| Error::bad_tensor(path, format!("{name}.alpha_A"), m))?;
        }
        Ok(())
    }
}

/// Parses the metadata; errors say what kind of file this is when it is not a coefficient file.
fn parse_meta(tf: &TensorFile) -> Result<CoeffMeta> {
    let json = manifest_json(tf, "a coefficient file without one")?;
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        Error::bad_tensor(
            tf.path(),
            "__metadata__.eigenlorax",
            format!("expected valid JSON ({e})"),
        )
    })?;
    if value.get("kind").and_then(|k| k.as_str()) != Some(KIND) {
        if value.get("modules").is_some() && value.get("dtype").is_some() {
            return Err(Error::bad_file(
                tf.path(),
                "expected a coefficient file (.elxc), found a bundle (.elxb)",
            ));
        }
        return Err(Error::bad_tensor(
            tf.path(),
            "__metadata__.eigenlorax",
            "expected kind \"coefficients\"",
        ));
    }
    let version = value.get("format_version").and_then(|v| v.as_u64());
    match version {
        Some(v)
            if (u64::from(COEFF_FORMAT_PLAIN)..=u64::from(COEFF_FORMAT_VERSION)).contains(&v) => {}
        other => {
            return Err(Error::bad_file(
                tf.path(),
                format!(
                    "expected coefficient format version {COEFF_FORMAT_PLAIN} to {COEFF_FORMAT_VERSION}, found {other:?}"
                ),
            ));
        }
    }
    // The carried PEFT part and format 2 come together.
    if (version == Some(u64::from(COEFF_FORMAT_VERSION))) != value.get("peft").is_some() {
        return Err(Error::bad_tensor(
            tf.path(),
            "__metadata__.eigenlorax.peft",
            format!(
                "expected a `peft` entry exactly in format version {COEFF_FORMAT_VERSION}, found format version {} {} one",
                version.unwrap_or(0),
                if value.get("peft").is_some() {
                    "with"
                } else {
                    "without"
                }
            ),
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        Error::bad_tensor(
            tf.path(),
            "__metadata__.eigenlorax",
            format!("expected coefficient metadata ({e})"),
        )
    })
}

/// Reads an f32 2-D tensor, checking rows / cols when given and that it is not empty.
fn read_2d(
    tf: &TensorFile,
    name: &str,
    rows: Option<usize>,
    cols: Option<usize>,
) -> Result<Mat<f64>> {
    let info = tf
        .info(name)
        .ok_or_else(|| Error::bad_tensor(tf.path(), name, "expected this tensor, found none"))?;
    if info.dtype != Dtype::F32 {
        return Err(Error::bad_tensor(
            tf.path(),
            name,
            format!("expected dtype F32, found {}", info.dtype.name()),
        ));
    }
    let shape_ok = match info.shape.as_slice() {
        [r, c] => rows.is_none_or(|x| x == *r) && cols.is_none_or(|x| x == *c) && *r > 0 && *c > 0,
        _ => false,
    };
    if !shape_ok {
        let want = |x: Option<usize>, n: &str| x.map_or(n.to_string(), |v| v.to_string());
        return Err(Error::bad_tensor(
            tf.path(),
            name,
            format!(
                "expected shape [{}, {}] (non-empty), found {:?}",
                want(rows, "rows"),
                want(cols, "cols"),
                info.shape
            ),
        ));
    }
    tf.read_mat(name, None)
}
