//! Safetensors reader/writer: round trips of every dtype, and corrupt or hostile files that
//! must give `Error::BadInput` naming the file (and tensor), never a panic.

use eigenlorax::Error;
use eigenlorax::tensorfile::{self, Dtype, TensorFile, TensorOut};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct TmpDir(PathBuf);
impl TmpDir {
    fn new(tag: &str) -> TmpDir {
        let d = std::env::temp_dir().join(format!("elx-adapter-tf-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TmpDir(d)
    }
    fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}
impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a raw safetensors file from a header string and data bytes.
fn raw_file(path: &Path, header: &str, data: &[u8]) {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

fn expect_bad(path: &Path, tensor: Option<&str>, needle: &str) -> String {
    let err = match TensorFile::open(path) {
        Err(e) => e,
        Ok(f) => match tensor.map(|t| f.read_f64(t)) {
            Some(Err(e)) => e,
            _ => panic!("{} should have been refused", path.display()),
        },
    };
    let msg = err.to_string();
    assert!(matches!(err, Error::BadInput { .. }), "not BadInput: {msg}");
    assert!(
        msg.contains(&path.display().to_string()),
        "file not named: {msg}"
    );
    if let Some(t) = tensor {
        assert!(msg.contains(t), "tensor not named: {msg}");
    }
    assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
    msg
}

#[test]
fn round_trip_every_dtype() {
    let d = TmpDir::new("rt");
    let p = d.join("all.safetensors");
    // Values exactly representable in every float type, plus ones that must round.
    let exact = [0.0, -1.5, 0.25, 3.0, -96.0, 1024.0];
    let inexact = [0.1, -1.0 / 3.0, 12345.678, 1e-3, 2.0f64.sqrt(), -7.77];
    let ints = [-128.0, -1.0, 0.0, 1.0, 100.0, 127.0];
    let m = faer::Mat::from_fn(2, 3, |i, j| inexact[i * 3 + j]);
    let tensors = vec![
        TensorOut::from_f64("f64", Dtype::F64, vec![2, 3], &inexact),
        TensorOut::from_f64("f32", Dtype::F32, vec![2, 3], &inexact),
        TensorOut::from_f64("f16", Dtype::F16, vec![3, 2], &inexact),
        TensorOut::from_f64("bf16", Dtype::BF16, vec![6], &inexact),
        TensorOut::from_f64("f16_exact", Dtype::F16, vec![6], &exact),
        TensorOut::from_f64("i8", Dtype::I8, vec![1, 6], &ints),
        TensorOut::from_f64("scalar", Dtype::F32, vec![], &[4.0]),
        TensorOut::from_mat("mat", Dtype::F64, m.as_ref()),
    ];
    let mut md = BTreeMap::new();
    md.insert("format".to_string(), "pt".to_string());
    tensorfile::write(&p, tensors, md).unwrap();

    let f = TensorFile::open(&p).unwrap();
    assert_eq!(
        f.names(),
        vec![
            "bf16",
            "f16",
            "f16_exact",
            "f32",
            "f64",
            "i8",
            "mat",
            "scalar"
        ]
    );
    assert_eq!(f.metadata().unwrap()["format"], "pt");
    assert_eq!(f.read_f64("f64").unwrap(), (vec![2, 3], inexact.to_vec()));
    let f32s: Vec<f64> = inexact.iter().map(|&v| v as f32 as f64).collect();
    assert_eq!(f.read_f64("f32").unwrap().1, f32s);
    let f16s: Vec<f64> = inexact
        .iter()
        .map(|&v| half::f16::from_f64(v).to_f64())
        .collect();
    assert_eq!(f.read_f64("f16").unwrap(), (vec![3, 2], f16s.clone()));
    // f16 keeps 11 significant bits: relative rounding error <= 2^-11.
    for (a, b) in f16s.iter().zip(inexact.iter()) {
        assert!(((a - b) / b).abs() <= 2f64.powi(-11), "{a} vs {b}");
    }
    let bf16s: Vec<f64> = inexact
        .iter()
        .map(|&v| half::bf16::from_f64(v).to_f64())
        .collect();
    assert_eq!(f.read_f64("bf16").unwrap().1, bf16s);
    for (a, b) in bf16s.iter().zip(inexact.iter()) {
        assert!(((a - b) / b).abs() <= 2f64.powi(-8), "{a} vs {b}");
    }
    assert_eq!(f.read_f64("f16_exact").unwrap().1, exact.to_vec());
    assert_eq!(f.read_f64("i8").unwrap().1, ints.to_vec());
    assert_eq!(f.read_f64("scalar").unwrap(), (vec![], vec![4.0]));
    let back = f.read_mat("mat", Some([2, 3])).unwrap();
    for i in 0..2 {
        for j in 0..3 {
            assert_eq!(back[(i, j)], inexact[i * 3 + j]);
        }
    }
    let (_, f32v) = f.read_f32("f32").unwrap();
    assert_eq!(f32v, inexact.iter().map(|&v| v as f32).collect::<Vec<_>>());
    assert_eq!(f.info("f16").unwrap().dtype, Dtype::F16);
    assert_eq!(f.info("f16").unwrap().shape, vec![3, 2]);
    assert!(f.info("absent").is_none());
    let (dt, raw) = f.raw("i8").unwrap();
    assert_eq!((dt, raw.len()), (Dtype::I8, 6));

    // The data section starts 8-byte aligned.
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(n % 8, 0);

    // The safetensors crate (the reference implementation) reads our file identically.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor("f32").unwrap();
    assert_eq!(v.shape(), &[2, 3]);
    assert_eq!(
        v.data(),
        &inexact
            .iter()
            .flat_map(|&x| (x as f32).to_le_bytes())
            .collect::<Vec<u8>>()[..]
    );
}

#[test]
fn read_mat_checks_shape() {
    let d = TmpDir::new("mat");
    let p = d.join("m.safetensors");
    tensorfile::write(
        &p,
        vec![
            TensorOut::from_f64("a", Dtype::F32, vec![2, 3], &[1.0; 6]),
            TensorOut::from_f64("v", Dtype::F32, vec![6], &[1.0; 6]),
        ],
        BTreeMap::new(),
    )
    .unwrap();
    let f = TensorFile::open(&p).unwrap();
    let e = f.read_mat("a", Some([3, 2])).unwrap_err().to_string();
    assert!(
        e.contains("expected [3, 2], found [2, 3]") && e.contains("`a`"),
        "{e}"
    );
    let e = f.read_mat("v", None).unwrap_err().to_string();
    assert!(e.contains("2-D") && e.contains("[6]"), "{e}");
    let e = f.read_mat("zz", None).unwrap_err().to_string();
    assert!(e.contains("`zz`") && e.contains("m.safetensors"), "{e}");
}

#[test]
fn non_finite_values_name_tensor_and_index() {
    let d = TmpDir::new("nan");
    let p = d.join("n.safetensors");
    tensorfile::write(
        &p,
        vec![
            TensorOut::from_f64("w.nan", Dtype::F32, vec![4], &[0.0, 1.0, f64::NAN, 2.0]),
            TensorOut::from_f64(
                "w.inf",
                Dtype::BF16,
                vec![2, 2],
                &[0.0, 1.0, 2.0, f64::INFINITY],
            ),
            TensorOut::from_f64("w.big", Dtype::F64, vec![1], &[1e300]),
        ],
        BTreeMap::new(),
    )
    .unwrap();
    let msg = expect_bad(
        &p,
        Some("w.nan"),
        "expected finite values, found NaN at index 2",
    );
    assert!(msg.contains("w.nan"));
    expect_bad(&p, Some("w.inf"), "found inf at index 3");
    let f = TensorFile::open(&p).unwrap();
    // 1e300 is finite as f64 but overflows f32.
    assert_eq!(f.read_f64("w.big").unwrap().1, vec![1e300]);
    let e = f.read_f32("w.big").unwrap_err().to_string();
    assert!(e.contains("w.big") && e.contains("index 0"), "{e}");
}

#[test]
fn corrupt_files_are_bad_input() {
    let d = TmpDir::new("bad");
    let good = d.join("good.safetensors");
    tensorfile::write(
        &good,
        vec![TensorOut::from_f64("w", Dtype::F32, vec![4, 4], &[0.5; 16])],
        BTreeMap::new(),
    )
    .unwrap();
    let bytes = std::fs::read(&good).unwrap();

    // Shorter than the 8-byte length prefix.
    let p = d.join("tiny.safetensors");
    std::fs::write(&p, [1u8, 2, 3]).unwrap();
    expect_bad(&p, None, "found only 3 bytes");

    // Truncated in the data section: offsets point beyond the end.
    let p = d.join("trunc.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
    expect_bad(&p, None, "data_offsets");
    let msg = TensorFile::open(&p).unwrap_err().to_string();
    assert!(msg.contains("`w`"), "{msg}");

    // Truncated inside the header.
    let p = d.join("trunc_header.safetensors");
    std::fs::write(&p, &bytes[..20]).unwrap();
    expect_bad(&p, None, "header length");

    // Header length 2^60: refused before any allocation.
    let p = d.join("huge.safetensors");
    let mut b = (1u64 << 60).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    std::fs::write(&p, b).unwrap();
    expect_bad(&p, None, &(1u64 << 60).to_string());
    // u64::MAX must not overflow the check.
    let mut b = u64::MAX.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    std::fs::write(&p, b).unwrap();
    expect_bad(&p, None, "header length");

    // Offsets beyond the file.
    let p = d.join("offsets.safetensors");
    raw_file(
        &p,
        r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}"#,
        &[0u8; 8],
    );
    expect_bad(&p, None, "[0, 800]");
    // Reversed offsets.
    raw_file(
        &p,
        r#"{"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#,
        &[0u8; 8],
    );
    expect_bad(&p, None, "data_offsets");

    // Shape product overflowing usize.
    let p = d.join("overflow.safetensors");
    let h = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{0},{0},{0}],"data_offsets":[0,8]}}}}"#,
        u64::MAX / 2
    );
    raw_file(&p, &h, &[0u8; 8]);
    expect_bad(&p, Some("w"), "overflow");
    // Shape times element size overflowing.
    let h = format!(
        r#"{{"w":{{"dtype":"F64","shape":[{}],"data_offsets":[0,8]}}}}"#,
        u64::MAX / 4
    );
    raw_file(&p, &h, &[0u8; 8]);
    expect_bad(&p, Some("w"), "overflow");

    // Shape not matching the byte range.
    let p = d.join("mismatch.safetensors");
    raw_file(
        &p,
        r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
        &[0u8; 8],
    );
    expect_bad(&p, Some("w"), "expected 12 bytes");

    // Unknown dtype.
    let p = d.join("dtype.safetensors");
    raw_file(
        &p,
        r#"{"w":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,2]}}"#,
        &[0u8; 8],
    );
    expect_bad(&p, Some("w"), "Q4_K");

    // A known safetensors dtype we cannot convert: opens, errors at read, listed by stored_info.
    let p = d.join("i64.safetensors");
    raw_file(
        &p,
        r#"{"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#,
        &[0u8; 8],
    );
    let f = TensorFile::open(&p).unwrap();
    assert!(f.info("ids").is_none());
    assert_eq!(f.stored_info("ids"), Some(("I64", &[1usize][..])));
    expect_bad(&p, Some("ids"), "found I64");

    // Not JSON / wrong types.
    let p = d.join("json.safetensors");
    raw_file(&p, "{not json}     ", &[]);
    expect_bad(&p, None, "JSON");
    raw_file(
        &p,
        r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}"#,
        &[],
    );
    expect_bad(&p, Some("w"), "dimensions");
    raw_file(&p, r#"{"w":[1,2]}"#, &[]);
    expect_bad(&p, Some("w"), "dtype");
    raw_file(&p, r#"{"__metadata__":{"a":1}}"#, &[]);
    expect_bad(&p, Some("__metadata__"), "string");

    // Missing file: an I/O error naming it.
    let p = d.join("absent.safetensors");
    let e = TensorFile::open(&p).unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("absent.safetensors"));
}

