//! Reading a bundle, with every check: the manifest and its version, the binding's hash,
//! every tensor's dtype and shape, the base identity and the subspace id over every stored
//! byte ([`Bundle::read`], [`Bundle::read_manifest`]).

use super::super::quant::StorageDtype;
use super::id::IdHasher;
use super::tensors::{Names, check_tensor, read_module};
use super::{
    BINDING_HASH_KEY, BUNDLE_FORMAT_OLDEST, BUNDLE_FORMAT_VERSION, BaseIdentity, Bundle,
    METADATA_KEY, Manifest, binding_hash,
};
use crate::error::{Error, Result};
use crate::subspace::Subspace;
use crate::tensorfile::{Dtype, TensorFile};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Checks the binding of a read manifest against its stored hash.
fn check_binding(tf: &TensorFile, manifest: &Manifest) -> Result<()> {
    let Some(b) = &manifest.binding else {
        return Ok(());
    };
    let stored = tf.metadata().and_then(|m| m.get(BINDING_HASH_KEY));
    let want = binding_hash(&manifest.subspace_id, b)?;
    match stored {
        Some(h) if *h == want => Ok(()),
        Some(_) => Err(Error::bad_tensor(
            tf.path(),
            "__metadata__.eigenlorax.binding",
            "expected the binding that its hash covers: the binding was modified or is corrupt (run `elx bind` again)",
        )),
        None => Err(Error::bad_tensor(
            tf.path(),
            "__metadata__.eigenlorax.binding",
            format!(
                "expected the binding's hash under `{BINDING_HASH_KEY}` (a bundle bound by an older elx, or edited): run `elx bind` again"
            ),
        )),
    }
}

/// Reads the JSON under `__metadata__["eigenlorax"]` of an opened file.
pub(crate) fn manifest_json<'a>(tf: &'a TensorFile, what: &str) -> Result<&'a str> {
    tf.metadata()
        .and_then(|m| m.get(METADATA_KEY))
        .map(|s| s.as_str())
        .ok_or_else(|| {
            Error::bad_file(
                tf.path(),
                format!("expected a `{METADATA_KEY}` entry in __metadata__ (not {what})"),
            )
        })
}

impl Bundle {
    /// Reads and validates a bundle (shapes against the manifest, finite values, the id).
    pub fn read(path: &Path) -> Result<Bundle> {
        let (tf, manifest) = open_checked(path)?;
        let mut modules = BTreeMap::new();
        for (name, mm) in &manifest.modules {
            modules.insert(name.clone(), read_module(&tf, name, mm, manifest.dtype)?);
        }
        let subspace = Subspace {
            modules,
            options: manifest.options.clone(),
        };
        Ok(Bundle {
            path: path.to_path_buf(),
            manifest,
            subspace,
        })
    }

    /// The manifest of a bundle, validated as [`Bundle::read`] does (tensor shapes, the
    /// base identity, the binding's hash, the subspace id over every stored byte) without
    /// converting its bases: memory stays at the manifest however large the bundle
    /// (`elx extract --update`).
    pub fn read_manifest(path: &Path) -> Result<Manifest> {
        open_checked(path).map(|(_, m)| m)
    }
}

