//! Safetensors files, read through a memory map with every header field checked against the
//! file's real size, and written atomically.
//!
//! Shared infrastructure (like [`crate::util`]): every stage stores its tensors this way.
//!
//! The header is parsed here rather than by the `safetensors` crate so that every failure
//! becomes an [`Error::BadInput`] naming the file and the tensor, and so that nothing is
//! allocated from a header field before it has been checked against the file size.

use crate::error::{Error, Result};
use faer::{Mat, MatRef};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Largest header we accept. Real headers are a few hundred KB even for thousands of
/// tensors; a bigger one is corrupt or hostile, and refusing it bounds the JSON parse.
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Most tensors a file may hold. Real adapters and checkpoint shards hold a few thousand at
/// most; the bound keeps the work per header entry bounded for a hostile header of millions
/// of empty tensors (it used to take 13.6 s and 2.35 GB before a refusal).
pub const MAX_TENSORS: usize = 1 << 16;

/// Element types we read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE binary64.
    F64,
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top half of a binary32).
    BF16,
    /// Signed 8-bit integer.
    I8,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 => 8,
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I8 => 1,
        }
    }

    /// The safetensors name ("F32", "BF16", ...).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F64 => "F64",
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I8 => "I8",
        }
    }

    /// Parses a safetensors dtype name we can convert; `None` for any other.
    pub fn from_name(name: &str) -> Option<Dtype> {
        match name {
            "F64" => Some(Dtype::F64),
            "F32" => Some(Dtype::F32),
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::BF16),
            "I8" => Some(Dtype::I8),
            _ => None,
        }
    }
}

/// Element size of every dtype the safetensors format defines, so that byte ranges of
/// tensors we cannot convert (e.g. an I64 buffer among the extras) are still validated.
fn any_dtype_size(name: &str) -> Option<usize> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Dtype and shape of one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Storage type.
    pub dtype: Dtype,
    /// Shape, outermost first (row-major).
    pub shape: Vec<usize>,
}

/// One validated header entry.
#[derive(Clone, Debug)]
struct Entry {
    /// The dtype name as stored (may be one we cannot convert).
    dtype_name: String,
    dtype: Option<Dtype>,
    shape: Vec<usize>,
    /// Which buffer holds it: 0 for a file; the tensor's own index for
    /// [`TensorFile::from_parts`].
    part: usize,
    /// Absolute byte range in that buffer.
    start: usize,
    end: usize,
}

