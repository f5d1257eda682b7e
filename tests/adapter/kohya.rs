//! kohya-ss / diffusers single-file LoRAs: alpha rules, conv flattening, diffusers-PEFT keys,
//! unsupported network types and bad inputs.

use crate::support::adapter_fixtures as fixtures;

use eigenlorax::adapter::{Adapter, AdapterFormat};
use eigenlorax::tensorfile::{self, Dtype, TensorOut};
use fixtures::*;
use std::collections::BTreeMap;

fn scalar(name: &str, v: f64, dtype: Dtype) -> TensorOut {
    TensorOut::from_f64(name, dtype, vec![], &[v])
}

#[test]
fn kohya_linear_and_conv_with_alpha_rules() {
    let tmp = TmpDir::new("kohya");
    let lin = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let conv = "lora_unet_down_blocks_0_resnets_0_conv1";
    let proj = "lora_unet_down_blocks_0_attentions_0_proj_in";
    let te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj";
    let p_lin = Pair::random(8, 20, 20, 1, Dtype::F16);
    // Conv 3x3: down [r, in, 3, 3] flattened to [r, in*9]; up [out, r, 1, 1].
    let p_conv = Pair::random(4, 6 * 9, 10, 2, Dtype::F16);
    let p_proj = Pair::random(4, 12, 12, 3, Dtype::F16);
    let p_te = Pair::random(2, 7, 7, 4, Dtype::F32);
    let file = tmp.join("style.safetensors");
    let mut md = BTreeMap::new();
    md.insert("ss_network_dim".to_string(), "8".to_string());
    md.insert(
        "ss_sd_model_name".to_string(),
        "v1-5-pruned.safetensors".to_string(),
    );
    tensorfile::write(
        &file,
        vec![
            p_lin
                .a
                .tensor(&format!("{lin}.lora_down.weight"), Dtype::F16),
            p_lin.b.tensor(&format!("{lin}.lora_up.weight"), Dtype::F16),
            scalar(&format!("{lin}.alpha"), 4.0, Dtype::F16), // s = 4/8
            p_conv.a.tensor_shaped(
                &format!("{conv}.lora_down.weight"),
                Dtype::F16,
                vec![4, 6, 3, 3],
            ),
            p_conv.b.tensor_shaped(
                &format!("{conv}.lora_up.weight"),
                Dtype::F16,
                vec![10, 4, 1, 1],
            ),
            scalar(&format!("{conv}.alpha"), 0.0, Dtype::F32), // 0 means alpha = r: s = 1
            p_proj
                .a
                .tensor(&format!("{proj}.lora_down.weight"), Dtype::F16),
            p_proj
                .b
                .tensor(&format!("{proj}.lora_up.weight"), Dtype::F16), // no alpha: s = 1
            p_te.a.tensor(&format!("{te}.lora_down.weight"), Dtype::F32),
            p_te.b.tensor(&format!("{te}.lora_up.weight"), Dtype::F32),
            scalar(&format!("{te}.alpha"), 1.0, Dtype::BF16), // s = 1/2
        ],
        md,
    )
    .unwrap();
    let ad = Adapter::open(&file).unwrap();
    assert_eq!(ad.format, AdapterFormat::Kohya);
    assert_eq!(ad.module_names(), {
        let mut v = vec![conv, lin, proj, te];
        v.sort();
        v
    });
    assert!(ad.extras.is_empty());
    assert_eq!(ad.base_model.as_deref(), Some("v1-5-pruned.safetensors"));
    assert_eq!(ad.config["format"], "kohya");
    assert_eq!(ad.config["ss_network_dim"], "8");
    assert_eq!(ad.config["ranks"], serde_json::json!([2, 4, 8]));
    assert_eq!(ad.sha256, eigenlorax::util::sha256_file(&file).unwrap());

    let c = &ad.modules[conv];
    assert_eq!(
        (c.rank, c.in_features, c.out_features, c.conv_kernel),
        (4, 54, 10, Some([3, 3]))
    );
    for (name, pair, s) in [
        (lin, &p_lin, 0.5),
        (conv, &p_conv, 1.0),
        (proj, &p_proj, 1.0),
        (te, &p_te, 0.5),
    ] {
        assert_eq!(ad.modules[name].scale, s, "{name}");
        let m = ad.load_module(name).unwrap();
        let e = rel_err(&loaded_delta(&m), &pair.delta(s));
        assert!(e <= 1e-12, "{name}: {e}");
    }
    // The flattening is row-major over (in, kh, kw): A'[0, 1] is down[0, 0, 0, 1].
    let m = ad.load_module(conv).unwrap();
    assert_eq!(m.a[(0, 1)], p_conv.a.at(0, 1));
    assert_eq!(m.a[(1, 9)], p_conv.a.at(1, 9)); // down[1, 1, 0, 0]
}

