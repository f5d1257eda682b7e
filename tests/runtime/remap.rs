//! A device that holds a bundle and its tasks takes an updated bundle (`elx extract
//! --update`) and the remapped tasks (`elx project --remap`), and serves the same outputs
//! (≤ 1e-5) for a task whose subspace was kept (issue 31). When the old subspace is not
//! inside the new one, the remap reports the captured share, and the identity
//! ‖ΔŴ − ΔŴ'‖² = (1 − captured)·‖ΔŴ‖² of an orthogonal projection holds.
#![cfg(feature = "tract")]

use crate::support::lora_pool;
use crate::support::runtime::*;
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::stats::{BundleSink, StatsFile, path_beside};
use eigenlorax::bundle::{
    Bundle, BundleWriter, CoeffFile, Provenance, SourceAdapter, StatsWriter, StorageDtype,
};
use eigenlorax::serve::backend::tract::Runtime;
use eigenlorax::subspace::{
    self, Coefficients, ExtractOptions, KRule, ModuleSelection, PriorStats, Route,
};
use eigenlorax::util::GaussianRng;
use faer::Mat;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;

/// Extracts `adapters` (on top of `prior`'s statistics when given) into `out` with its
/// statistics beside it.
fn extract(
    out: &Path,
    adapters: &[PathBuf],
    prior: Option<&Path>,
    options: &ExtractOptions,
) -> Bundle {
    let ads: Vec<Adapter> = adapters.iter().map(|p| Adapter::open(p).unwrap()).collect();
    let stats = prior.map(|p| StatsFile::open(&path_beside(p)).unwrap());
    let mut sources = match prior {
        Some(p) => Bundle::read_manifest(p).unwrap().sources,
        None => Vec::new(),
    };
    sources.extend(ads.iter().map(SourceAdapter::from));
    let sink = BundleSink::new(
        BundleWriter::create(out, StorageDtype::F32).unwrap(),
        Some(StatsWriter::create(&path_beside(out)).unwrap()),
    );
    subspace::extract_each(
        &ads,
        stats.as_ref().map(|s| s as &dyn PriorStats),
        options,
        &|_, _, _| {},
        Route::Auto,
        2,
        &ModuleSelection::default(),
        &sink,
    )
    .unwrap();
    sink.finish(options, &sources, None).unwrap();
    Bundle::read(out).unwrap()
}

/// Random rank-2 coefficients for every module of `b`.
fn task(b: &Bundle, seed: u64) -> CoeffFile {
    let mut rng = GaussianRng::new(seed);
    let modules: BTreeMap<String, Coefficients> = b
        .subspace
        .modules
        .iter()
        .map(|(name, m)| {
            let (ka, kb) = (m.v_a.nrows(), m.v_b.ncols());
            let alpha_a = Mat::from_fn(2, ka, |_, _| 0.4 * rng.next_normal());
            let alpha_b = Mat::from_fn(kb, 2, |_, _| 0.4 * rng.next_normal());
            (name.clone(), Coefficients { alpha_a, alpha_b })
        })
        .collect();
    CoeffFile {
        subspace_id: b.manifest.subspace_id.clone(),
        task: "t".into(),
        provenance: Provenance::Finetuned,
        modules,
        head: None,
    }
}

fn run(model: &Path, b: &mut Bundle, c: &CoeffFile, x: &(Vec<usize>, Vec<f32>)) -> Vec<Vec<f32>> {
    bind_bundle(b, model);
    let rt = Runtime::load(model, b).expect("load");
    let id = rt.insert_task(c).expect("insert");
    let t: TValue = Tensor::from_shape(&x.0, &x.1).unwrap().into();
    rt.run(&[t], id)
        .expect("run")
        .iter()
        .map(|o| {
            o.to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect()
        })
        .collect()
}

fn pool(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    (
        lora_pool::write(&dir.join("pool"), &MODULES, 31, 0, 3, 2),
        lora_pool::write(&dir.join("pool"), &MODULES, 31, 3, 2, 2),
    )
}