/// The bytes of a [`TensorFile`]: a read-only map of a file, a buffer handed over in
/// memory ([`TensorFile::from_bytes`]), or one borrowed buffer per tensor
/// ([`TensorFile::from_parts`]).
enum Backing {
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
    fn whole(&self) -> &[u8] {
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
    path: PathBuf,
    mmap: Backing,
    entries: BTreeMap<String, Entry>,
    metadata: Option<HashMap<String, String>>,
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

    /// Validates the header of `mmap` against its length (see [`TensorFile::open`]).
    fn parse(path: &Path, mmap: Backing) -> Result<TensorFile> {
        let bytes: &[u8] = mmap.whole();
        // The map may differ from the size seen above if the file changed in between: check
        // again on what is actually mapped.
        let len = bytes.len() as u64;
        if len < 8 {
            return Err(Error::bad_file(
                path,
                format!("expected a safetensors file, found only {len} bytes"),
            ));
        }
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(bytes.get(..8).unwrap_or(&[0u8; 8]));
        let n_header = u64::from_le_bytes(len_bytes);
        if n_header > len - 8 {
            return Err(Error::bad_file(
                path,
                format!(
                    "expected a header length of at most {} bytes (file size {len} - 8), found {n_header} (truncated or not a safetensors file)",
                    len - 8
                ),
            ));
        }
        if n_header > MAX_HEADER_BYTES {
            return Err(Error::bad_file(
                path,
                format!("expected a header of at most {MAX_HEADER_BYTES} bytes, found {n_header}"),
            ));
        }
        // Both bounds are below the mapped length, which fits in usize.
        let header_end = 8 + n_header as usize;
        let header = bytes
            .get(8..header_end)
            .ok_or_else(|| Error::bad_file(path, "expected a complete header (truncated?)"))?;
        // Entries are validated one at a time as the JSON is read (nothing holds the whole
        // header as a value tree), and the count is bounded.
        let data_len = bytes.len() - header_end;
        let failure = std::cell::RefCell::new(None);
        let visitor = HeaderVisitor {
            path,
            header_end,
            data_len,
            failure: &failure,
        };
        let mut de = serde_json::Deserializer::from_slice(header);
        let parsed = serde::Deserializer::deserialize_map(&mut de, visitor)
            .and_then(|h| de.end().map(|()| h));
        if let Some(e) = failure.into_inner() {
            return Err(e);
        }
        let (entries, metadata) = parsed.map_err(|e| {
            Error::bad_file(
                path,
                format!("expected a JSON object as safetensors header: {e}"),
            )
        })?;
        Ok(TensorFile {
            path: path.to_path_buf(),
            mmap,
            entries,
            metadata,
        })
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

/// Builds a faer matrix from `rows*cols` row-major values (the caller checked the length).
pub(crate) fn mat_from_row_major(rows: usize, cols: usize, values: &[f64]) -> Mat<f64> {
    Mat::from_fn(rows, cols, |i, j| {
        values.get(i * cols + j).copied().unwrap_or(0.0)
    })
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

/// Reads the header object entry by entry (see [`TensorFile::open`]); a validation failure is
/// left in `failure` and stops the parse.
struct HeaderVisitor<'a> {
    path: &'a Path,
    header_end: usize,
    data_len: usize,
    failure: &'a std::cell::RefCell<Option<Error>>,
}

type Header = (BTreeMap<String, Entry>, Option<HashMap<String, String>>);

impl<'de> serde::de::Visitor<'de> for HeaderVisitor<'_> {
    type Value = Header;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object of tensor entries")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Header, A::Error> {
        use serde::de::Error as _;
        let mut stop = |e: Error| {
            *self.failure.borrow_mut() = Some(e);
            A::Error::custom("invalid entry")
        };
        let (mut entries, mut metadata) = (BTreeMap::new(), None);
        while let Some(name) = map.next_key::<String>()? {
            if entries.len() >= MAX_TENSORS {
                return Err(stop(Error::bad_file(
                    self.path,
                    format!("expected at most {MAX_TENSORS} tensors, found more"),
                )));
            }
            let value: serde_json::Value = map.next_value()?;
            if name == "__metadata__" {
                if metadata.is_some() {
                    return Err(stop(Error::bad_tensor(
                        self.path,
                        "__metadata__",
                        "expected one __metadata__ entry, found two",
                    )));
                }
                metadata = Some(parse_metadata(self.path, &value).map_err(&mut stop)?);
                continue;
            }
            if entries.contains_key(&name) {
                return Err(stop(Error::bad_tensor(
                    self.path,
                    &name,
                    "expected each tensor name once, found it twice in the header",
                )));
            }
            let entry = parse_entry(self.path, &name, &value, self.header_end, self.data_len)
                .map_err(&mut stop)?;
            entries.insert(name, entry);
        }
        Ok((entries, metadata))
    }
}

fn parse_metadata(path: &Path, value: &serde_json::Value) -> Result<HashMap<String, String>> {
    let obj = value.as_object().ok_or_else(|| {
        Error::bad_tensor(
            path,
            "__metadata__",
            "expected a JSON object of string values",
        )
    })?;
    let mut out = HashMap::with_capacity(obj.len());
    for (k, v) in obj {
        let s = v.as_str().ok_or_else(|| {
            Error::bad_tensor(
                path,
                "__metadata__",
                format!("expected a string value for key `{k}`, found {v}"),
            )
        })?;
        out.insert(k.clone(), s.to_string());
    }
    Ok(out)
}

fn parse_entry(
    path: &Path,
    name: &str,
    value: &serde_json::Value,
    header_end: usize,
    data_len: usize,
) -> Result<Entry> {
    let bad = |m: String| Error::bad_tensor(path, name, m);
    let obj = value
        .as_object()
        .ok_or_else(|| bad("expected an object with dtype, shape and data_offsets".into()))?;
    let dtype_name = obj
        .get("dtype")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("expected a string `dtype`".into()))?;
    let elem = any_dtype_size(dtype_name).ok_or_else(|| {
        bad(format!(
            "expected a safetensors dtype (F64, F32, F16, BF16, I8, ...), found {dtype_name:?}"
        ))
    })?;
    let shape_json = obj
        .get("shape")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("expected an array `shape`".into()))?;
    let mut shape = Vec::new();
    for d in shape_json {
        let d = d
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .ok_or_else(|| {
                bad(format!(
                    "expected non-negative integer dimensions, found {d}"
                ))
            })?;
        // A shape longer than the file could describe is hostile; bound the Vec.
        if shape.len() >= 64 {
            return Err(bad("expected at most 64 dimensions".into()));
        }
        shape.push(d);
    }
    let offsets = obj
        .get("data_offsets")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("expected an array `data_offsets` [begin, end]".into()))?;
    let (begin, end) = match offsets.as_slice() {
        [b, e] => match (b.as_u64(), e.as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => return Err(bad("expected integer data_offsets [begin, end]".into())),
        },
        _ => return Err(bad("expected data_offsets [begin, end]".into())),
    };
    if begin > end || end > data_len as u64 {
        return Err(bad(format!(
            "expected data_offsets within the {data_len} data bytes of the file, found [{begin}, {end}] (truncated?)"
        )));
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            bad(format!(
                "expected a shape whose size fits in memory, found {shape:?} (overflow)"
            ))
        })?;
    let nbytes = numel.checked_mul(elem).ok_or_else(|| {
        bad(format!(
            "expected a shape whose size fits in memory, found {shape:?} (overflow)"
        ))
    })?;
    // Both fit in usize: end <= data_len.
    let (begin, end) = (begin as usize, end as usize);
    if nbytes != end - begin {
        return Err(bad(format!(
            "expected {nbytes} bytes for shape {shape:?} of {dtype_name}, found data_offsets [{begin}, {end}] ({} bytes)",
            end - begin
        )));
    }
    Ok(Entry {
        dtype_name: dtype_name.to_string(),
        dtype: Dtype::from_name(dtype_name),
        shape,
        part: 0,
        start: header_end + begin,
        end: header_end + end,
    })
}

