//! Malformed headers, each refused with an error naming the file, the key or tensor and what
//! was expected; every truncation of a valid file refused.

use crate::support::{self, Writer, header, kv, tensor_info};
use crate::tensors::typed_tensors;
use crate::{parse, refused, with_metadata};
use eigenlorax::Error;
use eigenlorax::gguf::{Gguf, Value};

fn head(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = Vec::new();
    header(&mut b, 3, n_tensors, n_kv);
    b
}

/// Header, one key `k` of type `ty` followed by `rest`.
fn one_key(ty: u32, rest: &[u8]) -> Vec<u8> {
    let mut b = head(0, 1);
    support::string(&mut b, b"k");
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(rest);
    b.extend_from_slice(&[0; 64]);
    b
}

/// Header and one tensor info `t` (after one optional key).
fn one_tensor(dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut b = head(1, 0);
    tensor_info(&mut b, "t", dims, ty, offset);
    b.resize(b.len().div_ceil(32) * 32 + data, 0);
    b
}

#[test]
fn malformed_headers_are_named_errors() {
    refused(vec![], None, "expected a GGUF file");
    refused(b"GGU".to_vec(), None, "expected a GGUF file");
    refused(b"GGML\x03\0\0\0".to_vec(), None, "magic `GGUF`");
    for v in [0u32, 1, 4, u32::MAX] {
        let mut b = Vec::new();
        header(&mut b, v, 0, 0);
        refused(b, None, "version 2 or 3");
    }
    refused(
        b"GGUF\x03\0\0\0\0\0".to_vec(),
        None,
        "the tensor count (8 bytes)",
    );
    refused(head(1 << 17, 0), None, "at most 65536 tensors");
    refused(head(0, 1 << 17), None, "at most 65536 metadata keys");
    refused(head(3, 2), None, "truncated");
    // Keys.
    let mut b = head(0, 1);
    b.extend_from_slice(&(1u64 << 20).to_le_bytes());
    b.resize(b.len() + 64, 0);
    refused(b, None, "at most 65536 bytes");
    let mut b = head(0, 1);
    b.extend_from_slice(&(1000u64).to_le_bytes());
    b.resize(b.len() + 16, 0);
    refused(b, None, "metadata key #0 of 1000 bytes");
    let mut b = head(0, 1);
    support::string(&mut b, b"\xff\xfe");
    b.resize(b.len() + 16, 0);
    refused(b, None, "UTF-8");
    let mut b = head(0, 2);
    kv(&mut b, "dup", &Value::U8(1));
    kv(&mut b, "dup", &Value::U8(2));
    refused(b, Some("dup"), "found it twice");
    // Values.
    refused(one_key(13, &[]), Some("k"), "value type of 0-12");
    refused(one_key(7, &[2]), Some("k"), "bool (0 or 1)");
    refused(
        one_key(8, &(u64::MAX).to_le_bytes()),
        Some("k"),
        "truncated",
    );
    let mut arr = 9u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&1u64.to_le_bytes());
    refused(one_key(9, &arr), Some("k"), "array of arrays");
    let mut arr = 77u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&1u64.to_le_bytes());
    refused(one_key(9, &arr), Some("k"), "array element type of 0-12");
    for (et, n) in [(0u32, 1u64 << 40), (8, 100), (10, 50)] {
        let mut arr = et.to_le_bytes().to_vec();
        arr.extend_from_slice(&n.to_le_bytes());
        refused(one_key(9, &arr), Some("k"), "as the array length");
    }
    let mut b = head(0, 1);
    kv(&mut b, "k", &Value::U32(5));
    b.truncate(b.len() - 1);
    refused(b, Some("k"), "a value (4 bytes)");
    // Alignment.
    for v in [
        Value::U32(0),
        Value::U32(48),
        Value::U64(32),
        Value::String("32".into()),
    ] {
        let w = Writer::default().kv("general.alignment", v);
        refused(w.bytes(), Some("general.alignment"), "u32 power of two");
    }
    // Tensor infos.
    refused(
        one_tensor(&[1, 1, 1, 1, 1], 0, 0, 4),
        Some("t"),
        "at most 4 dimensions",
    );
    refused(one_tensor(&[4], 99, 0, 16), Some("t"), "found 99");
    refused(one_tensor(&[4], 5, 0, 16), Some("t"), "found 5");
    refused(
        one_tensor(&[31], 8, 0, 34),
        Some("t"),
        "multiple of 32 for Q8_0",
    );
    refused(
        one_tensor(&[4], 0, 16, 64),
        Some("t"),
        "multiple of the alignment 32",
    );
    refused(one_tensor(&[4], 0, 0, 15), Some("t"), "inside the file");
    refused(
        one_tensor(&[4], 0, 1 << 60, 16),
        Some("t"),
        "inside the file",
    );
    refused(
        one_tensor(&[4], 0, u64::MAX - 31, 16),
        Some("t"),
        "inside the file",
    );
    refused(
        one_tensor(&[u64::MAX, 2], 0, 0, 16),
        Some("t"),
        "element count fits",
    );
    refused(
        one_tensor(&[1 << 40, 1 << 40], 0, 0, 16),
        Some("t"),
        "element count fits",
    );
    let mut b = head(1, 0);
    support::string(&mut b, b"t");
    b.extend_from_slice(&4u32.to_le_bytes());
    b.resize(b.len() + 16, 0);
    refused(b, Some("t"), "a dimension (8 bytes)");
    let w = Writer::default()
        .tensor("t", &[1], 0, vec![0; 4])
        .tensor("t", &[1], 0, vec![0; 4]);
    refused(w.bytes(), Some("t"), "found it twice");
    // Two tensors on the same bytes.
    let mut b = head(2, 0);
    tensor_info(&mut b, "a", &[8], 0, 0);
    tensor_info(&mut b, "b", &[4], 0, 0);
    b.resize(b.len().div_ceil(32) * 32 + 32, 0);
    refused(b, Some("b"), "apart from those of tensor `a`");
    // An empty file, through the memory map.
    let p = std::env::temp_dir().join(format!("elx-gguf-empty-{}.gguf", std::process::id()));
    std::fs::write(&p, b"").unwrap();
    let e = Gguf::open(&p).unwrap_err();
    std::fs::remove_file(&p).unwrap();
    assert!(
        matches!(e, Error::BadInput { .. }) && e.to_string().contains("expected a GGUF file"),
        "{e}"
    );
    // A zero-sized tensor is fine, even at the very end of the file.
    let g = parse(one_tensor(&[0, 7], 2, 0, 0)).unwrap();
    assert_eq!(g.dequantize("t").unwrap(), Vec::<f32>::new());
}

#[test]
fn every_truncation_of_a_valid_file_is_refused() {
    let (w, _) = typed_tensors(32);
    let w = with_metadata(w);
    let bytes = w.bytes();
    assert!(parse(bytes.clone()).is_ok());
    for n in 0..bytes.len() {
        match parse(bytes[..n].to_vec()) {
            Err(Error::BadInput { .. }) => {}
            other => panic!("prefix of {n} of {} bytes: {other:?}", bytes.len()),
        }
    }
}
