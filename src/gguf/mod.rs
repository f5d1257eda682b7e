//! GGUF files (llama.cpp's model format), read through a memory map with every count, length,
//! offset and shape checked against the file's real size before anything is allocated from
//! it, and their tensors dequantized to f32.
//!
//! The tokenizer stored in the metadata becomes an HF `tokenizer.json` in [`tokenizer_json`].
//!
//! Shared infrastructure like [`crate::tensorfile`] (which reads safetensors): no stage
//! depends on it yet. Versions 2 and 3 of the format are read (version 1 used 32-bit counts
//! and is refused). Metadata values of every GGUF type are kept, arrays included (arrays of
//! arrays are refused: no model uses them); tensors of any ggml type with a known block
//! layout are located and checked, and those of [`GgmlType::SUPPORTED`] (F32, F16, BF16,
//! Q8_0, Q4_0, Q4_1) are dequantized. Every failure is an [`Error::BadInput`] naming the file,
//! the metadata key or tensor, and what was expected.
//!
//! Shapes: GGUF stores a tensor's dimensions innermost first (`ne[0]` is the row length);
//! [`GgufTensor::dims`] keeps that order and [`GgufTensor::shape`] gives the row-major shape,
//! outermost first, as everywhere else in this crate.

mod quant;
mod tokenizer;

pub use quant::{GgmlType, dequantize, permute_qk, unpermute_qk};
pub use tokenizer::{byte_to_char, tokenizer_json};

use crate::error::{Error, Result};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Most metadata keys a file may hold (real models have a few dozen).
pub const MAX_KEYS: u64 = 1 << 16;
/// Most tensors a file may hold (real models have a few hundred to a few thousand).
pub const MAX_TENSORS: u64 = 1 << 16;
/// Longest metadata key or tensor name, in bytes.
pub const MAX_NAME_BYTES: u64 = 1 << 16;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value of one GGUF type.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Array),
}

/// A metadata array: elements of one GGUF type (never arrays).
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
        }
    }

    /// Whether the array has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GGUF name of the element type ("u32", "string", ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Array::U8(_) => "u8",
            Array::I8(_) => "i8",
            Array::U16(_) => "u16",
            Array::I16(_) => "i16",
            Array::U32(_) => "u32",
            Array::I32(_) => "i32",
            Array::U64(_) => "u64",
            Array::I64(_) => "i64",
            Array::F32(_) => "f32",
            Array::F64(_) => "f64",
            Array::Bool(_) => "bool",
            Array::String(_) => "string",
        }
    }
}

impl Value {
    /// The GGUF name of the type ("u32", "string", "array of f32", ...).
    pub fn type_name(&self) -> String {
        match self {
            Value::U8(_) => "u8".into(),
            Value::I8(_) => "i8".into(),
            Value::U16(_) => "u16".into(),
            Value::I16(_) => "i16".into(),
            Value::U32(_) => "u32".into(),
            Value::I32(_) => "i32".into(),
            Value::U64(_) => "u64".into(),
            Value::I64(_) => "i64".into(),
            Value::F32(_) => "f32".into(),
            Value::F64(_) => "f64".into(),
            Value::Bool(_) => "bool".into(),
            Value::String(_) => "string".into(),
            Value::Array(a) => format!("array of {}", a.type_name()),
        }
    }

    /// Any integer value as i128 (so every GGUF integer fits), `None` for other types.
    fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }
}

/// One tensor's info, validated against the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensor {
    /// Its name ("blk.0.attn_q.weight").
    pub name: String,
    /// Its ggml type.
    pub ggml_type: GgmlType,
    /// Dimensions as stored: innermost (`ne[0]`, the row length) first.
    pub dims: Vec<usize>,
    /// Number of elements (the product of `dims`).
    pub n_elements: usize,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