/// One tensor to write.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorOut {
    /// Tensor name (key in the header).
    pub name: String,
    /// Storage dtype of `data`.
    pub dtype: Dtype,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Little-endian bytes, `product(shape) * dtype.size()` long.
    pub data: Vec<u8>,
}

impl TensorOut {
    /// Converts f64 values (row-major) to `dtype`: F64/F32/F16/BF16 round to nearest; I8
    /// rounds to nearest and saturates to [-128, 127] (quantizers scale before calling).
    pub fn from_f64(
        name: impl Into<String>,
        dtype: Dtype,
        shape: Vec<usize>,
        values: &[f64],
    ) -> TensorOut {
        let mut data = Vec::with_capacity(values.len() * dtype.size());
        match dtype {
            Dtype::F64 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&v.to_le_bytes())),
            Dtype::F32 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&(*v as f32).to_le_bytes())),
            Dtype::F16 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&half::f16::from_f64(*v).to_le_bytes())),
            Dtype::BF16 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&half::bf16::from_f64(*v).to_le_bytes())),
            Dtype::I8 => values
                .iter()
                .for_each(|v| data.push(v.round().clamp(-128.0, 127.0) as i8 as u8)),
        }
        TensorOut {
            name: name.into(),
            dtype,
            shape,
            data,
        }
    }

    /// A matrix stored row-major with shape [rows, cols].
    pub fn from_mat(name: impl Into<String>, dtype: Dtype, m: MatRef<'_, f64>) -> TensorOut {
        let (rows, cols) = (m.nrows(), m.ncols());
        let mut values = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                values.push(m[(i, j)]);
            }
        }
        TensorOut::from_f64(name, dtype, vec![rows, cols], &values)
    }
}

/// Serializes as safetensors with `__metadata__` and writes atomically (util::write_atomic).
///
/// The header is padded with spaces so that the data starts 8-byte aligned, and tensors are
/// laid out in the order given. Duplicate names, the reserved name `__metadata__` and data
/// whose length disagrees with the shape are refused.
pub fn write(
    path: &Path,
    tensors: Vec<TensorOut>,
    metadata: BTreeMap<String, String>,
) -> Result<()> {
    for t in &tensors {
        check_out(path, t)?;
    }
    let header = header_bytes(
        path,
        tensors
            .iter()
            .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice(), t.data.len())),
        metadata,
    )?;
    let size: usize = tensors.iter().map(|t| t.data.len()).sum();
    let mut out = Vec::with_capacity(header.len() + size);
    out.extend_from_slice(&header);
    for t in &tensors {
        out.extend_from_slice(&t.data);
    }
    crate::util::write_atomic(path, &out)
}

