//! tract latency of the graph `elx import-hf` builds vs torch's legacy ONNX export of the same
//! model (tools/workload/export_onnx.py), on the same inputs, in one run.
//!
//! `cargo run --release --example bench_import_hf -- MODEL_DIR LEGACY.onnx [--shapes 1x16,1x128,8x64] [--iters 20]`
//!
//! Both graphs get one optimized plan per input shape (the legacy export does not optimize
//! with both axes symbolic); runs alternate between the two so that load on a shared machine
//! hits both alike. Prints the median wall time per run, the ratio imported / legacy, and the
//! max |diff| of last_hidden_state between the two.

use eigenlorax::graph::import_hf;
use eigenlorax::graph::onnx::encode_model;
use std::time::Instant;
use tract_onnx::prelude::*;

fn plan(bytes: &[u8], shape: [usize; 2]) -> TractResult<std::sync::Arc<TypedRunnableModel>> {
    let mut m = tract_onnx::onnx().model_for_read(&mut &bytes[..])?;
    let n = m.input_outlets()?.len();
    for i in 0..n {
        m = m.with_input_fact(i, InferenceFact::dt_shape(i64::datum_type(), shape))?;
    }
    m.into_optimized()?.into_runnable()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!(
            "usage: bench_import_hf MODEL_DIR LEGACY.onnx [--shapes 1x16,1x128,8x64] [--iters 20]"
        );
        std::process::exit(2);
    }
    let mut shapes = vec![[1usize, 16], [1, 128], [8, 64]];
    let mut iters = 20usize;
    let mut i = 2;
    while i + 1 < args.len() {
        match args[i].as_str() {
            "--shapes" => {
                shapes = args[i + 1]
                    .split(',')
                    .map(|s| {
                        let (b, l) = s.split_once('x').expect("BxL");
                        [b.parse().expect("batch"), l.parse().expect("seq")]
                    })
                    .collect()
            }
            "--iters" => iters = args[i + 1].parse().expect("iters"),
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    let t = Instant::now();
    let ours = encode_model(&import_hf(std::path::Path::new(&args[0]))?.model);
    println!("import-hf (in memory): {:.2} s", t.elapsed().as_secs_f64());
    let legacy = std::fs::read(&args[1])?;
    println!("| shape | imported ms | legacy ms | imported / legacy | max abs diff |");
    println!("|---|---|---|---|---|");
    for shape in shapes {
        let [b, l] = shape;
        let n = b * l;
        // Token ids over the vocabulary, the last quarter of every row but the first padded.
        let ids: Vec<i64> = (0..n).map(|k| 1000 + (k as i64 * 7919) % 20000).collect();
        let mask: Vec<i64> = (0..n)
            .map(|k| i64::from(k / l == 0 || k % l < l - l / 4))
            .collect();
        let types = vec![0i64; n];
        let inputs = |names: &[String]| -> TVec<TValue> {
            names
                .iter()
                .map(|nm| {
                    let v = match nm.as_str() {
                        "input_ids" => &ids,
                        "attention_mask" => &mask,
                        _ => &types,
                    };
                    Tensor::from_shape(&shape, v).expect("input").into()
                })
                .collect()
        };
        let po = plan(&ours, shape)?;
        let pl = plan(&legacy, shape)?;
        let names = |p: &TypedRunnableModel| -> Vec<String> {
            p.model()
                .input_outlets()
                .expect("inputs")
                .iter()
                .map(|o| p.model().node(o.node).name.clone())
                .collect()
        };
        let (no, nl) = (names(&po), names(&pl));
        let oo = po.run(inputs(&no))?;
        let ol = pl.run(inputs(&nl))?;
        let a = oo[0].to_plain_array_view::<f32>()?;
        let c = ol[0].to_plain_array_view::<f32>()?;
        let diff = a
            .iter()
            .zip(c.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let (mut to, mut tl) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            let x = inputs(&no);
            let s = Instant::now();
            po.run(x)?;
            to.push(s.elapsed().as_secs_f64() * 1e3);
            let x = inputs(&nl);
            let s = Instant::now();
            pl.run(x)?;
            tl.push(s.elapsed().as_secs_f64() * 1e3);
        }
        let (mo, ml) = (median(to), median(tl));
        println!(
            "| {b}x{l} | {mo:.2} | {ml:.2} | {:.2} | {diff:.1e} |",
            mo / ml
        );
    }
    Ok(())
}
