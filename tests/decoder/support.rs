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
    let s = ids.len();
    let mut inputs: TVec<TValue> = tvec![
        i64s(&[1, s], ids),
        i64s(&[1, p + s], &vec![1; p + s]),
        i64s(&[1, s], &(p as i64..(p + s) as i64).collect::<Vec<_>>()),
    ];
    for kv in past {
        inputs.push(f32s(&[1, cfg.kv_heads, p, cfg.head_dim], kv));
    }
    let out = plan.run(inputs).expect("run");
    let logits = out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let presents = out[1..]
        .iter()
        .map(|t| t.to_plain_array_view::<f32>().unwrap().iter().copied().collect())
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