#[test]
fn remapped_task_serves_the_same_outputs_through_the_updated_bundle() {
    let dir = temp_dir("remap-kept");
    let model_path = write_model(&dir, "base.onnx", &model(&Weights::random(31)));
    let (old_ads, new_ads) = pool(&dir);
    // Energy 1: every direction of the stack is kept, so the old subspace lies in the new.
    let options = ExtractOptions {
        k_rule_a: KRule::Energy(1.0),
        k_rule_b: KRule::Energy(1.0),
        ..ExtractOptions::default()
    };
    let old_path = dir.join("old.elxb");
    let mut old = extract(&old_path, &old_ads, None, &options);
    let mut new = extract(&dir.join("new.elxb"), &new_ads, Some(&old_path), &options);
    assert_ne!(old.manifest.subspace_id, new.manifest.subspace_id);
    let grew = old.subspace.modules.iter().any(|(n, m)| {
        let g = &new.subspace.modules[n];
        g.v_a.nrows() > m.v_a.nrows() || g.v_b.ncols() > m.v_b.ncols()
    });
    assert!(grew, "the update must add directions");

    let c_old = task(&old, 5);
    let (c_new, measures) = c_old.remap(Path::new("t.elxc"), &old, &new).unwrap();
    for (name, m) in &measures {
        println!(
            "{name}: captured {:.9}, relative change {:.1e}",
            m.captured, m.relative_error
        );
        assert!(m.captured >= 1.0 - 1e-6, "{name}: captured {}", m.captured);
        assert!(m.relative_error <= 1e-5, "{name}: {}", m.relative_error);
    }
    // Through files, as a device receives them.
    let f = dir.join("t-new.elxc");
    c_new.write(&f).unwrap();
    let c_new = CoeffFile::read_for(&f, &new.manifest).unwrap();

    let x = input(9, 2, 5);
    let want = run(&model_path, &mut old, &c_old, &x);
    let got = run(&model_path, &mut new, &c_new, &x);
    let zero = c_old.clone().scaled_zero();
    let base = run(&model_path, &mut old, &zero, &x);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let d = max_abs_diff(g, w);
        println!("output {i}: max |remapped - original| = {d:e}");
        assert!(d <= 1e-5, "output {i} differs by {d}");
        assert!(max_abs_diff(w, &base[i]) > 1e-3, "the task must matter");
    }
}

#[test]
fn remap_reports_the_captured_share_when_the_subspace_moved() {
    let dir = temp_dir("remap-moved");
    let (old_ads, new_ads) = pool(&dir);
    let options = ExtractOptions {
        k_rule_a: KRule::Fixed(2),
        k_rule_b: KRule::Fixed(2),
        ..ExtractOptions::default()
    };
    let old_path = dir.join("old.elxb");
    let old = extract(&old_path, &old_ads, None, &options);
    let new = extract(&dir.join("new.elxb"), &new_ads, Some(&old_path), &options);
    let c = task(&old, 6);
    let (_, measures) = c.remap(Path::new("t.elxc"), &old, &new).unwrap();
    let mut lost = false;
    for (name, m) in &measures {
        assert!((0.0..=1.0 + 1e-12).contains(&m.captured), "{name}");
        let identity = m.relative_error.powi(2) - (1.0 - m.captured);
        println!(
            "{name}: captured {:.6}, relative change {:.3e}, identity residual {identity:.1e}",
            m.captured, m.relative_error
        );
        assert!(identity.abs() <= 1e-6, "{name}: {identity:e}");
        lost |= m.captured < 0.999;
    }
    assert!(lost, "a moved subspace loses part of some task");
    // A task file of another bundle is refused, naming it.
    let err = task(&new, 1)
        .remap(Path::new("other.elxc"), &old, &new)
        .unwrap_err()
        .to_string();
    assert!(err.contains("other.elxc"), "{err}");
}

trait ScaledZero {
    fn scaled_zero(self) -> Self;
}

impl ScaledZero for CoeffFile {
    /// The same task with every coefficient zero (the base model's outputs).
    fn scaled_zero(mut self) -> Self {
        for c in self.modules.values_mut() {
            c.alpha_a = Mat::zeros(c.alpha_a.nrows(), c.alpha_a.ncols());
        }
        self
    }
}
