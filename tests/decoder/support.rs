//! A tiny random Llama in memory, and a plain tract runner for graph-level checks.
#![allow(dead_code)]

use eigenlorax::graph::llama::{LlamaConfig, LlamaWeights};
use eigenlorax::util::GaussianRng;
use std::collections::{BTreeMap, HashSet};
use tract_onnx::prelude::*;

/// A tiny configuration with grouped-query attention (4 query heads on 2 KV heads).
pub fn tiny_config(tied: bool) -> LlamaConfig {
    LlamaConfig {
        hidden: 32,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        intermediate: 48,
        vocab: 61,
        max_position: 64,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
        tied_embeddings: tied,
    }
}

/// Seeded random weights under the Hugging Face names, with an optional ΔW added per module.
#[derive(Clone)]
pub struct RandomWeights {
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    read: HashSet<String>,
}

impl RandomWeights {
    pub fn new(cfg: &LlamaConfig, seed: u64) -> Self {
        let mut g = GaussianRng::new(seed);
        let mut t = BTreeMap::new();
        let mut put = |name: String, shape: Vec<usize>, s: f64, center: f32| {
            let n: usize = shape.iter().product();
            let v = (0..n)
                .map(|_| center + (g.next_normal() * s) as f32)
                .collect();
            t.insert(name, (shape, v));
        };
        let (h, q, kv) = (
            cfg.hidden,
            cfg.heads * cfg.head_dim,
            cfg.kv_heads * cfg.head_dim,
        );
        put(
            "model.embed_tokens.weight".into(),
            vec![cfg.vocab, h],
            1.0,
            0.0,
        );
        for l in 0..cfg.layers {
            let p = format!("model.layers.{l}");
            put(format!("{p}.input_layernorm.weight"), vec![h], 0.1, 1.0);
            put(
                format!("{p}.post_attention_layernorm.weight"),
                vec![h],
                0.1,
                1.0,
            );
            put(format!("{p}.self_attn.q_proj.weight"), vec![q, h], 0.3, 0.0);
            put(
                format!("{p}.self_attn.k_proj.weight"),
                vec![kv, h],
                0.3,
                0.0,
            );
            put(
                format!("{p}.self_attn.v_proj.weight"),
                vec![kv, h],
                0.3,
                0.0,
            );
            put(format!("{p}.self_attn.o_proj.weight"), vec![h, q], 0.2, 0.0);
            put(
                format!("{p}.mlp.gate_proj.weight"),
                vec![cfg.intermediate, h],
                0.2,
                0.0,
            );
            put(
                format!("{p}.mlp.up_proj.weight"),
                vec![cfg.intermediate, h],
                0.2,
                0.0,
            );
            put(
                format!("{p}.mlp.down_proj.weight"),
                vec![h, cfg.intermediate],
                0.2,
                0.0,
            );
        }
        put("model.norm.weight".into(), vec![h], 0.1, 1.0);
        if !cfg.tied_embeddings {
            put("lm_head.weight".into(), vec![cfg.vocab, h], 0.3, 0.0);
        }
        RandomWeights {
            tensors: t,
            read: HashSet::new(),
        }
    }

    /// Adds `dw` ([out x in], row-major f64) to `<module>.weight`.
    pub fn add(&mut self, module: &str, dw: &[f64]) {
        let (_, w) = self
            .tensors
            .get_mut(&format!("{module}.weight"))
            .unwrap_or_else(|| panic!("no module {module}"));
        assert_eq!(w.len(), dw.len());
        for (x, d) in w.iter_mut().zip(dw) {
            *x = (f64::from(*x) + d) as f32;
        }
    }
}

impl LlamaWeights for RandomWeights {
    fn read(&mut self, name: &str, shape: &[usize]) -> eigenlorax::Result<Vec<f32>> {
        let (s, v) = self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"));
        assert_eq!(s, shape, "{name}");
        self.read.insert(name.to_string());
        Ok(v.clone())
    }

    fn check_all_read(&self) -> eigenlorax::Result<()> {
        for n in self.tensors.keys() {
            assert!(self.read.contains(n), "unread {n}");
        }
        Ok(())
    }
}

/// One optimized tract plan of `model` with its declared (symbolic) shapes.
pub fn tract_plan(model: &eigenlorax::graph::ModelProto) -> std::sync::Arc<TypedRunnableModel> {
    let bytes = eigenlorax::graph::onnx::encode_model(model);
    tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("load")
        .into_optimized()
        .expect("optimize")
        .into_runnable()
        .expect("plan")
}

