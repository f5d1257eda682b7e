//! [`TensorFile`]: a safetensors file read through a memory map (or handed over in memory,
//! whole or one buffer per tensor), its tensors read as f64, f32 or raw bytes.

use super::{Dtype, MAX_TENSORS, TensorInfo, any_dtype_size, mat_from_row_major};
use crate::error::{Error, Result};
use faer::Mat;
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// One validated header entry.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    /// The dtype name as stored (may be one we cannot convert).
    pub(super) dtype_name: String,
    pub(super) dtype: Option<Dtype>,
    pub(super) shape: Vec<usize>,
    /// Which buffer holds it: 0 for a file; the tensor's own index for
    /// [`TensorFile::from_parts`].
    pub(super) part: usize,
    /// Absolute byte range in that buffer.
    pub(super) start: usize,
    pub(super) end: usize,
}

/// The bytes of a [`TensorFile`]: a read-only map of a file, a buffer handed over in
/// memory ([`TensorFile::from_bytes`]), or one borrowed buffer per tensor
/// ([`TensorFile::from_parts`]).
pub(super) enum Backing {
    Map(Mmap),
    Owned(Vec<u8>),
    Parts(Vec<TensorBytes>),
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backing::Map(m) => write!(f, "Map({} bytes)", m.len()),
            Backing::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
            Backing::Parts(p) => write!(f, "Parts({} tensors)", p.len()),
        }
    }
}

impl Backing {
    /// The whole buffer of a file (empty for parts).
    pub(super) fn whole(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
            Backing::Parts(_) => &[],
        }
    }

    /// The buffer that holds part `part`.
    fn part(&self, part: usize) -> &[u8] {
        match self {
            Backing::Parts(p) => p.get(part).map_or(&[], |b| b.as_ref().as_ref()),
            _ => self.whole(),
        }
    }
}

/// The bytes of one tensor handed over in memory, kept alive (and unmoved) by their owner:
/// a numpy array or a torch tensor behind the buffer protocol, or a `Vec<u8>`.
pub type TensorBytes = std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>;

/// One tensor of [`TensorFile::from_parts`]: its bytes stay where their owner keeps them.
pub struct MemTensor {
    /// Tensor name (key).
    pub name: String,
    /// safetensors dtype name ("F32", "BF16", ...).
    pub dtype: String,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Little-endian bytes, C order.
    pub bytes: TensorBytes,
}

/// A memory-mapped safetensors file (or an in-memory one) with a validated header.
#[derive(Debug)]
pub struct TensorFile {
    pub(super) path: PathBuf,
    pub(super) mmap: Backing,
    pub(super) entries: BTreeMap<String, Entry>,
    pub(super) metadata: Option<HashMap<String, String>>,
}

