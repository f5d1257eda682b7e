//! The ONNX graph of the encoder (opset 17): embeddings, the layers, the last hidden state
//! and the mean-pooled sentence embedding, each linear layer's weight stored `[in x out]`
//! under its HF module name.

use super::BertConfig;
use super::weights::Weights;
use crate::error::Result;
use crate::graph::onnx::transpose;
use crate::graph::onnx::{self, Dim, attr_float, attr_int, attr_ints, node};
use crate::graph::pb::{GraphProto, ModelProto, OperatorSetIdProto};

/// The graph builder, with the encoder's two composite layers added below.
type Builder = onnx::GraphBuilder;

impl Builder {
    /// `y = x·W + b` for the HF linear module `module` (weight [out x in] in the checkpoint,
    /// stored [in x out] under `<module>.weight` so that binding finds it by name).
    fn linear(
        &mut self,
        w: &mut Weights,
        module: &str,
        x: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<String> {
        let wt = w.read(&format!("{module}.weight"), &[d_out, d_in])?;
        let b = w.read(&format!("{module}.bias"), &[d_out])?;
        let wn = self.init_f32(
            &format!("{module}.weight"),
            &[d_in, d_out],
            &transpose(d_out, d_in, &wt),
        );
        let bn = self.init_f32(&format!("{module}.bias"), &[d_out], &b);
        let scope = format!("/{}", module.replace('.', "/"));
        let y = self.op("MatMul", &format!("{scope}/MatMul"), &[x, &wn], vec![]);
        Ok(self.op("Add", &format!("{scope}/Add"), &[&y, &bn], vec![]))
    }

    /// LayerNorm over the last axis with the module's weight and bias.
    fn layer_norm(
        &mut self,
        w: &mut Weights,
        module: &str,
        x: &str,
        hidden: usize,
        eps: f32,
        out: Option<&str>,
    ) -> Result<String> {
        let g = w.read(&format!("{module}.weight"), &[hidden])?;
        let b = w.read(&format!("{module}.bias"), &[hidden])?;
        let gn = self.init_f32(&format!("{module}.weight"), &[hidden], &g);
        let bn = self.init_f32(&format!("{module}.bias"), &[hidden], &b);
        let name = format!("/{}/LayerNormalization", module.replace('.', "/"));
        let y = out.unwrap_or(&name).to_string();
        self.nodes.push(node(
            "LayerNormalization",
            &name,
            &[x, &gn, &bn],
            &[&y],
            vec![attr_int("axis", -1), attr_float("epsilon", eps)],
        ));
        Ok(y)
    }
}

pub(super) fn build(cfg: &BertConfig, w: &mut Weights) -> Result<ModelProto> {
    let h = cfg.hidden;
    let heads = cfg.heads;
    let dh = h / heads;
    let eps = cfg.layer_norm_eps;
    let mut b = Builder::default();

    // Shared constants.
    let c_one = b.init_f32("/const/one", &[], &[1.0]);
    let c_min = b.init_f32("/const/f32_min", &[], &[f32::MIN]);
    let c_scale = b.init_f32("/const/attention_scale", &[], &[1.0 / (dh as f32).sqrt()]);
    let c_inv_sqrt2 = b.init_f32("/const/inv_sqrt2", &[], &[std::f32::consts::FRAC_1_SQRT_2]);
    let c_half = b.init_f32("/const/half", &[], &[0.5]);
    let c_tiny = b.init_f32("/const/pool_min", &[], &[1e-9]);
    let c_zero1 = b.init_i64("/const/zero_1d", &[1], &[0]);
    let c_one1 = b.init_i64("/const/one_1d", &[1], &[1]);
    let c_ax2 = b.init_i64("/const/axes_2", &[1], &[2]);
    let c_ax12 = b.init_i64("/const/axes_1_2", &[2], &[1, 2]);
    let c_split = b.init_i64("/const/shape_heads", &[4], &[0, 0, heads as i64, dh as i64]);
    let c_merge = b.init_i64("/const/shape_hidden", &[3], &[0, 0, h as i64]);

    // Embeddings: word + position (rows 0..seq) + token type, then LayerNorm.
    let word = w.read("embeddings.word_embeddings.weight", &[cfg.vocab, h])?;
    let word = b.init_f32("embeddings.word_embeddings.weight", &[cfg.vocab, h], &word);
    let pos = w.read(
        "embeddings.position_embeddings.weight",
        &[cfg.max_position, h],
    )?;
    let pos = b.init_f32(
        "embeddings.position_embeddings.weight",
        &[cfg.max_position, h],
        &pos,
    );
    let tt = w.read(
        "embeddings.token_type_embeddings.weight",
        &[cfg.type_vocab, h],
    )?;
    let tt = b.init_f32(
        "embeddings.token_type_embeddings.weight",
        &[cfg.type_vocab, h],
        &tt,
    );
    let e_word = b.op(
        "Gather",
        "/embeddings/word_embeddings/Gather",
        &[&word, "input_ids"],
        vec![],
    );
    let shape = b.op("Shape", "/embeddings/Shape", &["input_ids"], vec![]);
    let seq = b.op(
        "Gather",
        "/embeddings/seq_len",
        &[&shape, &c_one1],
        vec![attr_int("axis", 0)],
    );
    let e_pos = b.op(
        "Slice",
        "/embeddings/position_embeddings/Slice",
        &[&pos, &c_zero1, &seq, &c_zero1],
        vec![],
    );
    let e_tt = b.op(
        "Gather",
        "/embeddings/token_type_embeddings/Gather",
        &[&tt, "token_type_ids"],
        vec![],
    );
    let e = b.op("Add", "/embeddings/Add", &[&e_word, &e_tt], vec![]);
    let e = b.op("Add", "/embeddings/Add_1", &[&e, &e_pos], vec![]);
    let mut x = b.layer_norm(w, "embeddings.LayerNorm", &e, h, eps, None)?;

    // The additive attention mask, [batch, 1, 1, seq]: 0 where attended, f32::MIN elsewhere.
    let mask_f = b.op(
        "Cast",
        "/mask/Cast",
        &["attention_mask"],
        vec![attr_int("to", i64::from(onnx::FLOAT))],
    );
    let m4 = b.op("Unsqueeze", "/mask/Unsqueeze", &[&mask_f, &c_ax12], vec![]);
    let inv = b.op("Sub", "/mask/Sub", &[&c_one, &m4], vec![]);
    let add_mask = b.op("Mul", "/mask/Mul", &[&inv, &c_min], vec![]);

    for l in 0..cfg.layers {
        let p = format!("encoder.layer.{l}");
        let s = format!("/encoder/layer/{l}/attention/self");
        let q = b.linear(w, &format!("{p}.attention.self.query"), &x, h, h)?;
        let k = b.linear(w, &format!("{p}.attention.self.key"), &x, h, h)?;
        let v = b.linear(w, &format!("{p}.attention.self.value"), &x, h, h)?;
        let q = b.op("Reshape", &format!("{s}/q_heads"), &[&q, &c_split], vec![]);
        let q = b.op(
            "Transpose",
            &format!("{s}/q_perm"),
            &[&q],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let q = b.op("Mul", &format!("{s}/q_scale"), &[&q, &c_scale], vec![]);
        let k = b.op("Reshape", &format!("{s}/k_heads"), &[&k, &c_split], vec![]);
        let k = b.op(
            "Transpose",
            &format!("{s}/k_perm"),
            &[&k],
            vec![attr_ints("perm", &[0, 2, 3, 1])],
        );
        let v = b.op("Reshape", &format!("{s}/v_heads"), &[&v, &c_split], vec![]);
        let v = b.op(
            "Transpose",
            &format!("{s}/v_perm"),
            &[&v],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let scores = b.op("MatMul", &format!("{s}/scores"), &[&q, &k], vec![]);
        let scores = b.op(
            "Add",
            &format!("{s}/scores_masked"),
            &[&scores, &add_mask],
            vec![],
        );
        let probs = b.op(
            "Softmax",
            &format!("{s}/Softmax"),
            &[&scores],
            vec![attr_int("axis", -1)],
        );
        let ctx = b.op("MatMul", &format!("{s}/context"), &[&probs, &v], vec![]);
        let ctx = b.op(
            "Transpose",
            &format!("{s}/context_perm"),
            &[&ctx],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let ctx = b.op(
            "Reshape",
            &format!("{s}/context_merge"),
            &[&ctx, &c_merge],
            vec![],
        );
        let a = b.linear(w, &format!("{p}.attention.output.dense"), &ctx, h, h)?;
        let a = b.op(
            "Add",
            &format!("/encoder/layer/{l}/attention/output/residual"),
            &[&a, &x],
            vec![],
        );
        let a = b.layer_norm(
            w,
            &format!("{p}.attention.output.LayerNorm"),
            &a,
            h,
            eps,
            None,
        )?;
        let f = b.linear(
            w,
            &format!("{p}.intermediate.dense"),
            &a,
            h,
            cfg.intermediate,
        )?;
        // GELU, erf form: x · 0.5 · (1 + erf(x / √2)).
        let g = format!("/encoder/layer/{l}/intermediate/gelu");
        let t = b.op("Mul", &format!("{g}/scale"), &[&f, &c_inv_sqrt2], vec![]);
        let t = b.op("Erf", &format!("{g}/Erf"), &[&t], vec![]);
        let t = b.op("Add", &format!("{g}/Add"), &[&t, &c_one], vec![]);
        let t = b.op("Mul", &format!("{g}/Mul"), &[&f, &t], vec![]);
        let f = b.op("Mul", &format!("{g}/half"), &[&t, &c_half], vec![]);
        let o = b.linear(w, &format!("{p}.output.dense"), &f, cfg.intermediate, h)?;
        let o = b.op(
            "Add",
            &format!("/encoder/layer/{l}/output/residual"),
            &[&o, &a],
            vec![],
        );
        let last = (l + 1 == cfg.layers).then_some("last_hidden_state");
        x = b.layer_norm(w, &format!("{p}.output.LayerNorm"), &o, h, eps, last)?;
    }

    // Mean pooling over the attention mask.
    let m3 = b.op("Unsqueeze", "/pool/Unsqueeze", &[&mask_f, &c_ax2], vec![]);
    let hm = b.op("Mul", "/pool/Mul", &[&x, &m3], vec![]);
    let num = b.op(
        "ReduceSum",
        "/pool/sum_states",
        &[&hm, &c_one1],
        vec![attr_int("keepdims", 0)],
    );
    let den = b.op(
        "ReduceSum",
        "/pool/sum_mask",
        &[&m3, &c_one1],
        vec![attr_int("keepdims", 0)],
    );
    let den = b.op("Max", "/pool/clamp", &[&den, &c_tiny], vec![]);
    b.nodes.push(node(
        "Div",
        "/pool/Div",
        &[&num, &den],
        &["sentence_embedding"],
        vec![],
    ));

    let bs = || vec![Dim::Param("batch".into()), Dim::Param("sequence".into())];
    let graph = GraphProto {
        name: "bert_encoder".into(),
        node: b.nodes,
        initializer: b.inits,
        input: vec![
            onnx::value_info("input_ids", onnx::INT64, &bs()),
            onnx::value_info("attention_mask", onnx::INT64, &bs()),
            onnx::value_info("token_type_ids", onnx::INT64, &bs()),
        ],
        output: vec![
            onnx::value_info(
                "last_hidden_state",
                onnx::FLOAT,
                &[
                    Dim::Param("batch".into()),
                    Dim::Param("sequence".into()),
                    Dim::Fixed(h),
                ],
            ),
            onnx::value_info(
                "sentence_embedding",
                onnx::FLOAT,
                &[Dim::Param("batch".into()), Dim::Fixed(h)],
            ),
        ],
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: 8,
        producer_name: "eigenlorax import-hf".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(graph),
        ..Default::default()
    })
}
