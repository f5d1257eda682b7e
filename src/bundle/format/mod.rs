//! The `.elxb` bundle: manifest types, write and read.
//!
//! Layout (safetensors):
//!
//! | tensor | shape | dtype |
//! |---|---|---|
//! | `<module>.V_A` | [K_A, in] | f32 / f16 / bf16 / i8 |
//! | `<module>.V_B` | [out, K_B] | same |
//! | `<module>.V_A.scale` (int8 only) | `[K_A]` | f32, one per row of V_A |
//! | `<module>.V_B.scale` (int8 only) | `[K_B]` | f32, one per *column* of V_B (basis vector) |
//! | `<module>.sigma_A`, `<module>.sigma_B` | `[len]` | f32, singular values of the stacked side: all of them, or the top K kept (see [`SideSummary::full_spectrum`]) |
//!
//! and `__metadata__["eigenlorax"]` = the JSON [`Manifest`].
//!
//! Format versions: **3** (this build) adds the base model's identity ([`BaseIdentity`]: the
//! base model name the sources declare and a fingerprint of the module shapes). **2** records per side the total energy Σσ² of the stack
//! (`total_energy`) and, when the spectrum tensors hold only the top K values, `full_spectrum:
//! false`. **1** always stored the full spectrum and no total; it is still read (the total is
//! then Σσ² of the stored spectrum).
//!
//! The subspace id is `elx-` + the first 16 hex digits of a SHA-256 over every stored tensor
//! (sorted by name; each as length-prefixed name, dtype name, shape and bytes) followed by the
//! manifest JSON with `subspace_id` blanked and `binding` removed. Binding a bundle to a base
//! model therefore keeps its id, and any change to a component, a spectrum, an option or a
//! source hash changes it.
//!
//! Where things are: the manifest types (`manifest.rs`), the subspace id and the binding's
//! hash (`id.rs`), a module's stored tensors, encoded and decoded (`tensors.rs`), writing
//! (`write.rs`: [`Bundle::write`], the streaming [`BundleWriter`], [`Bundle::with_binding`])
//! and reading with every check (`read.rs`: [`Bundle::read`], [`Bundle::read_manifest`]).

mod id;
mod manifest;
mod read;
mod tensors;
mod write;

pub use id::binding_hash;
pub(in crate::bundle) use id::{Stored, compute_id, stored_of};
pub use manifest::{
    BaseIdentity, Binding, Manifest, ModuleBinding, ModuleManifest, SideSummary, SourceAdapter,
    WeightLayout,
};
pub(crate) use read::manifest_json;
pub(in crate::bundle) use tensors::Names;
pub(crate) use tensors::check_tensor;
pub use write::BundleWriter;
pub(in crate::bundle) use write::write_file;

use crate::subspace::Subspace;
use std::path::PathBuf;

/// Bundle format version written by this build.
pub const BUNDLE_FORMAT_VERSION: u32 = 3;

/// The oldest bundle format version this build still reads (1: full spectra, no totals).
pub const BUNDLE_FORMAT_OLDEST: u32 = 1;

/// The `__metadata__` key that holds the manifest JSON (bundles and coefficient files).
pub const METADATA_KEY: &str = "eigenlorax";

/// `__metadata__` key of the binding's own hash (see [`binding_hash`]). The subspace id
/// leaves the binding out on purpose (binding keeps every coefficient file valid), so the
/// binding is covered by this second hash, checked at load.
///
/// **An integrity check against accident, not against tampering.** The hash is unkeyed:
/// it catches a damaged file, a hand edit that forgot the hash, a bundle bound to another
/// model; anyone who can write the file can also recompute it (swap two modules' bindings,
/// rehash, and the bundle loads). The subspace id is the same kind of check. A deployment
/// that must detect deliberate changes should authenticate the whole file outside eigenlorax
/// (a detached signature of the `.elxb`, e.g. `minisign` / `ssh-keygen -Y sign` / GPG,
/// checked before `elx run` or `Engine::load`; or a read-only, verified file system such as
/// dm-verity), the same way it protects the base model and the binary.
pub const BINDING_HASH_KEY: &str = "eigenlorax.binding_sha256";

/// A bundle loaded in memory; components are dequantized to f64.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Dequantized bases and spectra.
    pub subspace: Subspace,
}
