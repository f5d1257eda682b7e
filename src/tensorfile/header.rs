//! The safetensors header, parsed entry by entry as the JSON is read: every offset and
//! shape checked against the file's real size before anything is allocated from it, and the
//! number of entries bounded.

use super::file::{Backing, Entry};
use super::{Dtype, MAX_HEADER_BYTES, MAX_TENSORS, TensorFile, any_dtype_size};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

impl TensorFile {
    /// Validates the header of `mmap` against its length (see [`TensorFile::open`]).
    pub(super) fn parse(path: &Path, mmap: Backing) -> Result<TensorFile> {
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
