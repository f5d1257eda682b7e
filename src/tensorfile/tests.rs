//! Unit tests of the safetensors reader and writers.

use super::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