#[test]
fn diffusers_peft_keys_in_one_file() {
    let tmp = TmpDir::new("diffusers");
    let p = Pair::random(4, 8, 8, 10, Dtype::F32);
    let q = Pair::random(4, 8, 8, 11, Dtype::F32);
    let dir = tmp.sub("pipe");
    let file = dir.join("pytorch_lora_weights.safetensors");
    tensorfile::write(
        &file,
        vec![
            p.a.tensor(
                "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight",
                Dtype::F32,
            ),
            p.b.tensor(
                "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight",
                Dtype::F32,
            ),
            q.a.tensor(
                "unet.mid_block.attentions.0.to_k.lora.down.weight",
                Dtype::F32,
            ),
            q.b.tensor(
                "unet.mid_block.attentions.0.to_k.lora.up.weight",
                Dtype::F32,
            ),
            scalar("unet.mid_block.attentions.0.to_k.alpha", 2.0, Dtype::F32),
            TensorOut::from_f64("text_encoder.extra", Dtype::F32, vec![2], &[1.0, 2.0]),
        ],
        BTreeMap::new(),
    )
    .unwrap();
    // The folder (no adapter_config.json) resolves to its diffusers file.
    let ad = Adapter::open(&dir).unwrap();
    assert_eq!(ad.path, file);
    assert_eq!(
        ad.module_names(),
        vec![
            "unet.down_blocks.0.attentions.0.proj_in",
            "unet.mid_block.attentions.0.to_k"
        ]
    );
    assert_eq!(ad.extras.len(), 1);
    assert_eq!(ad.extras[0].key, "text_encoder.extra");
    let m = ad
        .load_module("unet.down_blocks.0.attentions.0.proj_in")
        .unwrap();
    assert!(rel_err(&loaded_delta(&m), &p.delta(1.0)) <= 1e-12);
    let m = ad.load_module("unet.mid_block.attentions.0.to_k").unwrap();
    assert!(rel_err(&loaded_delta(&m), &q.delta(0.5)) <= 1e-12);
}

