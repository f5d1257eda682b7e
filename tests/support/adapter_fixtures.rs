//! Shared helpers for the `adapter_*` integration tests: temporary folders, seeded random
//! matrices and PEFT/kohya fixtures written with the crate's own safetensors writer.
#![allow(dead_code)]

use eigenlorax::tensorfile::{self, Dtype, TensorOut};
use eigenlorax::util::GaussianRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A temporary folder removed on drop.
pub struct TmpDir(pub PathBuf);

impl TmpDir {
    pub fn new(tag: &str) -> TmpDir {
        let d = std::env::temp_dir().join(format!("elx-adapter-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TmpDir(d)
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
    pub fn sub(&self, s: &str) -> PathBuf {
        let p = self.0.join(s);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Row-major dense matrix for reference math.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub rows: usize,
    pub cols: usize,
    pub v: Vec<f64>,
}

impl Dense {
    /// Seeded Gaussian entries, rounded to what `dtype` stores so that the stored values are
    /// known exactly.
    pub fn random(rows: usize, cols: usize, seed: u64, dtype: Dtype) -> Dense {
        let mut g = GaussianRng::new(seed);
        let v = (0..rows * cols)
            .map(|_| round_to(g.next_normal() * 0.5, dtype))
            .collect();
        Dense { rows, cols, v }
    }
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.v[i * self.cols + j]
    }
    pub fn matmul(&self, o: &Dense) -> Dense {
        assert_eq!(self.cols, o.rows);
        let mut v = vec![0.0; self.rows * o.cols];
        for i in 0..self.rows {
            for k in 0..self.cols {
                let a = self.at(i, k);
                for j in 0..o.cols {
                    v[i * o.cols + j] += a * o.at(k, j);
                }
            }
        }
        Dense {
            rows: self.rows,
            cols: o.cols,
            v,
        }
    }
    pub fn scaled(&self, s: f64) -> Dense {
        Dense {
            rows: self.rows,
            cols: self.cols,
            v: self.v.iter().map(|x| x * s).collect(),
        }
    }
    pub fn from_mat(m: faer::MatRef<'_, f64>) -> Dense {
        let mut v = Vec::with_capacity(m.nrows() * m.ncols());
        for i in 0..m.nrows() {
            for j in 0..m.ncols() {
                v.push(m[(i, j)]);
            }
        }
        Dense {
            rows: m.nrows(),
            cols: m.ncols(),
            v,
        }
    }
    pub fn tensor(&self, name: &str, dtype: Dtype) -> TensorOut {
        TensorOut::from_f64(name, dtype, vec![self.rows, self.cols], &self.v)
    }
    pub fn tensor_shaped(&self, name: &str, dtype: Dtype, shape: Vec<usize>) -> TensorOut {
        TensorOut::from_f64(name, dtype, shape, &self.v)
    }
}

/// ||x - y||_F / ||y||_F.
pub fn rel_err(x: &Dense, y: &Dense) -> f64 {
    assert_eq!((x.rows, x.cols), (y.rows, y.cols), "shape");
    let num: f64 = x.v.iter().zip(&y.v).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = y.v.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

/// The value `dtype` stores for `x`.
pub fn round_to(x: f64, dtype: Dtype) -> f64 {
    match dtype {
        Dtype::F64 => x,
        Dtype::F32 => x as f32 as f64,
        Dtype::F16 => half::f16::from_f64(x).to_f64(),
        Dtype::BF16 => half::bf16::from_f64(x).to_f64(),
        Dtype::I8 => x.round().clamp(-128.0, 127.0),
    }
}

/// Writes a PEFT folder from a config JSON and tensors.
pub fn write_peft(dir: &Path, config: &serde_json::Value, tensors: Vec<TensorOut>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
    tensorfile::write(
        &dir.join("adapter_model.safetensors"),
        tensors,
        BTreeMap::new(),
    )
    .unwrap();
}

/// One module's raw (unscaled) factors.
pub struct Pair {
    pub a: Dense,
    pub b: Dense,
}

impl Pair {
    pub fn random(r: usize, inp: usize, out: usize, seed: u64, dtype: Dtype) -> Pair {
        Pair {
            a: Dense::random(r, inp, seed, dtype),
            b: Dense::random(out, r, seed + 1000, dtype),
        }
    }
    /// s·B·A.
    pub fn delta(&self, s: f64) -> Dense {
        self.b.matmul(&self.a).scaled(s)
    }
}

/// The loaded module's B'·A'.
pub fn loaded_delta(m: &eigenlorax::adapter::LoraModule) -> Dense {
    Dense::from_mat(m.b.as_ref()).matmul(&Dense::from_mat(m.a.as_ref()))
}

/// The error message of a `Result`, panicking if it is Ok.
pub fn err_msg<T: std::fmt::Debug>(r: eigenlorax::Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => {
            assert!(
                matches!(e, eigenlorax::Error::BadInput { .. }),
                "expected BadInput, got {e:?}"
            );
            e.to_string()
        }
    }
}