/// Opens a bundle and validates everything but the bases' values: the manifest, the binding's
/// hash, every tensor's dtype and shape, the base identity and the subspace id.
fn open_checked(path: &Path) -> Result<(TensorFile, Manifest)> {
    let tf = TensorFile::open(path)?;
    let manifest = parse_manifest(&tf)?;
    check_binding(&tf, &manifest)?;
    let mut expected = BTreeSet::new();
    for (name, mm) in &manifest.modules {
        for (list_name, side) in [("a", &mm.a), ("b", &mm.b)] {
            let k = if list_name == "a" { mm.k_a } else { mm.k_b };
            if side.k_total() != k {
                return Err(Error::bad_tensor(
                    path,
                    format!("modules.{name}.{list_name}"),
                    format!(
                        "expected k_{list_name} = {k} = principal + mean + pseudo, found {}",
                        side.k_total()
                    ),
                ));
            }
        }
        if mm.k_a > mm.in_features || mm.k_b > mm.out_features {
            return Err(Error::bad_tensor(
                path,
                format!("modules.{name}"),
                format!(
                    "expected K_A <= in and K_B <= out (orthonormal bases), found K_A={} in={} K_B={} out={}",
                    mm.k_a, mm.in_features, mm.k_b, mm.out_features
                ),
            ));
        }
        let n = Names::of(name);
        let vd = manifest.dtype.tensor_dtype();
        let mut shapes: Vec<(&String, Dtype, Vec<usize>)> = vec![
            (&n.v_a, vd, vec![mm.k_a, mm.in_features]),
            (&n.v_b, vd, vec![mm.out_features, mm.k_b]),
        ];
        if manifest.dtype == StorageDtype::Int8 {
            shapes.push((&n.v_a_scale, Dtype::F32, vec![mm.k_a]));
            shapes.push((&n.v_b_scale, Dtype::F32, vec![mm.k_b]));
        }
        for (t, d, shape) in shapes {
            check_tensor(&tf, t, d, Some(&shape))?;
            expected.insert(t.clone());
        }
        for t in [&n.sigma_a, &n.sigma_b] {
            check_tensor(&tf, t, Dtype::F32, None)?;
            expected.insert(t.clone());
        }
    }
    for t in tf.names() {
        if !expected.contains(t) {
            return Err(Error::bad_tensor(
                path,
                t,
                "expected only the tensors of the modules listed in the manifest",
            ));
        }
    }
    // After the shapes (a wrong shape is named as such), before the id. The id is
    // hashed tensor by tensor in name order, each one's mapped pages released after.
    check_base(path, &manifest)?;
    let mut h = IdHasher::new(expected.len());
    for t in &expected {
        let (dtype, data) = tf.raw(t)?;
        let shape = tf.info(t).map(|i| i.shape).unwrap_or_default();
        h.tensor(t, dtype, &shape, data.len());
        h.data(data);
        tf.release(t);
    }
    let id = h.finish(&manifest)?;
    if id != manifest.subspace_id {
        return Err(Error::bad_file(
            path,
            format!(
                "expected content that hashes to its subspace id {}, but it hashes to {id}: the file was modified or is corrupt",
                manifest.subspace_id
            ),
        ));
    }
    Ok((tf, manifest))
}

/// Format 3 stores the base identity, which must be what its sources and modules give;
/// older formats must not have one.
fn check_base(path: &Path, m: &Manifest) -> Result<()> {
    match (&m.base, m.format_version >= 3) {
        (Some(b), true) => {
            let want = BaseIdentity::of(&m.sources, &m.modules);
            if *b != want {
                return Err(Error::bad_tensor(
                    path,
                    "__metadata__.eigenlorax.base",
                    format!(
                        "expected the base identity its sources and modules give ({}), found {}",
                        want.describe(),
                        b.describe()
                    ),
                ));
            }
            Ok(())
        }
        (None, true) => Err(Error::bad_tensor(
            path,
            "__metadata__.eigenlorax.base",
            format!(
                "expected the base model identity (format version {}), found none",
                m.format_version
            ),
        )),
        (Some(_), false) => Err(Error::bad_tensor(
            path,
            "__metadata__.eigenlorax.base",
            format!(
                "expected no base identity in format version {} (it came with version 3)",
                m.format_version
            ),
        )),
        (None, false) => Ok(()),
    }
}

/// Parses and version-checks the manifest of an opened bundle.
pub(super) fn parse_manifest(tf: &TensorFile) -> Result<Manifest> {
    let json = manifest_json(tf, "a bundle without one")?;
    // Check the version first so that a newer layout gets a version message, not a parse error.
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        Error::bad_tensor(
            tf.path(),
            "__metadata__.eigenlorax",
            format!("expected valid JSON ({e})"),
        )
    })?;
    if value.get("kind").and_then(|k| k.as_str()) == Some("coefficients") {
        return Err(Error::bad_file(
            tf.path(),
            "expected a bundle (.elxb), found a coefficient file (.elxc)",
        ));
    }
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v)
            if (u64::from(BUNDLE_FORMAT_OLDEST)..=u64::from(BUNDLE_FORMAT_VERSION))
                .contains(&v) => {}
        Some(v) => {
            return Err(Error::bad_file(
                tf.path(),
                format!(
                    "expected bundle format version {BUNDLE_FORMAT_OLDEST} to {BUNDLE_FORMAT_VERSION}, found version {v} (written by another elx version)"
                ),
            ));
        }
        None => {
            if value.get("task").is_some() {
                return Err(Error::bad_file(
                    tf.path(),
                    "expected a bundle (.elxb), found a coefficient file (.elxc)",
                ));
            }
            return Err(Error::bad_tensor(
                tf.path(),
                "__metadata__.eigenlorax",
                "expected a format_version number",
            ));
        }
    }
    serde_json::from_value(value).map_err(|e| {
        Error::bad_tensor(
            tf.path(),
            "__metadata__.eigenlorax",
            format!("expected a bundle manifest ({e})"),
        )
    })
}
