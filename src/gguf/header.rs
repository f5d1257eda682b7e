//! The GGUF header, read field by field: every count, length, offset and shape checked
//! against the file's real size before anything is allocated from it.

use super::file::Backing;
use super::{
    Array, DEFAULT_ALIGNMENT, GgmlType, Gguf, GgufTensor, MAX_DIMS, MAX_KEYS, MAX_NAME_BYTES,
    MAX_TENSORS, Value,
};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

impl Gguf {
    pub(super) fn parse(path: &Path, backing: Backing) -> Result<Gguf> {
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