impl TensorFile {
    /// Opens and validates `path`. The header length, every offset and every shape are
    /// checked against the file size before anything is allocated from them.
    pub fn open(path: &Path) -> Result<TensorFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if file_len < 8 {
            return Err(Error::bad_file(
                path,
                format!(
                    "expected a safetensors file (8-byte header length, JSON header, data), found only {file_len} bytes (truncated?)"
                ),
            ));
        }
        // SAFETY: the map is read-only and lives as long as `self`. As with every mmap, a
        // concurrent truncation by another process is outside what we can defend against;
        // all bounds below are checked against the length seen at open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, Backing::Map(mmap))
    }

    /// Validates a safetensors file already in memory (e.g. handed over by an app); `name`
    /// stands for its path in error messages.
    pub fn from_bytes(name: &Path, bytes: Vec<u8>) -> Result<TensorFile> {
        Self::parse(name, Backing::Owned(bytes))
    }

    /// Tensors already in memory, each in its own buffer (a PEFT model's `state_dict`): no
    /// byte is copied. `name` stands for the file in error messages; `metadata` is the
    /// `__metadata__` a safetensors file of these tensors would carry. Every shape is checked
    /// against its buffer's length, as a file's header against the file.
    pub fn from_parts(
        name: &Path,
        tensors: Vec<MemTensor>,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<TensorFile> {
        if tensors.len() > MAX_TENSORS {
            return Err(Error::bad_file(
                name,
                format!(
                    "expected at most {MAX_TENSORS} tensors, found {}",
                    tensors.len()
                ),
            ));
        }
        let mut entries = BTreeMap::new();
        let mut parts = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.into_iter().enumerate() {
            let bad = |m: String| Error::bad_tensor(name, &t.name, m);
            if t.name == "__metadata__" || entries.contains_key(&t.name) {
                return Err(bad(
                    "expected each tensor name once (and not __metadata__)".into()
                ));
            }
            let elem = any_dtype_size(&t.dtype).ok_or_else(|| {
                bad(format!(
                    "expected a safetensors dtype (F64, F32, F16, BF16, I8, ...), found {:?}",
                    t.dtype
                ))
            })?;
            if t.shape.len() > 64 {
                return Err(bad("expected at most 64 dimensions".into()));
            }
            let len = t.bytes.as_ref().as_ref().len();
            let nbytes = t
                .shape
                .iter()
                .try_fold(elem, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| {
                    bad(format!(
                        "expected a shape whose size fits in memory, found {:?}",
                        t.shape
                    ))
                })?;
            if nbytes != len {
                return Err(bad(format!(
                    "expected {nbytes} bytes for shape {:?} of {}, found {len}",
                    t.shape, t.dtype
                )));
            }
            entries.insert(
                t.name,
                Entry {
                    dtype: Dtype::from_name(&t.dtype),
                    dtype_name: t.dtype,
                    shape: t.shape,
                    part: i,
                    start: 0,
                    end: len,
                },
            );
            parts.push(t.bytes);
        }
        Ok(TensorFile {
            path: name.to_path_buf(),
            mmap: Backing::Parts(parts),
            entries,
            metadata,
        })
    }

    /// SHA-256 (hex) of the safetensors file that holds these tensors and this metadata as
    /// the `safetensors` library writes it (Python's `save_file`, PEFT's `save_pretrained`):
    /// tensors by descending dtype then name, the header padded with spaces to 8 bytes. For a
    /// file read from disk, that file's hash when it was written this way. The bytes are
    /// streamed into the hash, never assembled.
    pub fn canonical_sha256(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let internal = |e: String| Error::Internal(format!("{}: {e}", self.path.display()));
        let mut order: Vec<(&String, &Entry, safetensors::Dtype)> = Vec::new();
        for (name, e) in &self.entries {
            let dtype: safetensors::Dtype =
                serde_json::from_value(serde_json::Value::String(e.dtype_name.clone()))
                    .map_err(|err| internal(format!("dtype {}: {err}", e.dtype_name)))?;
            order.push((name, e, dtype));
        }
        order.sort_by(|(ln, _, l), (rn, _, r)| r.cmp(l).then(ln.cmp(rn)));
        let mut offset = 0;
        let mut infos = Vec::with_capacity(order.len());
        for (name, e, dtype) in &order {
            let n = e.end - e.start;
            infos.push((
                (*name).clone(),
                safetensors::tensor::TensorInfo {
                    dtype: *dtype,
                    shape: e.shape.clone(),
                    data_offsets: (offset, offset + n),
                },
            ));
            offset += n;
        }
        let header = safetensors::tensor::Metadata::new(self.metadata.clone(), infos)
            .map_err(|err| internal(err.to_string()))?;
        let mut header = serde_json::to_string(&header)
            .map_err(|err| internal(err.to_string()))?
            .into_bytes();
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut h = Sha256::new();
        h.update((header.len() as u64).to_le_bytes());
        h.update(&header);
        for (_, e, _) in &order {
            h.update(self.mmap.part(e.part).get(e.start..e.end).unwrap_or(&[]));
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The file's path (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` string map, when the file has one.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.as_ref()
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(|k| k.as_str()).collect()
    }

    /// Dtype and shape of `name`; `None` if absent or of a dtype we cannot convert (reading
    /// such a tensor gives an error that names the dtype; see [`TensorFile::stored_info`]).
    pub fn info(&self, name: &str) -> Option<TensorInfo> {
        let e = self.entries.get(name)?;
        Some(TensorInfo {
            dtype: e.dtype?,
            shape: e.shape.clone(),
        })
    }

    /// Bytes `name` occupies in the file.
    pub fn stored_len(&self, name: &str) -> Option<usize> {
        let e = self.entries.get(name)?;
        Some(e.end - e.start)
    }

    /// Dtype name as stored (any safetensors dtype, e.g. "I64") and shape of `name`.
    pub fn stored_info(&self, name: &str) -> Option<(&str, &[usize])> {
        let e = self.entries.get(name)?;
        Some((e.dtype_name.as_str(), e.shape.as_slice()))
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| {
            Error::bad_tensor(
                &self.path,
                name,
                "expected this tensor in the file, found none",
            )
        })
    }

    /// The raw little-endian bytes of `name` and their dtype.
    pub fn raw(&self, name: &str) -> Result<(Dtype, &[u8])> {
        let e = self.entry(name)?;
        let dtype = e.dtype.ok_or_else(|| {
            Error::bad_tensor(
                &self.path,
                name,
                format!(
                    "expected dtype F64, F32, F16, BF16 or I8, found {}",
                    e.dtype_name
                ),
            )
        })?;
        let bytes = self.mmap.part(e.part).get(e.start..e.end).ok_or_else(|| {
            Error::bad_tensor(&self.path, name, "expected its bytes inside the file")
        })?;
        Ok((dtype, bytes))
    }

    /// Lets go of this process's mapped pages of tensor `name`, once its values have been
    /// copied out: the kernel's page cache keeps the file's bytes, and a later read of the
    /// tensor faults them back in from it. Without this, every page of every adapter file an
    /// extraction has read stays in its resident set (16 GB for 490 adapters of the
    /// Lots-of-LoRAs shape). Best effort: nothing happens for an in-memory file, an unknown
    /// name, or if the kernel refuses.
    pub fn release(&self, name: &str) {
        #[cfg(unix)]
        if let (Backing::Map(m), Some(e)) = (&self.mmap, self.entries.get(name))
            && e.end > e.start
        {
            // SAFETY: the map is a read-only *shared* mapping of a file (`Mmap::map`), for
            // which MADV_DONTNEED only drops page-table entries: any later access, through a
            // slice still borrowed from `raw` or a new read, sees the same file bytes again.
            // (Its hazard, zeroed pages, is for private and anonymous mappings.)
            let _ = unsafe {
                m.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    e.start,
                    e.end - e.start,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = name;
    }

    /// Any float dtype (F64/F32/F16/BF16) or I8 converted to f64; error naming file+tensor if
    /// absent or any value non-finite.
    pub fn read_f64(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
        let (dtype, bytes) = self.raw(name)?;
        let values = decode_f64(dtype, bytes);
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(self.non_finite(name, i, values.get(i).copied().unwrap_or(f64::NAN)));
        }
        Ok((self.entry(name)?.shape.clone(), values))
    }

    /// Same as [`TensorFile::read_f64`], as a row-major [rows x cols] matrix; error if not
    /// 2-D or (when given) the shape differs: "expected [r, c], found [..]".
    pub fn read_mat(&self, name: &str, expected: Option<[usize; 2]>) -> Result<Mat<f64>> {
        let shape = &self.entry(name)?.shape;
        let dims = match shape.as_slice() {
            [r, c] => [*r, *c],
            _ => {
                let want = match expected {
                    Some([r, c]) => format!("[{r}, {c}]"),
                    None => "a 2-D tensor".to_string(),
                };
                return Err(Error::bad_tensor(
                    &self.path,
                    name,
                    format!("expected {want}, found {shape:?}"),
                ));
            }
        };
        if let Some(want) = expected
            && want != dims
        {
            return Err(Error::bad_tensor(
                &self.path,
                name,
                format!("expected [{}, {}], found {:?}", want[0], want[1], shape),
            ));
        }
        let (_, values) = self.read_f64(name)?;
        Ok(mat_from_row_major(dims[0], dims[1], &values))
    }

    /// Same as [`TensorFile::read_f64`], as f32 (F64 values are rounded; overflow to ±inf is
    /// reported as non-finite).
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (dtype, bytes) = self.raw(name)?;
        let values: Vec<f32> = match dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            _ => decode_f64(dtype, bytes)
                .into_iter()
                .map(|v| v as f32)
                .collect(),
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(self.non_finite(
                name,
                i,
                values.get(i).map(|v| *v as f64).unwrap_or(f64::NAN),
            ));
        }
        Ok((self.entry(name)?.shape.clone(), values))
    }

    fn non_finite(&self, name: &str, index: usize, value: f64) -> Error {
        let what = if value.is_nan() {
            "NaN".to_string()
        } else {
            format!("{value}")
        };
        Error::bad_tensor(
            &self.path,
            name,
            format!("expected finite values, found {what} at index {index}"),
        )
    }
}

fn decode_f64(dtype: Dtype, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::I8 => bytes.iter().map(|&b| b as i8 as f64).collect(),
    }
}