#[test]
fn kohya_bad_inputs() {
    let tmp = TmpDir::new("kohya-bad");
    let p = Pair::random(4, 6, 6, 20, Dtype::F32);
    let m = "lora_unet_x";
    let write = |name: &str, t: Vec<TensorOut>| {
        let f = tmp.join(name);
        tensorfile::write(&f, t, BTreeMap::new()).unwrap();
        f
    };
    // Up without down.
    let f = write(
        "half.safetensors",
        vec![p.b.tensor(&format!("{m}.lora_up.weight"), Dtype::F32)],
    );
    let e = err_msg(Adapter::open(&f));
    assert!(
        e.contains("half.safetensors") && e.contains("lora_unet_x.lora_down.weight"),
        "{e}"
    );
    // Up whose rank disagrees with down.
    let f = write(
        "rank.safetensors",
        vec![
            p.a.tensor(&format!("{m}.lora_down.weight"), Dtype::F32),
            Dense::random(6, 3, 1, Dtype::F32).tensor(&format!("{m}.lora_up.weight"), Dtype::F32),
        ],
    );
    let e = err_msg(Adapter::open(&f));
    assert!(
        e.contains("lora_unet_x.lora_up.weight")
            && e.contains("expected [out, 4]")
            && e.contains("[6, 3]"),
        "{e}"
    );
    // Conv up with a 3x3 kernel is not a LoRA up.
    let f = write(
        "conv.safetensors",
        vec![
            Dense::random(4, 18, 1, Dtype::F32).tensor_shaped(
                &format!("{m}.lora_down.weight"),
                Dtype::F32,
                vec![4, 2, 3, 3],
            ),
            Dense::random(5, 36, 1, Dtype::F32).tensor_shaped(
                &format!("{m}.lora_up.weight"),
                Dtype::F32,
                vec![5, 4, 3, 3],
            ),
        ],
    );
    let e = err_msg(Adapter::open(&f));
    assert!(
        e.contains("lora_up.weight") && e.contains("[out, 4, 1, 1]"),
        "{e}"
    );
    // Non-scalar alpha.
    let f = write(
        "alpha.safetensors",
        vec![
            p.a.tensor(&format!("{m}.lora_down.weight"), Dtype::F32),
            p.b.tensor(&format!("{m}.lora_up.weight"), Dtype::F32),
            TensorOut::from_f64(format!("{m}.alpha"), Dtype::F32, vec![2], &[1.0, 2.0]),
        ],
    );
    let e = err_msg(Adapter::open(&f));
    assert!(
        e.contains("lora_unet_x.alpha") && e.contains("scalar"),
        "{e}"
    );
    // NaN alpha.
    let f = write(
        "nanalpha.safetensors",
        vec![
            p.a.tensor(&format!("{m}.lora_down.weight"), Dtype::F32),
            p.b.tensor(&format!("{m}.lora_up.weight"), Dtype::F32),
            scalar(&format!("{m}.alpha"), f64::NAN, Dtype::F32),
        ],
    );
    let e = err_msg(Adapter::open(&f));
    assert!(e.contains("lora_unet_x.alpha") && e.contains("NaN"), "{e}");
    // LyCORIS LoHa is refused, not half-read.
    let f = write(
        "loha.safetensors",
        vec![TensorOut::from_f64(
            format!("{m}.hada_w1_a"),
            Dtype::F32,
            vec![2, 2],
            &[1.0; 4],
        )],
    );
    let e = err_msg(Adapter::open(&f));
    assert!(e.contains("LoHa") && e.contains("hada_w1_a"), "{e}");
    // No LoRA keys.
    let f = write(
        "plain.safetensors",
        vec![TensorOut::from_f64("w", Dtype::F32, vec![1], &[1.0])],
    );
    let e = err_msg(Adapter::open(&f));
    assert!(
        e.contains("plain.safetensors") && e.contains("found none"),
        "{e}"
    );
    // A torch zip renamed to .safetensors is recognized as a pickle.
    let f = tmp.join("renamed.safetensors");
    std::fs::write(&f, b"PK\x03\x04rest-of-zip").unwrap();
    let e = err_msg(Adapter::open(&f));
    assert!(e.contains("run arbitrary code"), "{e}");
    // Truncated file.
    let good = write(
        "good.safetensors",
        vec![
            p.a.tensor(&format!("{m}.lora_down.weight"), Dtype::F32),
            p.b.tensor(&format!("{m}.lora_up.weight"), Dtype::F32),
        ],
    );
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&good, &bytes[..bytes.len() - 1]).unwrap();
    let e = err_msg(Adapter::open(&good));
    assert!(
        e.contains("good.safetensors") && e.contains("lora_up.weight"),
        "{e}"
    );
}

#[test]
fn header_length_byte_0x80_is_not_taken_for_a_pickle() {
    let tmp = TmpDir::new("kohya-0x80");
    let p = Pair::random(2, 3, 3, 30, Dtype::F32);
    let h = r#"{"m.lora_down.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"m.lora_up.weight":{"dtype":"F32","shape":[3,2],"data_offsets":[24,48]}}"#;
    // Pad the header to 0x280 bytes: the file then starts with 0x80 0x02, like a protocol-2 pickle.
    let header = format!("{h:<640}");
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    assert_eq!(bytes[0], 0x80);
    bytes.extend_from_slice(header.as_bytes());
    for v in p.a.v.iter().chain(&p.b.v) {
        bytes.extend_from_slice(&(*v as f32).to_le_bytes());
    }
    let f = tmp.join("x.safetensors");
    std::fs::write(&f, bytes).unwrap();
    let ad = Adapter::open(&f).unwrap();
    let m = ad.load_module("m").unwrap();
    assert!(rel_err(&loaded_delta(&m), &p.delta(1.0)) <= 1e-12);
}
