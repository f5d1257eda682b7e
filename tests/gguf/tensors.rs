//! Tensors of every dequantized type with values known by construction, the named errors
//! of the others, and the q/k row permutation.

use crate::parse;
use crate::support::{Rng, Writer, f16, q4_0_block, q4_1_block, q8_0_block};
use eigenlorax::Error;
use eigenlorax::gguf::{GgmlType, Gguf, Value, dequantize, permute_qk, unpermute_qk};

/// A file with one tensor of each dequantized type, with values known by construction.
pub(crate) fn typed_tensors(alignment: u64) -> (Writer, Vec<(&'static str, Vec<f32>)>) {
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
