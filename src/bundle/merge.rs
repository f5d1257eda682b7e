//! Joins bundles extracted from the same adapters over disjoint module sets (`elx extract
//! --modules` / `--shard`) into the bundle a one-shot extraction writes, byte for byte.
//!
//! Every module's subspace depends only on that module's tensors, and a bundle stores each
//! module's tensors and manifest entry independently; the manifest's other fields (format
//! version, dtype, options, sources) must agree across the parts. The merge copies the stored bytes (no
//! dequantize/requantize round trip), writes them in the one-shot writer's order, and
//! recomputes the subspace id over the union, which is then the one-shot bundle's id.

use super::format::{Bundle, Manifest, Names, Stored, compute_id, stored_of, write_file};
use crate::error::{Error, Result};
use crate::tensorfile::{TensorFile, TensorOut};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Merges the bundles `parts` into `output` (atomically); returns its manifest.
///
/// Errors (naming the files): fewer than two parts; a part that is not a valid bundle; a
/// part whose format version, dtype, extraction options or source adapters differ from the first part's; a
/// module present in two parts; a bound part (bind the merged bundle instead).
pub fn merge(parts: &[PathBuf], output: &Path) -> Result<Manifest> {
    let Some(first_path) = parts.first() else {
        return Err(Error::Usage("no bundles to merge".into()));
    };
    if parts.len() < 2 {
        return Err(Error::Usage(format!(
            "merging needs at least two bundles, given only {}",
            first_path.display()
        )));
    }
    let mut read = Vec::with_capacity(parts.len());
    for p in parts {
        // Full validation of every part (shapes, finite values, its own id).
        let b = Bundle::read(p)?;
        if b.manifest.binding.is_some() {
            return Err(Error::bad_file(
                p,
                "expected an unbound bundle (merge the parts, then `elx bind` the result)",
            ));
        }
        read.push(b.manifest);
    }
    let first = &read[0];
    let mut owner: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, m) in read.iter().enumerate() {
        let path = &parts[i];
        let differs = |what: &str| {
            Err(Error::bad_file(
                path,
                format!(
                    "expected the same {what} as {} (parts of one extraction), found another",
                    first_path.display()
                ),
            ))
        };
        if m.format_version != first.format_version {
            return differs("bundle format version");
        }
        if m.dtype != first.dtype {
            return differs("storage dtype");
        }
        if m.options != first.options {
            return differs("extraction options");
        }
        if m.sources != first.sources {
            return differs("source adapters (paths, hashes, order)");
        }
        for name in m.modules.keys() {
            if let Some(&j) = owner.get(name.as_str()) {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "module `{name}` is also in {}: the parts must hold disjoint modules",
                        parts[j].display()
                    ),
                ));
            }
            owner.insert(name, i);
        }
    }
    let files = parts
        .iter()
        .map(|p| TensorFile::open(p))
        .collect::<Result<Vec<_>>>()?;
    let mut tensors = Vec::new();
    let mut modules = BTreeMap::new();
    for (&name, &i) in &owner {
        let names = Names::of(name);
        for t in names.stored(first.dtype) {
            let (dtype, data) = files[i].raw(t)?;
            let shape = files[i]
                .info(t)
                .map(|info| info.shape)
                .ok_or_else(|| Error::bad_tensor(&parts[i], t, "expected this tensor"))?;
            tensors.push(TensorOut {
                name: t.to_string(),
                dtype,
                shape,
                data: data.to_vec(),
            });
        }
        if let Some(mm) = read[i].modules.get(name) {
            modules.insert(name.to_string(), mm.clone());
        }
    }
    let mut manifest = Manifest {
        format_version: first.format_version,
        subspace_id: String::new(),
        dtype: first.dtype,
        options: first.options.clone(),
        modules,
        sources: first.sources.clone(),
        binding: None,
        base: None,
    };
    if first.format_version >= 3 {
        manifest.base = Some(super::format::BaseIdentity::of(
            &manifest.sources,
            &manifest.modules,
        ));
    }
    let stored: Vec<Stored<'_>> = tensors.iter().map(stored_of).collect();
    manifest.subspace_id = compute_id(stored, &manifest)?;
    drop(files);
    write_file(output, tensors, &manifest)?;
    Ok(manifest)
}