pub fn i64s(shape: &[usize], v: &[i64]) -> TValue {
    Tensor::from_shape(shape, v).expect("i64 tensor").into()
}

pub fn f32s(shape: &[usize], v: &[f32]) -> TValue {
    Tensor::from_shape(shape, v).expect("f32 tensor").into()
}

/// Runs `plan` on one sequence: `ids` new tokens after `past` (per layer key/value,
/// [1, kv, p, hd] each); returns the logits [len x vocab] and the presents.
pub fn run_step(
    plan: &std::sync::Arc<TypedRunnableModel>,
    cfg: &LlamaConfig,
    ids: &[i64],
    past: &[Vec<f32>],
    p: usize,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let every: Vec<i64> = (0..ids.len() as i64).collect();
    run_step_at(plan, cfg, ids, past, p, &every)
}

/// [`run_step`] with the logits computed at `positions` (among the new tokens) only.
pub fn run_step_at(
    plan: &std::sync::Arc<TypedRunnableModel>,
    cfg: &LlamaConfig,
    ids: &[i64],
    past: &[Vec<f32>],
    p: usize,
    positions: &[i64],
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let s = ids.len();
    let mut inputs: TVec<TValue> = tvec![
        i64s(&[1, s], ids),
        i64s(&[1, p + s], &vec![1; p + s]),
        i64s(&[1, s], &(p as i64..(p + s) as i64).collect::<Vec<_>>()),
    ];
    for kv in past {
        inputs.push(f32s(&[1, cfg.kv_heads, p, cfg.head_dim], kv));
    }
    inputs.push(i64s(&[positions.len()], positions));
    let out = plan.run(inputs).expect("run");
    let logits = out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let presents = out[1..]
        .iter()
        .map(|t| {
            t.to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect()
        })
        .collect();
    (logits, presents)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The modules the tests adapt: every projection of layer 0, q and v of layer 1.
pub fn adapted_modules(cfg: &LlamaConfig) -> Vec<(String, usize, usize)> {
    let (h, q, kv, f) = (
        cfg.hidden,
        cfg.heads * cfg.head_dim,
        cfg.kv_heads * cfg.head_dim,
        cfg.intermediate,
    );
    let p = "model.layers.0";
    vec![
        (format!("{p}.self_attn.q_proj"), h, q),
        (format!("{p}.self_attn.k_proj"), h, kv),
        (format!("{p}.self_attn.v_proj"), h, kv),
        (format!("{p}.self_attn.o_proj"), q, h),
        (format!("{p}.mlp.gate_proj"), h, f),
        (format!("{p}.mlp.up_proj"), h, f),
        (format!("{p}.mlp.down_proj"), f, h),
        ("model.layers.1.self_attn.q_proj".into(), h, q),
        ("model.layers.1.self_attn.v_proj".into(), h, kv),
    ]
}

/// A decoder written to `dir/model.onnx` with a random subspace over
/// [`adapted_modules`] bound to it (`dir/bound.elxb`).
pub struct Fixture {
    pub cfg: LlamaConfig,
    pub weights: RandomWeights,
    pub model: std::path::PathBuf,
    pub bundle: eigenlorax::bundle::Bundle,
}

pub fn fixture(dir: &std::path::Path, tied: bool) -> Fixture {
    let cfg = tiny_config(tied);
    let weights = RandomWeights::new(&cfg, 11);
    fixture_with(dir, cfg, weights)
}

/// The model of `cfg` with `weights`, written to `dir`, with a random subspace bound to it.
pub fn fixture_with(dir: &std::path::Path, cfg: LlamaConfig, weights: RandomWeights) -> Fixture {
    let model = eigenlorax::graph::llama::build(&cfg, &mut weights.clone(), "tiny").expect("build");
    fixture_with_model(dir, cfg, weights, &model)
}

/// [`fixture_with`] for a `model` built (and perhaps changed) by the caller.
pub fn fixture_with_model(
    dir: &std::path::Path,
    cfg: LlamaConfig,
    weights: RandomWeights,
    model: &eigenlorax::graph::ModelProto,
) -> Fixture {
    let (model, bundle) = bind_random_subspace(dir, &cfg, model);
    Fixture {
        cfg,
        weights,
        model,
        bundle,
    }
}

/// An imported decoder written to `dir` with a random subspace bound to it (its weights are
/// not kept: [`Fixture::weights`] is empty).
pub fn fixture_for(
    dir: &std::path::Path,
    m: &eigenlorax::graph::llama::ImportedDecoder,
) -> Fixture {
    let (model, bundle) = bind_random_subspace(dir, &m.config, &m.model);
    Fixture {
        cfg: m.config.clone(),
        weights: RandomWeights {
            tensors: BTreeMap::new(),
            read: HashSet::new(),
        },
        model,
        bundle,
    }
}

fn bind_random_subspace(
    dir: &std::path::Path,
    cfg: &LlamaConfig,
    model: &eigenlorax::graph::ModelProto,
) -> (std::path::PathBuf, eigenlorax::bundle::Bundle) {
    use eigenlorax::bundle::{Bundle, StorageDtype};
    use eigenlorax::subspace::{ExtractOptions, Subspace};
    let path = dir.join("model.onnx");
    std::fs::write(&path, eigenlorax::graph::onnx::encode_model(model)).expect("write");
    let modules = adapted_modules(cfg)
        .into_iter()
        .enumerate()
        .map(|(i, (m, din, dout))| {
            (
                m,
                super::bundle_support::module(din, dout, 5, 6, 100 + i as u64),
            )
        })
        .collect();
    let sub = Subspace {
        modules,
        options: ExtractOptions::default(),
    };
    let unbound = dir.join("unbound.elxb");
    Bundle::write(&unbound, &sub, &[], StorageDtype::F32, None).expect("write bundle");
    let b = Bundle::read(&unbound).expect("read bundle");
    let binding = eigenlorax::graph::bind_file(&path, &b, None).expect("bind");
    assert_eq!(binding.modules.len(), 9);
    let bound = dir.join("bound.elxb");
    b.with_binding(Some(&binding), &bound).expect("bound");
    (path, Bundle::read(&bound).expect("read bound"))
}

/// Random coefficients for every module of `bundle` (rank 4), scaled by `s`.
pub fn coeffs(
    bundle: &eigenlorax::bundle::Bundle,
    seed: u64,
    task: &str,
    s: f64,
) -> eigenlorax::bundle::CoeffFile {
    use eigenlorax::bundle::{CoeffFile, Provenance};
    use eigenlorax::subspace::Coefficients;
    let mut g = GaussianRng::new(seed);
    let modules = bundle
        .subspace
        .modules
        .iter()
        .map(|(m, sub)| {
            let (ka, kb) = (sub.v_a.nrows(), sub.v_b.ncols());
            let alpha_a = faer::Mat::<f64>::from_fn(4, ka, |_, _| g.next_normal() * s);
            let alpha_b = faer::Mat::<f64>::from_fn(kb, 4, |_, _| g.next_normal() * s);
            (m.clone(), Coefficients { alpha_a, alpha_b })
        })
        .collect();
    CoeffFile {
        subspace_id: bundle.manifest.subspace_id.clone(),
        task: task.into(),
        provenance: Provenance::Projected,
        modules,
        head: None,
    }
}

/// The fixture's weights with each module's ΔW = V_B·α_B·α_A·V_A merged in.
pub fn merged(f: &Fixture, c: &eigenlorax::bundle::CoeffFile) -> RandomWeights {
    let mut w = f.weights.clone();
    for (m, s) in &f.bundle.subspace.modules {
        let co = &c.modules[m];
        let dw = &s.v_b * &co.alpha_b * &co.alpha_a * &s.v_a;
        let v: Vec<f64> = (0..dw.nrows())
            .flat_map(|i| (0..dw.ncols()).map(move |j| (i, j)))
            .map(|(i, j)| dw[(i, j)])
            .collect();
        w.add(m, &v);
    }
    w
}

/// Greedy tokens of a model (plain tract, full re-run per step, no cache): the reference.
pub fn greedy_reference(
    cfg: &LlamaConfig,
    w: &RandomWeights,
    prompt: &[u32],
    n: usize,
) -> Vec<u32> {
    let model = eigenlorax::graph::llama::build(cfg, &mut w.clone(), "ref").expect("build");
    let plan = tract_plan(&model);
    let empty: Vec<Vec<f32>> = vec![Vec::new(); 2 * cfg.layers];
    let mut ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
    let mut out = Vec::new();
    for _ in 0..n {
        let (logits, _) = run_step(&plan, cfg, &ids, &empty, 0);
        let last = &logits[(ids.len() - 1) * cfg.vocab..];
        let t = eigenlorax::serve::generate::argmax(last) as u32;
        out.push(t);
        ids.push(i64::from(t));
    }
    out
}