/// Refuses a tensor whose data length disagrees with its shape, or the reserved name.
fn check_out(path: &Path, t: &TensorOut) -> Result<()> {
    if t.name == "__metadata__" {
        return Err(Error::Usage(format!(
            "{}: tensor name `{}` is reserved",
            path.display(),
            t.name
        )));
    }
    let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let want = numel.and_then(|n| n.checked_mul(t.dtype.size()));
    if want != Some(t.data.len()) {
        return Err(Error::Usage(format!(
            "{}: tensor `{}`: shape {:?} of {} needs {:?} bytes, given {}",
            path.display(),
            t.name,
            t.shape,
            t.dtype.name(),
            want,
            t.data.len()
        )));
    }
    Ok(())
}

/// The 8-byte length plus the JSON header (padded with spaces to 8-byte alignment) of a file
/// whose tensors (name, dtype, shape, bytes) are laid out in the order given. One home for the
/// layout: [`write`] and [`SpoolWriter::finish`] give the same bytes for the same tensors.
fn header_bytes<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, Dtype, &'a [usize], usize)>,
    metadata: BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = metadata
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut offset = 0usize;
    for (name, dtype, shape, len) in tensors {
        if name == "__metadata__" || header.contains_key(name) {
            return Err(Error::Usage(format!(
                "{}: tensor name `{name}` is reserved or used twice",
                path.display(),
            )));
        }
        let end = offset + len;
        header.insert(
            name.to_string(),
            serde_json::json!({ "dtype": dtype.name(), "shape": shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header_bytes = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| Error::Usage(format!("{}: cannot serialize header: {e}", path.display())))?;
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header_bytes.len());
    out.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&header_bytes);
    Ok(out)
}

/// Bytes copied per read while a [`SpoolWriter`] hashes or lays out its tensors.
const SPOOL_CHUNK: usize = 8 << 20;

/// A safetensors file written tensor by tensor without holding the tensors in memory.
///
/// Each [`SpoolWriter::add`] appends the tensor's bytes to a temporary body file beside the
/// output (`.NAME.tmp-PID.spool`) and keeps only its name, dtype, shape and place. The header can
/// only be written once every tensor is known (it holds all offsets, and callers put hashes
/// of the data in the metadata), so [`SpoolWriter::finish`] writes the header and then copies
/// the tensors from the body in the order asked, atomically ([`crate::util::write_atomic_with`]):
/// the bytes are those [`write`] gives for the same tensors in that order. Memory stays at one
/// copy buffer; the disk holds the body and the new file until the body is removed (on
/// `finish` or drop).
pub struct SpoolWriter {
    path: PathBuf,
    body_path: PathBuf,
    body: File,
    len: u64,
    entries: BTreeMap<String, Spooled>,
}

/// Where one spooled tensor lies in the body file.
struct Spooled {
    dtype: Dtype,
    shape: Vec<usize>,
    offset: u64,
    len: usize,
}

