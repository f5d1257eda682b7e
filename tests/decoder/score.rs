//! `elx score` on the tiny Llama: Rouge-L and exact match equal the host scripts' definitions
//! (`tools/rouge_reference.py` runs them on the same pairs), each prediction is what `elx
//! generate` prints for the prompt, and the NLL is the inference path's on the reference
//! tokens.

use super::lm_finetune::{decoder_folder, elx, write_pairs};
use eigenlorax::eval::generation::{answer_words, exact_match, rouge_l};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// (rouge_l, exact) of each pair by `tools/rouge_reference.py`.
fn python_scores(pairs: &[(String, String)]) -> Vec<(f64, f64)> {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/rouge_reference.py");
    let mut child = Command::new("python3")
        .arg(tool)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let input = serde_json::to_string(pairs).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("reference");
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("scores")
}

#[test]
fn rouge_l_and_exact_match_equal_the_host_definitions() {
    let texts = [
        "the cat sat",
        "The Cat, sat!",
        "a cat will sat",
        "",
        "uninsured",
        "Not insured.",
        "Éclair café İstanbul",
        "clair caf i stanbul",
        "x-ray 3D vision",
        "x ray 3d",
        "ab ab ab",
        "ab",
        "one two three four five",
        "five four three two one",
        "  ",
        "<|im_start|>assistant",
    ];
    let pairs: Vec<(String, String)> = texts
        .iter()
        .flat_map(|a| texts.iter().map(move |b| (a.to_string(), b.to_string())))
        .collect();
    let want = python_scores(&pairs);
    for ((p, r), (rl, em)) in pairs.iter().zip(&want) {
        assert_eq!(
            rouge_l(p, r),
            *rl,
            "rouge_l({p:?}, {r:?}); words {:?}",
            answer_words(p)
        );
        assert_eq!(exact_match(p, r), *em, "exact({p:?}, {r:?})");
    }
}

#[test]
fn elx_score_predictions_are_generate_outputs_and_scores_are_the_references() {
    let (model, bundle) = decoder_folder("score");
    let dir = model.parent().unwrap().to_path_buf();
    let data = dir.join("test.jsonl");
    write_pairs(&data, 4, 0);
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let (ok, out, err) = elx(&[
        "score",
        "--model",
        &s(&dir),
        "--bundle",
        &s(&bundle),
        "--data",
        &s(&data),
        "--max-tokens",
        "6",
        "--json",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 5, "{out}");
    let rows = eigenlorax::finetune::lm::read_prompt_answer_texts(&data).expect("data");
    let mut pairs = Vec::new();
    for (row, line) in rows.iter().zip(&lines) {
        let pred = line["prediction"].as_str().unwrap().to_string();
        // What `elx generate --json` streams, special tokens left out (the plain output
        // escapes control characters for the terminal).
        let (ok, printed, err) = elx(&[
            "generate",
            "--model",
            &s(&dir),
            "--bundle",
            &s(&bundle),
            "--prompt",
            &row.1,
            "--max-tokens",
            "6",
            "--json",
        ]);
        assert!(ok, "{err}");
        let text: String = printed
            .lines()
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json");
                v["text"].as_str().map(str::to_string)
            })
            .collect();
        let text = text
            .replace("<|endoftext|>", "")
            .replace("<|im_start|>", "");
        assert_eq!(pred, text.trim(), "line {}", row.0);
        pairs.push((pred, row.2.clone()));
    }
    let want = python_scores(&pairs);
    for (line, (rl, em)) in lines.iter().zip(&want) {
        assert_eq!(line["rouge_l"].as_f64().unwrap(), *rl);
        assert_eq!(line["exact_match"].as_f64().unwrap(), *em);
    }
    // The set's NLL is the token-weighted mean of the pairs'.
    let (mut sum, mut n) = (0.0, 0.0);
    for l in &lines[..4] {
        let t = l["reference_tokens"].as_f64().unwrap();
        sum += l["nll"].as_f64().unwrap() * t;
        n += t;
    }
    let set = lines[4]["nll"].as_f64().unwrap();
    assert!(
        (set - sum / n).abs() < 1e-9 && set > 0.0,
        "{set} vs {}",
        sum / n
    );
}