impl GgufTensor {
    /// Row-major shape, outermost first (`dims` reversed): `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    /// Bytes the tensor takes in the file.
    pub fn n_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Absolute byte range of its data in the file.
    pub fn file_range(&self) -> std::ops::Range<usize> {
        self.start..self.end
    }

    /// Elements per row (`ne[0]`; 1 for a scalar).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (the product of every dimension but the first).
    pub fn n_rows(&self) -> usize {
        self.n_elements.checked_div(self.row_len()).unwrap_or(0)
    }
}

/// The bytes of a [`Gguf`]: a read-only map of a file, or a buffer handed over in memory.
#[derive(Debug)]
enum Backing {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A memory-mapped GGUF file (or an in-memory one) with validated header, metadata and
/// tensor infos.
#[derive(Debug)]
pub struct Gguf {
    path: PathBuf,
    bytes: Backing,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<GgufTensor>,
    by_name: BTreeMap<String, usize>,
}

/// Reads little-endian fields from the header, each checked against what is left.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, who: Option<&str>, message: String) -> Error {
        match who {
            Some(w) => Error::bad_tensor(self.path, w, message),
            None => Error::bad_file(self.path, message),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str, who: Option<&str>) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(
                who,
                format!(
                    "expected {what} ({n} bytes) at offset {}, found only {} bytes left (truncated?)",
                    self.pos,
                    self.remaining()
                ),
            ));
        }
        let bytes: &'a [u8] = self.bytes;
        let s = bytes.get(self.pos..self.pos + n).unwrap_or_default();
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str, who: Option<&str>) -> Result<[u8; N]> {
        let s = self.take(N, what, who)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str, who: Option<&str>) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what, who)?))
    }

    fn u64(&mut self, what: &str, who: Option<&str>) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what, who)?))
    }

    /// A count of items of at least `min_size` bytes each, bounded by what is left.
    fn count(&mut self, what: &str, min_size: usize, who: Option<&str>) -> Result<usize> {
        let n = self.u64(&format!("the {what}"), who)?;
        let fits = (self.remaining() / min_size.max(1)) as u64;
        if n > fits {
            return Err(self.err(
                who,
                format!(
                    "expected at most {fits} as the {what} ({} bytes left, {min_size} or more each), found {n} (truncated or corrupt)",
                    self.remaining()
                ),
            ));
        }
        Ok(n as usize)
    }

    /// A string: u64 length, then that many UTF-8 bytes, at most `max` of them.
    fn string(&mut self, what: &str, max: u64, who: Option<&str>) -> Result<String> {
        let at = self.pos;
        let n = self.u64(&format!("the length of {what}"), who)?;
        if n > max {
            return Err(self.err(
                who,
                format!(
                    "expected {what} of at most {max} bytes at offset {at}, found a length of {n}"
                ),
            ));
        }
        if n > self.remaining() as u64 {
            return Err(self.err(
                who,
                format!(
                    "expected {what} of {n} bytes at offset {at}, found only {} bytes left (truncated?)",
                    self.remaining()
                ),
            ));
        }
        let s = self.take(n as usize, what, who)?;
        String::from_utf8(s.to_vec())
            .map_err(|e| self.err(who, format!("expected {what} in UTF-8 at offset {at}: {e}")))
    }
}

