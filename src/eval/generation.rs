//! Scores of a generation task on the device: greedy answers to the prompts, Rouge-L and exact
//! match against the reference answers, and the per-token NLL of the references (the end-of-turn
//! token included). The definitions are the host scripts' (`tools/workload/train_wordnet_gen.py`),
//! so device and host rows compare: answers are compared as lowercased ASCII-alphanumeric
//! words; Rouge-L is the F1 of their longest common subsequence (as `rouge_score` without
//! stemming); the NLL is the mean over all reference tokens of the set.

use crate::error::{Error, Result};
use crate::finetune::lm::read_prompt_answer_texts;
use crate::serve::generate::text::TextGenerator;
use crate::serve::generate::{Finish, GenerateOptions, Request};
use crate::serve::input::chat::ChatMessage;
use crate::serve::store::TaskId;
use std::path::Path;

/// The words an answer is compared by: runs of `[a-z0-9]` in its lowercased text.
pub fn answer_words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Length of the longest common subsequence of `a` and `b`.
fn lcs(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Rouge-L F1 of `prediction` against `reference` (0 when they share no word).
pub fn rouge_l(prediction: &str, reference: &str) -> f64 {
    let (p, r) = (answer_words(prediction), answer_words(reference));
    let n = lcs(&p, &r);
    if n == 0 {
        return 0.0;
    }
    let (precision, recall) = (n as f64 / p.len() as f64, n as f64 / r.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

/// 1 when `prediction` and `reference` have the same words, else 0.
pub fn exact_match(prediction: &str, reference: &str) -> f64 {
    f64::from(u8::from(
        answer_words(prediction) == answer_words(reference),
    ))
}

/// One scored pair.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredPair {
    /// Line of the data file.
    pub line: usize,
    /// The greedy answer (special tokens left out, trimmed).
    pub prediction: String,
    /// The reference answer.
    pub reference: String,
    /// Rouge-L F1.
    pub rouge_l: f64,
    /// Exact match (0 or 1).
    pub exact_match: f64,
    /// Summed NLL of the reference's tokens (the end-of-turn token included).
    pub nll_sum: f64,
    /// Reference tokens.
    pub reference_tokens: usize,
    /// Why generation stopped.
    pub finish: Finish,
}

/// The scores of a set of pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationScores {
    /// Each pair, in file order.
    pub pairs: Vec<ScoredPair>,
    /// Mean Rouge-L F1.
    pub rouge_l: f64,
    /// Mean exact match.
    pub exact_match: f64,
    /// NLL per reference token over the whole set.
    pub nll: f64,
}

/// How [`score_file`] generates.
#[derive(Clone, Debug)]
pub struct ScoreOptions {
    /// Most new tokens of an answer.
    pub max_tokens: usize,
    /// Wrap each prompt as a user turn in the model's chat template.
    pub chat: bool,
    /// Prompts whose answers are decoded together (1: one after the other).
    pub batch: usize,
}

/// Scores `task` on the prompt/answer JSONL file `data` (the format of `elx finetune
/// --objective lm`): greedy answers, Rouge-L, exact match and the references' NLL.
/// `on_pair` sees each pair as it is scored.
pub fn score_file(
    generator: &TextGenerator,
    task: TaskId,
    data: &Path,
    options: &ScoreOptions,
    on_pair: &mut dyn FnMut(&ScoredPair) -> Result<()>,
) -> Result<GenerationScores> {
    let rows = read_prompt_answer_texts(data)?;
    score_pairs(generator, task, &rows, data, options, on_pair)
}

/// [`score_file`] on pairs already read: (line, prompt, reference) texts from the file
/// `source`, which errors name.
pub fn score_pairs(
    generator: &TextGenerator,
    task: TaskId,
    rows: &[(usize, String, String)],
    source: &Path,
    options: &ScoreOptions,
    on_pair: &mut dyn FnMut(&ScoredPair) -> Result<()>,
) -> Result<GenerationScores> {
    if rows.is_empty() {
        return Err(Error::bad_file(
            source,
            "expected at least one prompt/answer pair",
        ));
    }
    let tok = generator.tokenizer();
    let end = generator.files().end_of_turn(tok)?;
    let greedy = GenerateOptions {
        max_tokens: options.max_tokens,
        stop_tokens: generator.stop_tokens().to_vec(),
        ..GenerateOptions::default()
    };
    let mut pairs = Vec::with_capacity(rows.len());
    // Greedy answers a batch at a time: every row of a batch decodes in one engine call (a
    // row's tokens are those it gets alone, `Generator::generate_batch`).
    for chunk in rows.chunks(options.batch.max(1)) {
        let mut requests = Vec::with_capacity(chunk.len());
        for (line, prompt, _) in chunk {
            let at = |e: Error| Error::bad_file(source, format!("line {line}: {e}"));
            let prompt = if options.chat {
                generator.chat_prompt(&[ChatMessage::new("user", prompt.as_str())])?
            } else {
                prompt.clone()
            };
            let ids = tok.encode(&prompt, true).map_err(at)?;
            if ids.is_empty() {
                return Err(at(Error::Usage("the prompt has no tokens".into())));
            }
            requests.push(Request {
                task,
                prompt: ids,
                options: greedy.clone(),
            });
        }
        let generated = generator.generator().generate_batch(&requests)?;
        // The references' NLL, tokenized as training tokenizes them, the batch in one call.
        let mut answers = Vec::with_capacity(chunk.len());
        for ((line, _, reference), request) in chunk.iter().zip(&requests) {
            let at = |e: Error| Error::bad_file(source, format!("line {line}: {e}"));
            let mut answer = tok.encode(reference, false).map_err(at)?;
            answer.push(end);
            let full: Vec<u32> = request.prompt.iter().chain(&answer).copied().collect();
            answers.push((answer.len(), full));
        }
        let rows: Vec<_> = answers.iter().map(|(_, full)| (task, &full[..])).collect();
        let nlls = generator.generator().token_nll_batch(&rows)?;
        for (((line, _, reference), out), ((answer_len, _), nll)) in
            chunk.iter().zip(generated).zip(answers.iter().zip(nlls))
        {
            let at = |e: Error| Error::bad_file(source, format!("line {line}: {e}"));
            let ids: Vec<u32> = out.tokens.iter().map(|t| t.id).collect();
            let prediction = tok.decode_text(&ids).map_err(at)?.trim().to_string();
            let answer_len = *answer_len;
            let pair = ScoredPair {
                line: *line,
                rouge_l: rouge_l(&prediction, reference),
                exact_match: exact_match(&prediction, reference),
                nll_sum: nll[nll.len() - answer_len..].iter().sum(),
                reference_tokens: answer_len,
                prediction,
                reference: reference.clone(),
                finish: out.finish,
            };
            on_pair(&pair)?;
            pairs.push(pair);
        }
    }
    let n = pairs.len() as f64;
    let tokens: usize = pairs.iter().map(|p| p.reference_tokens).sum();
    Ok(GenerationScores {
        rouge_l: pairs.iter().map(|p| p.rouge_l).sum::<f64>() / n,
        exact_match: pairs.iter().map(|p| p.exact_match).sum::<f64>() / n,
        nll: pairs.iter().map(|p| p.nll_sum).sum::<f64>() / tokens as f64,
        pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_l_and_exact_match_by_hand() {
        assert_eq!(answer_words("The Cat, sat!"), ["the", "cat", "sat"]);
        assert_eq!(rouge_l("the cat sat", "the cat sat"), 1.0);
        // LCS "cat sat" = 2; precision 2/4, recall 2/3: F1 = 4/7.
        assert!((rouge_l("a cat will sat", "the cat sat") - 4.0 / 7.0).abs() < 1e-15);
        assert_eq!(rouge_l("", "x"), 0.0);
        assert_eq!(rouge_l("dog", "cat"), 0.0);
        assert_eq!(exact_match("Uninsured.", "uninsured"), 1.0);
        assert_eq!(exact_match("not insured", "uninsured"), 0.0);
    }
}
