//! Backend-neutral input handling of `elx run`: tokenizer ids, truncation, padding, and raw
//! tensor files. No ONNX Runtime needed.

use eigenlorax::serve::input::{
    ElemType, InputSpec, TensorData, TextEncoder, load_tensors, read_npy, read_safetensors,
};
use std::path::{Path, PathBuf};

/// A hand-made WordPiece tokenizer.json (BERT normalizer and pre-tokenizer, [CLS] A [SEP]).
/// Its vocabulary: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 hello=4 world=5 un=6 ##believ=7 ##able=8
/// ,=9 !=10 the=11 movie=12 ##s=13.
fn tokenizer_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ort_support/tokenizer.json")
}

fn spec(name: &str, dims: Vec<Option<usize>>) -> InputSpec {
    InputSpec {
        name: name.into(),
        elem: ElemType::I64,
        dims,
        index_limit: None,
    }
}

fn bert_inputs() -> Vec<InputSpec> {
    ["input_ids", "attention_mask", "token_type_ids"]
        .iter()
        .map(|n| spec(n, vec![None, None]))
        .collect()
}

fn ids(t: &TensorData) -> Vec<i64> {
    match t {
        TensorData::I64(v) => v.clone(),
        TensorData::F32(_) => panic!("expected i64"),
    }
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("elx-ort-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn tokenizer_gives_exact_ids() {
    let enc = TextEncoder::from_file(&tokenizer_path(), None).unwrap();
    assert_eq!(enc.ids("Hello, world!").unwrap(), vec![2, 4, 9, 5, 10, 3]);
    assert_eq!(
        enc.ids("Unbelievable movies").unwrap(),
        vec![2, 6, 7, 8, 12, 13, 3]
    );
    assert_eq!(enc.ids("xyz").unwrap(), vec![2, 1, 3]);
    assert_eq!(enc.ids("  HELLO\tworld ").unwrap(), vec![2, 4, 5, 3]);
    // No truncation in the file and no tokenizer_config.json beside it: the default.
    assert_eq!(enc.max_length(), 512);
}

#[test]
fn truncation_keeps_special_tokens() {
    let enc = TextEncoder::from_file(&tokenizer_path(), Some(5)).unwrap();
    assert_eq!(enc.ids("Unbelievable movies").unwrap(), vec![2, 6, 7, 8, 3]);
    assert_eq!(enc.ids("Hello, world!").unwrap(), vec![2, 4, 9, 5, 3]);
}

#[test]
fn batch_is_padded_with_mask_and_token_types() {
    let enc = TextEncoder::from_file(&tokenizer_path(), None).unwrap();
    let texts = vec!["xyz".to_string(), "Unbelievable movies".to_string()];
    let b = enc.encode(&texts, &bert_inputs()).unwrap();
    assert_eq!(b.rows, 2);
    let names: Vec<&str> = b.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["input_ids", "attention_mask", "token_type_ids"]);
    assert!(b.tensors.iter().all(|t| t.shape == vec![2, 7]));
    assert_eq!(
        ids(&b.tensors[0].data),
        vec![2, 1, 3, 0, 0, 0, 0, 2, 6, 7, 8, 12, 13, 3]
    );
    assert_eq!(
        ids(&b.tensors[1].data),
        vec![1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    );
    assert_eq!(ids(&b.tensors[2].data), vec![0; 14]);
    assert_eq!(b.mask.as_deref(), Some(&ids(&b.tensors[1].data)[..]));

    // A model without token_type_ids gets none; a fixed sequence axis is padded to.
    let two = vec![
        spec("input_ids", vec![None, Some(8)]),
        spec("attention_mask", vec![None, Some(8)]),
    ];
    let b = enc.encode(&texts[..1], &two).unwrap();
    assert_eq!(b.tensors.len(), 2);
    assert_eq!(ids(&b.tensors[0].data), vec![2, 1, 3, 0, 0, 0, 0, 0]);

    // An input text cannot fill is an error that names it.
    let odd = vec![
        spec("input_ids", vec![None, None]),
        spec("pixel_values", vec![None, None]),
    ];
    let e = enc.encode(&texts, &odd).unwrap_err().to_string();
    assert!(e.contains("pixel_values"), "{e}");
}

#[test]
fn broken_tokenizer_is_an_error_naming_the_file() {
    let p = tmp("broken-tokenizer.json");
    std::fs::write(&p, b"{\"model\": 17}").unwrap();
    let e = TextEncoder::from_file(&p, None).unwrap_err().to_string();
    assert!(
        e.contains("broken-tokenizer.json") && e.contains("tokenizer.json"),
        "{e}"
    );
    let cfg_dir = tmp("cfg");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    std::fs::copy(tokenizer_path(), cfg_dir.join("tokenizer.json")).unwrap();
    std::fs::write(
        cfg_dir.join("tokenizer_config.json"),
        br#"{"model_max_length": 4}"#,
    )
    .unwrap();
    let enc = TextEncoder::from_file(&cfg_dir.join("tokenizer.json"), None).unwrap();
    assert_eq!(enc.max_length(), 4);
    assert_eq!(enc.ids("Hello, world!").unwrap(), vec![2, 4, 9, 3]);
}

fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
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
fn npy_written_by_numpy_reads_back() {
    // Cross-check against numpy's own writer when python3 with numpy is present.
    let p = tmp("numpy.npy");
    let script = format!(
        "import numpy as np; np.save({:?}, np.arange(12, dtype=np.float32).reshape(3, 4) / 4)",
        p.to_string_lossy()
    );
    let ok = std::process::Command::new("python3")
        .args(["-c", &script])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let (shape, data) = read_npy(&p).unwrap();
        assert_eq!(shape, vec![3, 4]);
        let want: Vec<f32> = (0..12).map(|i| i as f32 / 4.0).collect();
        assert_eq!(data, TensorData::F32(want));
    }
    // And our own writer of the format, for machines without numpy.
    let bytes: Vec<u8> = [101i64, 4, 102]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let p2 = tmp("ids.npy");
    std::fs::write(&p2, npy_bytes("<i8", &[1, 3], &bytes)).unwrap();
    let b = load_tensors(&p2, &bert_inputs()).unwrap();
    assert_eq!(b.rows, 1);
    assert_eq!(ids(&b.tensors[0].data), vec![101, 4, 102]);
    assert_eq!(
        ids(&b.tensors[1].data),
        vec![1, 1, 1],
        "mask filled with ones"
    );
    assert_eq!(
        ids(&b.tensors[2].data),
        vec![0, 0, 0],
        "token types filled with zeros"
    );
    // Truncated data is an error naming the file.
    std::fs::write(&p2, npy_bytes("<i8", &[1, 3], &bytes[..16])).unwrap();
    let e = load_tensors(&p2, &bert_inputs()).unwrap_err().to_string();
    assert!(e.contains("ids.npy") && e.contains("24 data bytes"), "{e}");
}

