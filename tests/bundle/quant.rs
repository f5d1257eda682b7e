//! What storage in a lower precision costs an adapter that lies inside the subspace.
//!
//! Theory (src/bundle/quant.rs): with Ṽ = V + E and orthogonal projection onto the stored
//! spans, an in-span ΔW = V_B·M·V_A loses at most √(‖E_A‖²₂ + ‖E_B‖²₂) of its norm, and the
//! file alone bounds ‖E‖_F by u·√K (floats) or √(Σ n·s²/4) (int8). These tests measure the
//! loss against both bounds, with the projection computed here from first principles (QR of
//! the stored bases), independent of the subspace stage.

use crate::support::bundle as bundle_support;

use bundle_support::*;
use eigenlorax::bundle::fidelity::{projection_error_bound, storage_error_bounds};
use eigenlorax::bundle::{Bundle, StorageDtype};
use eigenlorax::subspace::{ExtractOptions, ModuleSubspace, Subspace};
use eigenlorax::util::GaussianRng;
use faer::Mat;
use std::collections::BTreeMap;

fn gauss(rows: usize, cols: usize, rng: &mut GaussianRng) -> Mat<f64> {
    Mat::from_fn(rows, cols, |_, _| rng.next_normal())
}

fn spectral_norm(m: &Mat<f64>) -> f64 {
    m.singular_values().unwrap().into_iter().fold(0.0, f64::max)
}

fn frob(m: &Mat<f64>) -> f64 {
    m.norm_l2()
}

/// Orthogonal projector onto the column span of `v` (QR, so it is exact for any basis).
fn projector(v: &Mat<f64>) -> Mat<f64> {
    let q = v.qr().compute_thin_Q();
    &q * q.transpose()
}

struct Measured {
    rel: f64,
    sharp: f64,
    file_bound: f64,
}

/// Writes `m` in `dtype`, reads it back, and measures the projection loss of an in-span ΔW.
fn measure(m: &ModuleSubspace, dtype: StorageDtype, seed: u64, dir: &std::path::Path) -> Measured {
    let mut modules = BTreeMap::new();
    modules.insert("m".to_string(), m.clone());
    let sub = Subspace {
        modules,
        options: ExtractOptions::default(),
    };
    let path = dir.join(format!("q-{}-{seed}.elxb", dtype.name()));
    Bundle::write(&path, &sub, &sources(), dtype, None).unwrap();
    let b = Bundle::read(&path).unwrap();
    let s = &b.subspace.modules["m"];

    let mut rng = GaussianRng::new(seed);
    let r = 4;
    let a = gauss(r, m.v_a.nrows(), &mut rng) * &m.v_a; // [r x in], rows in span(V_A)
    let bm = &m.v_b * gauss(m.v_b.ncols(), r, &mut rng); // [out x r], columns in span(V_B)
    let dw = &bm * &a;
    let approx = projector(&s.v_b) * &dw * projector(&s.v_a.transpose().to_owned());
    let rel = frob(&(&dw - &approx)) / frob(&dw);

    let e_a = &s.v_a - &m.v_a;
    let e_b = &s.v_b - &m.v_b;
    let sharp = (spectral_norm(&e_a).powi(2) + spectral_norm(&e_b).powi(2)).sqrt();
    let (fa, fb) = storage_error_bounds(&b, "m").unwrap();
    assert!(
        frob(&e_a) <= fa * (1.0 + 1e-9),
        "{dtype:?}: ||E_A||_F {} > bound {fa}",
        frob(&e_a)
    );
    assert!(
        frob(&e_b) <= fb * (1.0 + 1e-9),
        "{dtype:?}: ||E_B||_F {} > bound {fb}",
        frob(&e_b)
    );
    Measured {
        rel,
        sharp,
        file_bound: projection_error_bound(&b, "m").unwrap(),
    }
}

#[test]
fn in_span_projection_loss_is_within_the_derived_bounds() {
    let dir = temp_dir("quant-bounds");
    // K_A + K_B = 4: the f16 a-priori bound u·√(K_A+K_B) = 2^-11·2 = 9.8e-4 < 1e-3.
    let small = module(96, 64, 2, 2, 21);
    // A MiniLM-sized module with K = 8 per side, to report the figures at a realistic size.
    let large = module(384, 384, 8, 8, 22);
    for (label, m) in [("96x64 K=2+2", &small), ("384x384 K=8+8", &large)] {
        for dtype in DTYPES {
            for seed in 0..2 {
                let x = measure(m, dtype, seed, &dir);
                println!(
                    "{label} {:>4}: rel ΔW loss {:.3e}  sharp bound {:.3e}  file bound {:.3e}",
                    dtype.name(),
                    x.rel,
                    x.sharp,
                    x.file_bound
                );
                assert!(
                    x.rel <= x.sharp * (1.0 + 1e-6) + 1e-13,
                    "{label} {dtype:?}: {} > sharp {}",
                    x.rel,
                    x.sharp
                );
                assert!(
                    x.sharp <= x.file_bound * (1.0 + 1e-9),
                    "{label} {dtype:?}: sharp {} > file {}",
                    x.sharp,
                    x.file_bound
                );
            }
        }
    }
    // The promised figures follow from the bounds, not from the draws: f16 with K_A+K_B = 4.
    let f16 = measure(&small, StorageDtype::F16, 0, &dir);
    assert!(
        f16.file_bound < 1e-3,
        "f16 a-priori bound {}",
        f16.file_bound
    );
    assert!(f16.rel < 1e-3);
    // f32 storage is lossless to ~1e-7.
    let f32 = measure(&large, StorageDtype::F32, 0, &dir);
    assert!(
        f32.file_bound < 4.0 * 2f64.powi(-24) * 4.0 * 1.01,
        "{}",
        f32.file_bound
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same bound holds for the library's projection (least squares on the stored bases),
/// which is what `elx project` uses.
#[test]
fn library_projection_meets_the_bound() {
    use eigenlorax::adapter::LoraModule;
    use eigenlorax::subspace::{project, reconstruct, relative_error};
    let dir = temp_dir("quant-lib");
    let m = module(128, 96, 6, 5, 31);
    for dtype in DTYPES {
        let mut modules = BTreeMap::new();
        modules.insert("m".to_string(), m.clone());
        let path = dir.join(format!("{}.elxb", dtype.name()));
        Bundle::write(
            &path,
            &Subspace {
                modules,
                options: ExtractOptions::default(),
            },
            &sources(),
            dtype,
            None,
        )
        .unwrap();
        let b = Bundle::read(&path).unwrap();
        let s = &b.subspace.modules["m"];
        let mut rng = GaussianRng::new(5);
        let lora = LoraModule {
            a: gauss(4, 6, &mut rng) * &m.v_a,
            b: &m.v_b * gauss(5, 4, &mut rng),
        };
        let rel = relative_error(&lora, &reconstruct(&project(&lora, s), s));
        let sharp = (spectral_norm(&(&s.v_a - &m.v_a)).powi(2)
            + spectral_norm(&(&s.v_b - &m.v_b)).powi(2))
        .sqrt();
        println!(
            "library projection {:>4}: {rel:.3e} (sharp bound {sharp:.3e})",
            dtype.name()
        );
        assert!(
            rel <= sharp * (1.0 + 1e-6) + 1e-13,
            "{dtype:?}: {rel} > {sharp}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