/// Smallest encoded size of a value of GGUF type `t` (strings: the length field; arrays:
/// element type and count).
fn min_size(t: u32) -> Option<usize> {
    Some(match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

const TYPE_NAMES: &str =
    "0-12 (u8, i8, u16, i16, u32, i32, f32, bool, string, array, u64, i64, f64)";

fn read_scalar(c: &mut Cursor<'_>, t: u32, key: &str) -> Result<Value> {
    let who = Some(key);
    let what = "a value";
    Ok(match t {
        0 => Value::U8(u8::from_le_bytes(c.array(what, who)?)),
        1 => Value::I8(i8::from_le_bytes(c.array(what, who)?)),
        2 => Value::U16(u16::from_le_bytes(c.array(what, who)?)),
        3 => Value::I16(i16::from_le_bytes(c.array(what, who)?)),
        4 => Value::U32(u32::from_le_bytes(c.array(what, who)?)),
        5 => Value::I32(i32::from_le_bytes(c.array(what, who)?)),
        6 => Value::F32(f32::from_le_bytes(c.array(what, who)?)),
        7 => {
            let at = c.pos;
            match c.array::<1>(what, who)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(c.err(
                        who,
                        format!("expected a bool (0 or 1) at offset {at}, found {b}"),
                    ));
                }
            }
        }
        8 => Value::String(c.string("a string value", u64::MAX, who)?),
        10 => Value::U64(u64::from_le_bytes(c.array(what, who)?)),
        11 => Value::I64(i64::from_le_bytes(c.array(what, who)?)),
        12 => Value::F64(f64::from_le_bytes(c.array(what, who)?)),
        _ => {
            return Err(c.err(
                who,
                format!("expected a value type of {TYPE_NAMES}, found {t}"),
            ));
        }
    })
}

fn read_value(c: &mut Cursor<'_>, t: u32, key: &str) -> Result<Value> {
    if t != 9 {
        return read_scalar(c, t, key);
    }
    let who = Some(key);
    let at = c.pos;
    let et = c.u32("the element type of an array", who)?;
    if et == 9 {
        return Err(c.err(
            who,
            format!("expected an array of scalars or strings at offset {at}, found an array of arrays (not supported)"),
        ));
    }
    let Some(size) = min_size(et) else {
        return Err(c.err(
            who,
            format!("expected an array element type of {TYPE_NAMES}, found {et}"),
        ));
    };
    let n = c.count("array length", size, who)?;
    macro_rules! fixed {
        ($variant:ident, $ty:ty) => {{
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(<$ty>::from_le_bytes(c.array("an array element", who)?));
            }
            Array::$variant(v)
        }};
    }
    let array = match et {
        0 => fixed!(U8, u8),
        1 => fixed!(I8, i8),
        2 => fixed!(U16, u16),
        3 => fixed!(I16, i16),
        4 => fixed!(U32, u32),
        5 => fixed!(I32, i32),
        6 => fixed!(F32, f32),
        10 => fixed!(U64, u64),
        11 => fixed!(I64, i64),
        12 => fixed!(F64, f64),
        7 => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                match read_scalar(c, 7, key)? {
                    Value::Bool(b) => v.push(b),
                    _ => unreachable!("type 7 reads a bool"),
                }
            }
            Array::Bool(v)
        }
        _ => {
            // 8: checked by min_size above.
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(c.string("an array string", u64::MAX, who)?);
            }
            Array::String(v)
        }
    };
    Ok(Value::Array(array))
}