#[test]
fn safetensors_inputs_by_name() {
    use safetensors::tensor::{Dtype, TensorView};
    let x: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let m: Vec<u8> = [1i64, 1, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        (
            "x".to_string(),
            TensorView::new(Dtype::F32, vec![1, 3, 2], &x).unwrap(),
        ),
        (
            "attention_mask".to_string(),
            TensorView::new(Dtype::I64, vec![1, 3], &m).unwrap(),
        ),
    ];
    let p = tmp("inputs.safetensors");
    safetensors::serialize_to_file(views, None, &p).unwrap();
    let all = read_safetensors(&p).unwrap();
    assert_eq!(all.len(), 2);
    let specs = vec![
        InputSpec {
            name: "x".into(),
            elem: ElemType::F32,
            dims: vec![None, Some(3), Some(2)],
            index_limit: None,
        },
        spec("attention_mask", vec![None, None]),
    ];
    let b = load_tensors(&p, &specs).unwrap();
    assert_eq!(
        b.tensors[0].data,
        TensorData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    );
    assert_eq!(b.mask, Some(vec![1, 1, 0]));
    // A model input the file lacks, or a wrong fixed dim, is an error naming the tensor.
    let want_y = vec![InputSpec {
        name: "y".into(),
        elem: ElemType::F32,
        dims: vec![],
        index_limit: None,
    }];
    let e = load_tensors(&p, &want_y).unwrap_err().to_string();
    assert!(e.contains("`y`"), "{e}");
    let bad_dim = vec![
        InputSpec {
            name: "x".into(),
            elem: ElemType::F32,
            dims: vec![None, Some(4), Some(2)],
            index_limit: None,
        },
        spec("attention_mask", vec![None, None]),
    ];
    let e = load_tensors(&p, &bad_dim).unwrap_err().to_string();
    assert!(e.contains("`x`") && e.contains("dimension 1"), "{e}");
}
