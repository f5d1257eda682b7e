//! The f64 finite-difference reference of the exact gradients (`tools/grad_fd_reference.py`,
//! ONNX Runtime in float64): writing its inputs, reading its output, comparing.

#![allow(dead_code)]

use std::path::Path;

/// The Python interpreter the reference runs with (`$PYTHON`, else `python3`).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Writes the named f32/i64 tensors as safetensors.
pub fn write_tensors(
    path: &Path,
    f32s: &[(&str, Vec<usize>, &[f32])],
    i64s: &[(&str, Vec<usize>, &[i64])],
) {
    use safetensors::tensor::{Dtype, TensorView};
    let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (n, s, v) in f32s {
        bufs.push((
            n.to_string(),
            Dtype::F32,
            s.clone(),
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
    }
    for (n, s, v) in i64s {
        bufs.push((
            n.to_string(),
            Dtype::I64,
            s.clone(),
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
    }
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

pub fn read_f64s(path: &Path) -> std::collections::HashMap<String, Vec<f64>> {
    let bytes = std::fs::read(path).expect("read FD output");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(n, t)| {
            let v = t
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
                .collect();
            (n, v)
        })
        .collect()
}

/// ‖a − b‖ / ‖b‖.
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(1e-300)
}

/// Runs `tools/grad_fd_reference.py` on the training graph `model` with the inputs
/// `inputs` (safetensors), and returns its f64 loss and `grad:<input>` tensors.
pub fn fd_reference(
    model: &Path,
    inputs: &Path,
    out: &Path,
) -> std::collections::HashMap<String, Vec<f64>> {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/grad_fd_reference.py");
    let o = std::process::Command::new(python())
        .arg(&tool)
        .arg(model)
        .arg(inputs)
        .arg(out)
        .output()
        .expect("run python");
    assert!(
        o.status.success(),
        "{} failed (needs numpy, onnx, safetensors and onnxruntime on PYTHONPATH; tools/test.sh installs them): {}",
        tool.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    read_f64s(out)
}