impl SpoolWriter {
    /// Starts a file to be written at `path` (nothing appears there before `finish`).
    pub fn create(path: &Path) -> Result<SpoolWriter> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::Usage(format!("{}: not a file path", path.display())))?;
        // Named like write_atomic's temporary file plus `.spool`, so that a killed writer's
        // body is removed by the next write to `path` (util::write_atomic's stale-temp sweep).
        let body_path = dir.join(format!(
            ".{}.tmp-{}.spool",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let body = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&body_path)
            .map_err(|e| Error::io(path, e))?;
        Ok(SpoolWriter {
            path: path.to_path_buf(),
            body_path,
            body,
            len: 0,
            entries: BTreeMap::new(),
        })
    }

    /// Appends one tensor to the body (its data is dropped on return). A name used twice,
    /// the reserved name or data whose length disagrees with the shape is refused.
    pub fn add(&mut self, t: TensorOut) -> Result<()> {
        use std::io::Write;
        check_out(&self.path, &t)?;
        if self.entries.contains_key(&t.name) {
            return Err(Error::Usage(format!(
                "{}: tensor name `{}` is reserved or used twice",
                self.path.display(),
                t.name
            )));
        }
        self.body
            .write_all(&t.data)
            .map_err(|e| Error::io(&self.path, e))?;
        self.entries.insert(
            t.name,
            Spooled {
                dtype: t.dtype,
                shape: t.shape,
                offset: self.len,
                len: t.data.len(),
            },
        );
        self.len += t.data.len() as u64;
        Ok(())
    }

    /// Dtype, shape and byte length of a spooled tensor.
    pub fn info(&self, name: &str) -> Option<(Dtype, &[usize], usize)> {
        self.entries
            .get(name)
            .map(|e| (e.dtype, e.shape.as_slice(), e.len))
    }

    /// Names of the spooled tensors, ascending.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|k| k.as_str())
    }

    /// Hands the bytes of a spooled tensor to `visit` in pieces of at most 8 MiB, in order.
    pub fn read_chunks(&self, name: &str, mut visit: impl FnMut(&[u8])) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let e = self.entries.get(name).ok_or_else(|| {
            Error::Usage(format!(
                "{}: no spooled tensor `{name}`",
                self.path.display()
            ))
        })?;
        let mut buf = vec![0u8; SPOOL_CHUNK.min(e.len)];
        let mut done = 0usize;
        while done < e.len {
            let n = (e.len - done).min(buf.len());
            self.body
                .read_exact_at(&mut buf[..n], e.offset + done as u64)
                .map_err(|err| Error::io(&self.body_path, err))?;
            visit(&buf[..n]);
            done += n;
        }
        Ok(())
    }

    /// Writes the file atomically: the header with `metadata`, then the tensors in `order`
    /// (which must name every spooled tensor once), then removes the body.
    pub fn finish(self, order: &[&str], metadata: BTreeMap<String, String>) -> Result<()> {
        use std::io::Write;
        if order.len() != self.entries.len() || order.iter().any(|n| !self.entries.contains_key(*n))
        {
            return Err(Error::Usage(format!(
                "{}: the layout names {} tensors, {} were spooled",
                self.path.display(),
                order.len(),
                self.entries.len()
            )));
        }
        let header = header_bytes(
            &self.path,
            order.iter().filter_map(|n| {
                self.entries
                    .get(*n)
                    .map(|e| (*n, e.dtype, e.shape.as_slice(), e.len))
            }),
            metadata,
        )?;
        let mut failed: Option<Error> = None;
        crate::util::write_atomic_with(&self.path, |f| {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            w.write_all(&header)?;
            for n in order {
                let mut io_err = None;
                let res = self.read_chunks(n, |bytes| {
                    if io_err.is_none()
                        && let Err(e) = w.write_all(bytes)
                    {
                        io_err = Some(e);
                    }
                });
                if let Some(e) = io_err {
                    return Err(e);
                }
                if let Err(e) = res {
                    let msg = e.to_string();
                    failed = Some(e);
                    return Err(std::io::Error::other(msg));
                }
            }
            w.flush()
        })
        .map_err(|e| failed.take().unwrap_or(e))
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.body_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("elx-tf-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("t.safetensors")
    }

    #[test]
    fn header_is_aligned_and_metadata_kept() {
        let p = tmp("align");
        let mut md = BTreeMap::new();
        md.insert("k".to_string(), "v".to_string());
        write(
            &p,
            vec![TensorOut::from_f64(
                "x",
                Dtype::F32,
                vec![3],
                &[1.0, 2.0, 3.0],
            )],
            md,
        )
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(n % 8, 0);
        let f = TensorFile::open(&p).unwrap();
        assert_eq!(
            f.metadata().unwrap().get("k").map(|s| s.as_str()),
            Some("v")
        );
        assert_eq!(f.read_f64("x").unwrap().1, vec![1.0, 2.0, 3.0]);
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    /// Releasing a tensor's pages (a 2 MiB tensor and a small neighbour sharing its first
    /// page) loses nothing: both read back exactly, before and after, and an unknown name or
    /// an in-memory file is a no-op.
    #[test]
    fn released_pages_read_back_the_same() {
        let p = tmp("release");
        let big: Vec<f64> = (0..524_288).map(|i| (i as f64).sin()).collect();
        write(
            &p,
            vec![
                TensorOut::from_f64("a", Dtype::F32, vec![3], &[1.0, 2.0, 3.0]),
                TensorOut::from_f64("b", Dtype::F32, vec![big.len()], &big),
            ],
            BTreeMap::new(),
        )
        .unwrap();
        let f = TensorFile::open(&p).unwrap();
        let want_b = f.read_f64("b").unwrap().1;
        let (_, borrowed) = f.raw("a").unwrap();
        f.release("b");
        f.release("nope");
        assert_eq!(f.read_f64("a").unwrap().1, vec![1.0, 2.0, 3.0]);
        assert_eq!(borrowed, f.raw("a").unwrap().1);
        assert_eq!(f.read_f64("b").unwrap().1, want_b);
        let mem = TensorFile::from_bytes(&p, std::fs::read(&p).unwrap()).unwrap();
        mem.release("b");
        assert_eq!(mem.read_f64("b").unwrap().1, want_b);
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    /// A raw safetensors file: `header` JSON (padded) and `data` bytes.
    fn raw(p: &Path, header: &str, data: &[u8]) {
        let mut h = header.as_bytes().to_vec();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        std::fs::write(p, out).unwrap();
    }

    #[test]
    fn millions_of_empty_entries_are_refused_fast() {
        // Empty tensors are valid entries, so only the count bounds the work: past
        // MAX_TENSORS the header is refused while it is read.
        let p = tmp("many");
        let mut h = String::from("{");
        for i in 0..(2 * MAX_TENSORS) {
            h.push_str(&format!(
                r#""t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}},"#
            ));
        }
        h.pop();
        h.push('}');
        raw(&p, &h, &[]);
        let e = TensorFile::open(&p).unwrap_err().to_string();
        assert!(e.contains(&format!("at most {MAX_TENSORS} tensors")), "{e}");
        // At the bound it still opens.
        let mut h = String::from("{");
        for i in 0..MAX_TENSORS {
            h.push_str(&format!(
                r#""t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}},"#
            ));
        }
        h.pop();
        h.push('}');
        raw(&p, &h, &[]);
        assert_eq!(TensorFile::open(&p).unwrap().names().len(), MAX_TENSORS);
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn duplicate_names_and_trailing_bytes_are_refused() {
        let p = tmp("dup");
        let e = r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
        raw(&p, &format!(r#"{{"x":{e},"x":{e}}}"#), &[0; 4]);
        let msg = TensorFile::open(&p).unwrap_err().to_string();
        assert!(msg.contains("`x`") && msg.contains("twice"), "{msg}");
        raw(&p, &format!(r#"{{"x":{e}}}]"#), &[0; 4]);
        let msg = TensorFile::open(&p).unwrap_err().to_string();
        assert!(msg.contains("JSON object as safetensors header"), "{msg}");
        raw(&p, &format!(r#"{{"x":{e}}}"#), &[0; 4]);
        assert_eq!(TensorFile::open(&p).unwrap().names(), ["x"]);
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    /// Tensors handed over in memory hash like the file `safetensors` (and PEFT's
    /// `save_pretrained`) writes for them: the committed PEFT fixture, written by PEFT.
    #[test]
    fn parts_hash_like_the_file_peft_wrote() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/fixtures/adapters/task0/adapter_model.safetensors");
        let file = TensorFile::open(&path).unwrap();
        let on_disk = crate::util::sha256_file(&path).unwrap();
        assert_eq!(file.canonical_sha256().unwrap(), on_disk);
        let parts = |f: &TensorFile| -> Vec<MemTensor> {
            f.names()
                .iter()
                .map(|n| {
                    let (dtype, shape) = f.stored_info(n).unwrap();
                    let bytes: TensorBytes = std::sync::Arc::new(f.raw(n).unwrap().1.to_vec());
                    MemTensor {
                        name: n.to_string(),
                        dtype: dtype.to_string(),
                        shape: shape.to_vec(),
                        bytes,
                    }
                })
                .collect()
        };
        let name = Path::new("mem");
        let mem = TensorFile::from_parts(name, parts(&file), file.metadata().cloned()).unwrap();
        assert_eq!(mem.canonical_sha256().unwrap(), on_disk);
        for n in file.names() {
            assert_eq!(mem.read_f64(n).unwrap(), file.read_f64(n).unwrap());
        }
        // Other metadata, another file.
        let other = TensorFile::from_parts(name, parts(&file), None).unwrap();
        assert_ne!(other.canonical_sha256().unwrap(), on_disk);
        // A shape that does not match its bytes names the tensor.
        let mut bad = parts(&file);
        bad[0].shape.push(2);
        let e = TensorFile::from_parts(name, bad, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(file.names()[0]) && e.contains("bytes for shape"),
            "{e}"
        );
        let mut twice = parts(&file);
        twice[1].name = twice[0].name.clone();
        let e = TensorFile::from_parts(name, twice, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("once"), "{e}");
        let mut odd = parts(&file);
        odd[0].dtype = "F7".into();
        assert!(TensorFile::from_parts(name, odd, None).is_err());
    }
}
