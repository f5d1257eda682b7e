//! Shared generators for the subspace tests: seeded, so every figure is reproducible.
#![allow(dead_code)]

use eigenlorax::adapter::LoraModule;
use eigenlorax::linalg;
use eigenlorax::util::GaussianRng;
use faer::{Mat, MatRef};

/// A [rows x cols] matrix of standard normals.
pub fn gaussian(rng: &mut GaussianRng, rows: usize, cols: usize) -> Mat<f64> {
    // Row-major draw order, like numpy's `reshape(rows, cols)`.
    let v: Vec<f64> = (0..rows * cols).map(|_| rng.next_normal()).collect();
    Mat::from_fn(rows, cols, |i, j| v[i * cols + j])
}

/// A [d x k] matrix with orthonormal columns (Q of a Gaussian).
pub fn orthonormal_cols(rng: &mut GaussianRng, d: usize, k: usize) -> Mat<f64> {
    let g = gaussian(rng, d, k);
    linalg::thin_qr(g.as_ref()).0
}

/// Adapters inside a known subspace: A_t = C_t·V_A, B_t = V_B·D_t with V_A [k x in] orthonormal
/// rows and V_B [out x k] orthonormal columns. Returns (adapters, V_A, V_B).
pub fn structured(
    seed: u64,
    n: usize,
    r: usize,
    in_f: usize,
    out_f: usize,
    k: usize,
) -> (Vec<LoraModule>, Mat<f64>, Mat<f64>) {
    let mut rng = GaussianRng::new(seed);
    let v_a = orthonormal_cols(&mut rng, in_f, k).transpose().to_owned();
    let v_b = orthonormal_cols(&mut rng, out_f, k);
    let mods = (0..n)
        .map(|_| {
            let c = gaussian(&mut rng, r, k);
            let d = gaussian(&mut rng, k, r);
            LoraModule {
                a: linalg::mul(c.as_ref(), v_a.as_ref()),
                b: linalg::mul(v_b.as_ref(), d.as_ref()),
            }
        })
        .collect();
    (mods, v_a, v_b)
}

/// Unstructured Gaussian adapters.
pub fn random(seed: u64, n: usize, r: usize, in_f: usize, out_f: usize) -> Vec<LoraModule> {
    let mut rng = GaussianRng::new(seed);
    (0..n)
        .map(|_| LoraModule {
            a: gaussian(&mut rng, r, in_f),
            b: gaussian(&mut rng, out_f, r),
        })
        .collect()
}

/// Dense ΔW = B·A (small sizes only).
pub fn dense(m: &LoraModule) -> Mat<f64> {
    linalg::mul(m.b.as_ref(), m.a.as_ref())
}

/// Frobenius norm of a − b.
pub fn diff_norm(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    let d = Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] - b[(i, j)]);
    linalg::frob2(d.as_ref()).sqrt()
}

/// Largest |entry| of a − b.
pub fn max_abs_diff(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let mut m: f64 = 0.0;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            m = m.max((a[(i, j)] - b[(i, j)]).abs());
        }
    }
    m
}

/// max |QᵀQ − I| for Q with (supposedly) orthonormal columns.
pub fn orthonormality_defect(q: MatRef<'_, f64>) -> f64 {
    let g = linalg::mul(q.transpose(), q);
    let id = Mat::<f64>::identity(q.ncols(), q.ncols());
    max_abs_diff(g.as_ref(), id.as_ref())
}
