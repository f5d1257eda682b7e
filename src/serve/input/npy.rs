//! The `.npy` reader (one tensor, f32 or i64, C order) for `elx run --input`.

use super::tensor::{ElemType, TensorData};
use crate::error::{Error, Result};
use std::path::Path;

/// Reads a `.npy` file: little-endian f32 (`<f4`) or i64 (`<i8`), C order, any rank. The
/// header is parsed strictly and the data size must equal what the shape says, exactly.
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, TensorData)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy(&bytes, path)
}

/// [`read_npy`] on bytes already in memory; `path` only names the source in errors.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, TensorData)> {
    let bad = |m: String| Error::bad_file(path, m);
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("expected a .npy file (magic \\x93NUMPY)".into()));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (
            usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
            10usize,
        ),
        2 | 3 => {
            let b = bytes
                .get(8..12)
                .ok_or_else(|| bad("expected a .npy v2 header length".into()))?;
            (
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
                12usize,
            )
        }
        v => {
            return Err(bad(format!(
                "expected .npy format version 1, 2 or 3, found {v}"
            )));
        }
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            bad(format!(
                "expected a header of {hlen} bytes inside the file ({} bytes)",
                bytes.len()
            ))
        })?;
    let header = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| bad("expected an ASCII .npy header".into()))?;
    let h = parse_npy_header(header).map_err(|m| {
        bad(format!(
            "expected a valid .npy header: {m}; found {header:?}"
        ))
    })?;
    let (elem, size) = match h.descr.as_str() {
        "<f4" => (ElemType::F32, 4usize),
        "<i8" => (ElemType::I64, 8usize),
        d => {
            return Err(bad(format!(
                "expected dtype '<f4' (float32) or '<i8' (int64), found '{d}'"
            )));
        }
    };
    if h.fortran_order {
        return Err(bad(
            "expected C order (fortran_order: False), found Fortran order".into(),
        ));
    }
    let count = h
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            bad(format!(
                "expected a shape whose element count does not overflow, found {:?}",
                h.shape
            ))
        })?;
    let data = &bytes[end..];
    let want = count
        .checked_mul(size)
        .ok_or_else(|| bad(format!("shape {:?} overflows", h.shape)))?;
    if data.len() != want {
        return Err(bad(format!(
            "expected {want} data bytes for shape {:?} of {}, found {}",
            h.shape,
            h.descr,
            data.len()
        )));
    }
    let values = match elem {
        ElemType::F32 => {
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!(
                    "expected finite values, found {} at flat index {i}",
                    v[i]
                )));
            }
            TensorData::F32(v)
        }
        ElemType::I64 => TensorData::I64(
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
    };
    Ok((h.shape, values))
}

struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the Python dict literal of a .npy header: exactly the keys descr, fortran_order
/// and shape, in any order.
fn parse_npy_header(h: &str) -> std::result::Result<NpyHeader, String> {
    let s = h.trim_end_matches(['\n', ' ', '\x00']).trim();
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or("not a dict")?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let (key, after) = parse_quoted(rest).ok_or("expected a quoted key")?;
        let after = after
            .trim_start()
            .strip_prefix(':')
            .ok_or("expected ':' after a key")?
            .trim_start();
        rest = match key.as_str() {
            "descr" => {
                let (v, a) = parse_quoted(after).ok_or("descr must be a string")?;
                descr = Some(v);
                a
            }
            "fortran_order" => {
                if let Some(a) = after.strip_prefix("False") {
                    fortran = Some(false);
                    a
                } else if let Some(a) = after.strip_prefix("True") {
                    fortran = Some(true);
                    a
                } else {
                    return Err("fortran_order must be True or False".into());
                }
            }
            "shape" => {
                let a = after.strip_prefix('(').ok_or("shape must be a tuple")?;
                let close = a.find(')').ok_or("unclosed shape tuple")?;
                let mut dims = Vec::new();
                for part in a[..close].split(',') {
                    let p = part.trim();
                    if p.is_empty() {
                        continue;
                    }
                    dims.push(
                        p.parse::<usize>()
                            .map_err(|_| format!("bad dimension {p:?}"))?,
                    );
                }
                shape = Some(dims);
                &a[close + 1..]
            }
            k => return Err(format!("unknown key {k:?}")),
        }
        .trim_start();
        rest = match rest.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None if rest.is_empty() => rest,
            None => return Err("expected ',' between entries".into()),
        };
    }
    Ok(NpyHeader {
        descr: descr.ok_or("missing descr")?,
        fortran_order: fortran.ok_or("missing fortran_order")?,
        shape: shape.ok_or("missing shape")?,
    })
}

/// A '...' or "..." string without escapes, and what follows it.
fn parse_quoted(s: &str) -> Option<(String, &str)> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &s[1..];
    let end = body.find(q)?;
    Some((body[..end].to_string(), &body[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn npy_f32_and_i64_round_trip() {
        let vals = [1.5f32, -2.0, 3.25, 0.0, 7.0, -1.0];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (shape, data) = parse_npy(&npy("<f4", "(2, 3)", &bytes), Path::new("x.npy")).unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(data, TensorData::F32(vals.to_vec()));
        let ids = [101i64, 7592, 102];
        let bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (shape, data) = parse_npy(&npy("<i8", "(1, 3)", &bytes), Path::new("x.npy")).unwrap();
        assert_eq!(shape, vec![1, 3]);
        assert_eq!(data, TensorData::I64(ids.to_vec()));
        let (shape, _) = parse_npy(&npy("<f4", "(2,)", &bytes[..8]), Path::new("x.npy")).unwrap();
        assert_eq!(shape, vec![2]);
    }

    #[test]
    fn npy_rejects_bad_files() {
        let p = Path::new("bad.npy");
        let four = 1f32.to_le_bytes();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"NOTNUMPY\x01\x00".to_vec(), "magic"),
            (npy("<f4", "(2, 3)", &four), "data bytes"),
            (npy("<f8", "(1,)", &[0u8; 8]), "'<f4'"),
            (npy(">f4", "(1,)", &four), "'<f4'"),
            (npy("<f4", "(1, x)", &four), "bad dimension"),
            (npy("<f4", "(4611686018427387904, 4)", &four), "overflow"),
            (npy("<f4", "(1,)", &f32::NAN.to_le_bytes()), "finite"),
            (
                {
                    let mut v = npy("<f4", "(1,)", &four);
                    v[8] = 0xff;
                    v[9] = 0xff;
                    v
                },
                "inside the file",
            ),
        ];
        for (bytes, want) in cases {
            let err = parse_npy(&bytes, p).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should mention {want}");
            assert!(err.contains("bad.npy"), "{err}");
        }
        let mut fortran = npy("<f4", "(1,)", &four);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        let err = parse_npy(&fortran, p).unwrap_err().to_string();
        assert!(err.contains("C order"), "{err}");
    }
}
