//! The subspace id (a SHA-256 over every stored tensor and the manifest without the id and
//! the binding) and the binding's own hash.

use super::{Binding, Manifest};
use crate::error::{Error, Result};
use crate::tensorfile::{Dtype, TensorOut};
use sha2::{Digest, Sha256};

/// A stored tensor as the id sees it.
pub(in crate::bundle) struct Stored<'a> {
    pub(super) name: &'a str,
    pub(super) dtype: Dtype,
    pub(super) shape: &'a [usize],
    pub(super) data: &'a [u8],
}

fn hash_field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// The subspace id of stored tensors plus a manifest (its `subspace_id` and `binding` are
/// ignored).
pub(in crate::bundle) fn compute_id(
    mut tensors: Vec<Stored<'_>>,
    manifest: &Manifest,
) -> Result<String> {
    tensors.sort_by(|a, b| a.name.cmp(b.name));
    let mut h = IdHasher::new(tensors.len());
    for t in &tensors {
        h.tensor(t.name, t.dtype, t.shape, t.data.len());
        h.data(t.data);
    }
    h.finish(manifest)
}

/// The subspace id's hash, fed one tensor at a time **in ascending name order** (the id's
/// definition): [`compute_id`] over tensors in memory, [`BundleWriter`] over spooled ones.
pub(super) struct IdHasher(Sha256);

impl IdHasher {
    pub(super) fn new(n_tensors: usize) -> IdHasher {
        let mut h = Sha256::new();
        h.update(b"eigenlorax-bundle-id-v1");
        h.update((n_tensors as u64).to_le_bytes());
        IdHasher(h)
    }

    /// Starts a tensor of `len` data bytes; its bytes follow through [`IdHasher::data`].
    pub(super) fn tensor(&mut self, name: &str, dtype: Dtype, shape: &[usize], len: usize) {
        let h = &mut self.0;
        hash_field(h, name.as_bytes());
        hash_field(h, dtype.name().as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for &d in shape {
            h.update((d as u64).to_le_bytes());
        }
        h.update((len as u64).to_le_bytes());
    }

    pub(super) fn data(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Ends with the manifest (without `subspace_id` and `binding`) and returns the id.
    pub(super) fn finish(self, manifest: &Manifest) -> Result<String> {
        let mut h = self.0;
        let mut canon = manifest.clone();
        canon.subspace_id = String::new();
        canon.binding = None;
        let json = serde_json::to_string(&canon)
            .map_err(|e| Error::Usage(format!("cannot serialize manifest: {e}")))?;
        hash_field(&mut h, json.as_bytes());
        let digest = h.finalize();
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(format!("elx-{hex}"))
    }
}

/// A tensor about to be written, as the id sees it.
pub(in crate::bundle) fn stored_of(t: &TensorOut) -> Stored<'_> {
    Stored {
        name: &t.name,
        dtype: t.dtype,
        shape: &t.shape,
        data: &t.data,
    }
}

/// SHA-256 (hex) of a binding for one subspace: the subspace id, then the binding's JSON.
/// Any edit of a node, input, output, weight, layout or base hash changes it. Unkeyed: it
/// guards against accidents, not against someone who can rewrite the file and recompute it
/// ([`BINDING_HASH_KEY`](super::BINDING_HASH_KEY) says how to get tamper-evidence).
pub fn binding_hash(subspace_id: &str, binding: &Binding) -> Result<String> {
    let json = serde_json::to_string(binding)
        .map_err(|e| Error::Usage(format!("cannot serialize the binding: {e}")))?;
    let mut h = Sha256::new();
    h.update(b"eigenlorax-binding-v1");
    hash_field(&mut h, subspace_id.as_bytes());
    hash_field(&mut h, json.as_bytes());
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
