//! The decoder on ONNX Runtime (feature `ort`): the same logits as tract (≤ 1e-4) for a
//! mixed-task batch with caches of different lengths, and the same greedy tokens.

use super::support::*;
use eigenlorax::serve::generate::{GenerateOptions, Generator, Request};
use eigenlorax::serve::{Backend, ExecutionProvider};

#[test]
fn onnx_runtime_gives_tracts_logits_and_tokens_on_a_mixed_task_batch() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| !p.is_empty()),
        "ORT_DYLIB_PATH is not set: run tools/install_onnxruntime.sh and export it"
    );
    let dir = std::env::temp_dir().join(format!("elx-dec-ort-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let f = fixture(&dir, true);
    let t = Generator::load(&f.model, &f.bundle, Backend::Tract).expect("tract");
    // Q4_0 weights are tract's; ONNX Runtime refuses them by name, before any work.
    let Err(e) = Generator::load_with(
        &f.model,
        &f.bundle,
        Backend::Ort(ExecutionProvider::Cpu),
        eigenlorax::serve::backend::WeightFormat::Q4_0,
    ) else {
        panic!("q4_0 on ort is refused")
    };
    let e = e.to_string();
    assert!(e.contains("--weights f32") && e.contains("q4_0"), "{e}");
    let o =
        Generator::load(&f.model, &f.bundle, Backend::Ort(ExecutionProvider::Cpu)).expect("ort");
    let cs: Vec<_> = (0..3)
        .map(|i| coeffs(&f.bundle, 70 + i, &format!("t{i}"), 0.6))
        .collect();
    let ids_t: Vec<_> = cs
        .iter()
        .map(|c| t.engine().insert_task(c).expect("task"))
        .collect();
    let ids_o: Vec<_> = cs
        .iter()
        .map(|c| o.engine().insert_task(c).expect("task"))
        .collect();
    let prompts: [&[u32]; 3] = [&[5, 6, 7], &[1], &[40, 41, 42, 43, 44, 45]];
    let mut st: Vec<_> = ids_t.iter().map(|&i| t.sequence(i).expect("seq")).collect();
    let mut so: Vec<_> = ids_o.iter().map(|&i| o.sequence(i).expect("seq")).collect();
    for step in 0..4 {
        let toks: Vec<Vec<u32>> = if step == 0 {
            prompts.iter().map(|p| p.to_vec()).collect()
        } else {
            (0..3).map(|r| vec![(7 * step + r) as u32 % 61]).collect()
        };
        let refs: Vec<&[u32]> = toks.iter().map(|v| &v[..]).collect();
        t.feed(&mut st.iter_mut().collect::<Vec<_>>(), &refs)
            .expect("tract feed");
        o.feed(&mut so.iter_mut().collect::<Vec<_>>(), &refs)
            .expect("ort feed");
        for (a, b) in st.iter().zip(&so) {
            let d = max_abs_diff(a.logits(), b.logits());
            assert!(d < 1e-4, "step {step}: {d}");
        }
    }
    let reqs: Vec<Request> = (0..3)
        .map(|i| Request {
            task: ids_t[i],
            prompt: prompts[i].to_vec(),
            options: GenerateOptions {
                max_tokens: 8,
                ..Default::default()
            },
        })
        .collect();
    let a = t.generate_batch(&reqs).expect("tract batch");
    let reqs_o: Vec<Request> = reqs
        .iter()
        .zip(&ids_o)
        .map(|(r, &task)| Request { task, ..r.clone() })
        .collect();
    let b = o.generate_batch(&reqs_o).expect("ort batch");
    for (x, y) in a.iter().zip(&b) {
        let tx: Vec<u32> = x.tokens.iter().map(|t| t.id).collect();
        let ty: Vec<u32> = y.tokens.iter().map(|t| t.id).collect();
        assert_eq!(tx, ty);
    }
}

#[test]
fn onnx_runtime_gives_tracts_next_token_loss_and_gradients() {
    let dir = std::env::temp_dir().join(format!("elx-dec-ort-grad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let f = fixture(&dir, true);
    let t = super::train::gradients_on(&f, Backend::Tract);
    let o = super::train::gradients_on(&f, Backend::Ort(ExecutionProvider::Cpu));
    assert!(
        ((t.loss - o.loss) / t.loss).abs() < 1e-5,
        "{} vs {}",
        t.loss,
        o.loss
    );
    let to: Vec<f64> = t.params.iter().map(|&x| f64::from(x)).collect();
    let oo: Vec<f64> = o.params.iter().map(|&x| f64::from(x)).collect();
    let e = super::fd_support::rel(&oo, &to);
    assert!(
        e < 1e-4,
        "ONNX Runtime's gradients differ from tract's by {e:.2e}"
    );
}