#[test]
fn writer_refuses_inconsistent_tensors() {
    let d = TmpDir::new("w");
    let p = d.join("w.safetensors");
    let mut t = TensorOut::from_f64("x", Dtype::F32, vec![2, 2], &[1.0; 4]);
    t.shape = vec![3, 2];
    assert!(tensorfile::write(&p, vec![t], BTreeMap::new()).is_err());
    let a = TensorOut::from_f64("x", Dtype::F32, vec![1], &[1.0]);
    assert!(tensorfile::write(&p, vec![a.clone(), a], BTreeMap::new()).is_err());
    assert!(!p.exists(), "a refused write must leave no file");
}

/// Every truncation and many random byte corruptions of a valid file: each open/read either
/// succeeds or returns an error; none panics (a panic fails this test).
#[test]
fn truncations_and_random_corruptions_never_panic() {
    let d = TmpDir::new("fuzz");
    let good = d.join("good.safetensors");
    tensorfile::write(
        &good,
        vec![
            TensorOut::from_f64("a.lora_A.weight", Dtype::F16, vec![2, 3], &[0.5; 6]),
            TensorOut::from_f64("a.lora_B.weight", Dtype::BF16, vec![3, 2], &[0.25; 6]),
            TensorOut::from_f64("s", Dtype::F64, vec![], &[2.0]),
        ],
        BTreeMap::new(),
    )
    .unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let p = d.join("bad.safetensors");
    let exercise = |p: &Path| -> (bool, usize) {
        match TensorFile::open(p) {
            Err(e) => {
                assert!(e.to_string().contains("bad.safetensors"), "{e}");
                (false, 0)
            }
            Ok(f) => {
                let names: Vec<String> = f.names().iter().map(|s| s.to_string()).collect();
                let ok = names.iter().filter(|n| f.read_f64(n).is_ok()).count();
                for n in &names {
                    let _ = f.read_mat(n, Some([2, 3]));
                    let _ = f.read_f32(n);
                }
                (true, ok)
            }
        }
    };
    let mut opened = 0;
    for cut in 0..bytes.len() {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        opened += exercise(&p).0 as usize;
    }
    // Only the full data section satisfies the last offsets.
    assert_eq!(opened, 0, "a truncated file opened");
    let mut rng = eigenlorax::util::GaussianRng::new(42);
    let mut errors = 0;
    for _ in 0..400 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.next_u64() % 3 {
            let i = (rng.next_u64() % b.len() as u64) as usize;
            b[i] = rng.next_u64() as u8;
        }
        std::fs::write(&p, &b).unwrap();
        let (ok, _) = exercise(&p);
        errors += !ok as usize;
    }
    assert!(errors > 0, "corruptions should be caught");
}
