//! Stage 3: the `.elxb` bundle and `.elxc` coefficient files.
//!
//! Both are safetensors files with one JSON manifest in `__metadata__["eigenlorax"]`, written
//! atomically. A bundle holds per module `<module>.V_A` [K_A x in] and `<module>.V_B`
//! [out x K_B] (f32, f16, bf16, or int8 with a per-row absmax `<module>.V_A.scale`), the
//! spectra `<module>.sigma_A` / `<module>.sigma_B` (f32), and the manifest. Its subspace id
//! hashes the stored components and the manifest (without the binding, which `elx bind` adds
//! later and which must not orphan existing coefficient files).
//!
//! [`stats`] keeps, beside a bundle (`.elxs`), the per-module sufficient statistics that let
//! `elx extract --update` add adapters without reading the old ones.
//!
//! [`merge`] joins bundles extracted over disjoint module sets into the one-shot bundle.
//!
//! [`fidelity`] bounds what storage and truncation lose; [`random_control`] draws the random
//! subspaces of a bundle's shapes that every capture is compared with.
//!
//! A coefficient file holds `<module>.alpha_A` [r x K_A] and `<module>.alpha_B` [K_B x r],
//! optionally `head.weight` `[C x d]` and `head.bias` `[C]`, and names the subspace it belongs to.

pub mod coeffs;
pub mod fidelity;
pub mod format;
pub mod merge;
pub mod quant;
pub mod random_control;
pub mod stats;

pub use coeffs::{CoeffFile, Head, Provenance, RemapMeasure};
pub use format::{
    BaseIdentity, Binding, Bundle, BundleWriter, Manifest, ModuleBinding, ModuleManifest,
    SourceAdapter, WeightLayout,
};
pub use quant::StorageDtype;
pub use stats::{StatsFile, StatsWriter};