impl Gguf {
    /// Opens and validates `path` (see the module documentation).
    pub fn open(path: &Path) -> Result<Gguf> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and lives as long as `self`. As with every mmap, a
        // concurrent truncation by another process is outside what we can defend against;
        // all bounds below are checked against the mapped length.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, Backing::Map(mmap))
    }

    /// Validates a GGUF file already in memory; `name` stands for its path in error messages.
    pub fn from_bytes(name: &Path, bytes: Vec<u8>) -> Result<Gguf> {
        Self::parse(name, Backing::Owned(bytes))
    }

    fn parse(path: &Path, backing: Backing) -> Result<Gguf> {
        let bytes: &[u8] = &backing;
        let mut c = Cursor {
            path,
            bytes,
            pos: 0,
        };
        let magic = c.take(4, "the magic `GGUF`", None).map_err(|_| {
            Error::bad_file(
                path,
                format!(
                    "expected a GGUF file (magic `GGUF`, version, counts), found only {} bytes",
                    bytes.len()
                ),
            )
        })?;
        if magic != b"GGUF" {
            return Err(Error::bad_file(
                path,
                format!(
                    "expected the magic `GGUF` at offset 0 (not a GGUF file), found {magic:02x?}"
                ),
            ));
        }
        let version = c.u32("the version", None)?;
        if !(2..=3).contains(&version) {
            return Err(Error::bad_file(
                path,
                format!("expected GGUF version 2 or 3, found {version}"),
            ));
        }
        let n_tensors = c.u64("the tensor count", None)?;
        let n_kv = c.u64("the metadata key count", None)?;
        if n_tensors > MAX_TENSORS {
            return Err(Error::bad_file(
                path,
                format!("expected at most {MAX_TENSORS} tensors, found a count of {n_tensors}"),
            ));
        }
        if n_kv > MAX_KEYS {
            return Err(Error::bad_file(
                path,
                format!("expected at most {MAX_KEYS} metadata keys, found a count of {n_kv}"),
            ));
        }
        // Each key takes at least 12 bytes (length, type) and each tensor info 28 (name length,
        // dimension count, type, offset): bound the counts by the file before any allocation.
        let need = n_kv * 12 + n_tensors * 28;
        if need > c.remaining() as u64 {
            return Err(Error::bad_file(
                path,
                format!(
                    "expected {n_kv} metadata keys and {n_tensors} tensor infos (at least {need} bytes), found only {} bytes after the counts (truncated?)",
                    c.remaining()
                ),
            ));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"), MAX_NAME_BYTES, None)?;
            let t = c.u32("the value type", Some(&key))?;
            let value = read_value(&mut c, t, &key)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(Error::bad_tensor(
                    path,
                    key,
                    "expected each metadata key once, found it twice",
                ));
            }
            metadata.push((key, value));
        }
        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() => u64::from(*a),
            Some(v) => {
                return Err(Error::bad_tensor(
                    path,
                    "general.alignment",
                    format!("expected a u32 power of two, found {v:?}"),
                ));
            }
        };
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("the name of tensor #{i}"), MAX_NAME_BYTES, None)?;
            let who = Some(name.as_str());
            let n_dims = c.u32("the dimension count", who)?;
            if n_dims > MAX_DIMS {
                return Err(Error::bad_tensor(
                    path,
                    &name,
                    format!("expected at most {MAX_DIMS} dimensions, found {n_dims}"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64("a dimension", who)?);
            }
            let type_id = c.u32("the ggml type", who)?;
            let offset = c.u64("the data offset", who)?;
            infos.push((name, dims, type_id, offset));
        }
        let header_end = c.pos as u64;
        let data_offset = header_end
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or_else(|| Error::bad_file(path, "expected a data offset that fits in 64 bits"))?;
        let len = bytes.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut by_name = BTreeMap::new();
        for (name, dims, type_id, offset) in infos {
            let bad = |m: String| Error::bad_tensor(path, &name, m);
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                bad(format!(
                    "expected a ggml type whose layout is known (ids 0-3, 6-15, 24-28, 30), found {type_id}"
                ))
            })?;
            let mut n: u64 = 1;
            for &d in &dims {
                n = n.checked_mul(d).filter(|&n| n <= len * 8).ok_or_else(|| {
                    bad(format!(
                        "expected dimensions {dims:?} whose element count fits in the file ({len} bytes)"
                    ))
                })?;
            }
            let n_elements = usize::try_from(n)
                .ok()
                .filter(|_| dims.iter().all(|&d| usize::try_from(d).is_ok()))
                .ok_or_else(|| bad(format!("expected dimensions {dims:?} that fit in memory")))?;
            let row = dims.first().copied().unwrap_or(1);
            if !row.is_multiple_of(ggml_type.block_size() as u64) {
                return Err(bad(format!(
                    "expected a row length (first dimension) that is a multiple of {} for {}, found {dims:?}",
                    ggml_type.block_size(),
                    ggml_type.name()
                )));
            }
            let n_bytes = ggml_type.bytes_for(n_elements).ok_or_else(|| {
                bad(format!(
                    "expected a size of {dims:?} {} that fits in memory",
                    ggml_type.name()
                ))
            })? as u64;
            if !offset.is_multiple_of(alignment) {
                return Err(bad(format!(
                    "expected a data offset that is a multiple of the alignment {alignment}, found {offset}"
                )));
            }
            let start = data_offset.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(n_bytes));
            let (Some(start), Some(end)) = (start, end.filter(|&e| e <= len)) else {
                return Err(bad(format!(
                    "expected its {n_bytes} bytes ({dims:?} {}) at data offset {offset} (file offset {data_offset} + {offset}) inside the file of {len} bytes (truncated?)",
                    ggml_type.name()
                )));
            };
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(bad("expected each tensor name once, found it twice".into()));
            }
            tensors.push(GgufTensor {
                name,
                ggml_type,
                dims: dims.iter().map(|&d| d as usize).collect(),
                n_elements,
                start: start as usize,
                end: end as usize,
            });
        }
        // No two tensors share bytes (llama.cpp lays them out one after the other): the data
        // a caller can dequantize is then bounded by the file size, however many tensors.
        let mut ranges: Vec<&GgufTensor> = tensors.iter().filter(|t| t.end > t.start).collect();
        ranges.sort_by_key(|t| t.start);
        if let Some(w) = ranges.windows(2).find(|w| w[1].start < w[0].end) {
            return Err(Error::bad_tensor(
                path,
                &w[1].name,
                format!(
                    "expected its bytes {}..{} apart from those of tensor `{}` ({}..{}), found them overlapping",
                    w[1].start, w[1].end, w[0].name, w[0].start, w[0].end
                ),
            ));
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            bytes: backing,
            version,
            alignment,
            data_offset,
            metadata,
            index,
            tensors,
            by_name,
        })
    }

    /// The file's path (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data section's alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Every metadata key and value, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    /// The tensor `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| {
            Error::bad_tensor(&self.path, key, "expected this metadata key, found none")
        })
    }

    fn wrong(&self, key: &str, want: &str, v: &Value) -> Error {
        Error::bad_tensor(
            &self.path,
            key,
            format!("expected {want}, found a value of type {}", v.type_name()),
        )
    }

    fn integer(&self, key: &str, want: &str, min: i128, max: i128) -> Result<i128> {
        let v = self.value(key)?;
        let n = v.as_integer().ok_or_else(|| self.wrong(key, want, v))?;
        if n < min || n > max {
            return Err(Error::bad_tensor(
                &self.path,
                key,
                format!("expected {want}, found {n} (out of range)"),
            ));
        }
        Ok(n)
    }

    /// `key` as u32: any integer type whose value fits.
    pub fn u32(&self, key: &str) -> Result<u32> {
        self.integer(key, "an integer in u32 range", 0, u32::MAX.into())
            .map(|n| n as u32)
    }

    /// `key` as u64: any integer type whose value fits.
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.integer(key, "an integer in u64 range", 0, u64::MAX.into())
            .map(|n| n as u64)
    }

    /// `key` as i64: any integer type whose value fits.
    pub fn i64(&self, key: &str) -> Result<i64> {
        self.integer(
            key,
            "an integer in i64 range",
            i64::MIN.into(),
            i64::MAX.into(),
        )
        .map(|n| n as i64)
    }

    /// `key` as f32: an f32 value, or an f64 one (rounded).
    pub fn f32(&self, key: &str) -> Result<f32> {
        match self.value(key)? {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            v => Err(self.wrong(key, "an f32 or f64 value", v)),
        }
    }

    /// `key` as a bool.
    pub fn bool(&self, key: &str) -> Result<bool> {
        match self.value(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(self.wrong(key, "a bool value", v)),
        }
    }

    /// `key` as a string.
    pub fn str(&self, key: &str) -> Result<&str> {
        match self.value(key)? {
            Value::String(s) => Ok(s),
            v => Err(self.wrong(key, "a string value", v)),
        }
    }

    /// `key` as an array of any element type.
    pub fn array(&self, key: &str) -> Result<&Array> {
        match self.value(key)? {
            Value::Array(a) => Ok(a),
            v => Err(self.wrong(key, "an array", v)),
        }
    }

    /// `key` as an array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn strings(&self, key: &str) -> Result<&[String]> {
        match self.value(key)? {
            Value::Array(Array::String(s)) => Ok(s),
            v => Err(self.wrong(key, "an array of string", v)),
        }
    }

    /// `key` as an array of i32 (e.g. `tokenizer.ggml.token_type`).
    pub fn i32s(&self, key: &str) -> Result<&[i32]> {
        match self.value(key)? {
            Value::Array(Array::I32(s)) => Ok(s),
            v => Err(self.wrong(key, "an array of i32", v)),
        }
    }

    /// `key` as an array of f32 (e.g. `tokenizer.ggml.scores`).
    pub fn f32s(&self, key: &str) -> Result<&[f32]> {
        match self.value(key)? {
            Value::Array(Array::F32(s)) => Ok(s),
            v => Err(self.wrong(key, "an array of f32", v)),
        }
    }

    fn entry(&self, name: &str) -> Result<&GgufTensor> {
        self.tensor(name).ok_or_else(|| {
            Error::bad_tensor(
                &self.path,
                name,
                "expected this tensor in the file, found none",
            )
        })
    }

    /// The raw bytes of tensor `name` in ggml's layout, and its info.
    pub fn raw(&self, name: &str) -> Result<(&GgufTensor, &[u8])> {
        let t = self.entry(name)?;
        let bytes = self.bytes.get(t.start..t.end).ok_or_else(|| {
            Error::bad_tensor(&self.path, name, "expected its bytes inside the file")
        })?;
        Ok((t, bytes))
    }

    /// Tensor `name` dequantized to f32, in storage order (row-major for
    /// [`GgufTensor::shape`]). Errors name the file and tensor: absent, a type outside
    /// [`GgmlType::SUPPORTED`], or a non-finite value.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.entry(name)?;
        self.dequantize_rows(name, 0, t.n_rows())
    }

    /// Rows `first..first + n` of tensor `name` (a row is `ne[0]` elements, e.g. one token's
    /// embedding), dequantized to f32; same errors as [`Gguf::dequantize`], plus rows out of
    /// range.
    pub fn dequantize_rows(&self, name: &str, first: usize, n: usize) -> Result<Vec<f32>> {
        let (t, bytes) = self.raw(name)?;
        let bad = |m: String| Error::bad_tensor(&self.path, name, m);
        if !t.ggml_type.is_supported() {
            return Err(bad(format!(
                "expected a tensor type that can be dequantized ({}), found {}",
                quant::supported_list(),
                t.ggml_type.name()
            )));
        }
        let rows = t.n_rows();
        if first.checked_add(n).is_none_or(|e| e > rows) {
            return Err(bad(format!(
                "expected rows {first}..{first}+{n} within its {rows} rows"
            )));
        }
        let row_len = t.row_len();
        // Checked at open: whole blocks per row, whole tensor inside the file.
        let row_bytes = t
            .ggml_type
            .bytes_for(row_len)
            .ok_or_else(|| Error::Internal(format!("{name}: row size unchecked")))?;
        let slice = bytes
            .get(first * row_bytes..(first + n) * row_bytes)
            .ok_or_else(|| Error::Internal(format!("{name}: row range unchecked")))?;
        let values = dequantize(t.ggml_type, slice, n * row_len)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "expected finite values, found {} at index {}",
                values[i],
                first * row_len + i
            )));
        }
        Ok(values)
    }
}
