//! Memory benchmark: peak and steady resident memory of the tract runtime serving a real base
//! model (MiniLM) with one bundle and many task files, against the base model alone. A
//! process's peak RSS cannot be reset, so each measurement is its own process:
//!
//! ```text
//! bench_memory base    --model M.onnx --tokenizer tokenizer.json [--runs N]
//! bench_memory patched --model M.onnx --tokenizer tokenizer.json --bundle B.elxb --tasks DIR [--runs N]
//! bench_memory make-tasks --bundle B.elxb --like T.elxc --out DIR --n N [--seed S]
//! ```
//!
//! `base` builds a plain tract plan of the unpatched ONNX (inputs fixed to the batch's shapes,
//! as the runtime's per-shape plans are) and runs the batch N times. `patched` loads the bundle,
//! the runtime with the same input shapes and every `.elxc` in DIR from disk through the task
//! store, then runs the batch N times cycling through the tasks. Both end by printing
//! VmHWM (peak) and VmRSS (steady) from /proc/self/status. `make-tasks` writes N coefficient
//! files with seeded Gaussian coefficients, per module as large (RMS) as those of `--like`.
//! tools/bench_memory.sh drives the whole measurement.

use eigenlorax::bundle::{Bundle, CoeffFile, Provenance};
use eigenlorax::error::{Error, Result};
use eigenlorax::serve::backend::tract::Runtime;
use eigenlorax::serve::backend::tract::to_tract;
use eigenlorax::serve::input::{ElemType, InputSpec, TextEncoder};
use eigenlorax::serve::store::TaskId;
use eigenlorax::subspace::Coefficients;
use eigenlorax::util::GaussianRng;
use faer::Mat;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tract_onnx::prelude::*;

/// The batch every process runs: 8 sentences, padded to the longest.
const SENTENCES: [&str; 8] = [
    "A quiet, beautifully acted film that stays with you.",
    "The senator spoke about jobs, taxes and the economy for twenty minutes.",
    "Bonjour, je voudrais un café s'il vous plaît.",
    "Tiresomely derivative and hammily acted.",
    "The committee will vote on the amendment next Tuesday morning.",
    "Maryrose",
    "¿Dónde está la biblioteca?",
    "I could not put this book down; the ending surprised everyone in our reading group.",
];

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .cloned()
}

fn need(name: &str) -> Result<String> {
    arg(name).ok_or_else(|| Error::Usage(format!("bench_memory: missing {name}")))
}

fn num(name: &str, default: usize) -> Result<usize> {
    match arg(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| Error::Usage(format!("bench_memory: {name} expects a number, got {v}"))),
    }
}

/// (VmHWM, VmRSS) in KiB.
fn rss_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn tract_fail(e: TractError) -> Error {
    Error::Usage(format!("{e:#}"))
}

/// The tokenized batch for models whose inputs are `names` (token inputs, i64).
fn batch(tokenizer: &Path, names: &[String]) -> Result<Vec<TValue>> {
    let specs: Vec<InputSpec> = names
        .iter()
        .map(|n| InputSpec {
            name: n.clone(),
            elem: ElemType::I64,
            dims: vec![None, None],
            index_limit: None,
        })
        .collect();
    let texts: Vec<String> = SENTENCES.iter().map(|s| s.to_string()).collect();
    let b = TextEncoder::from_file(tokenizer, None)?.encode(&texts, &specs)?;
    to_tract(&b.tensors.iter().collect::<Vec<_>>())
}

fn report(mode: &str, runs: usize, secs: f64, extra: &str) {
    let (hwm, rss) = rss_kib();
    println!(
        "{mode}: peak_rss_kib={hwm} rss_kib={rss} runs={runs} run_ms={:.1} {extra}",
        secs * 1e3 / runs.max(1) as f64
    );
}

fn base(runs: usize) -> Result<()> {
    let model_path = PathBuf::from(need("--model")?);
    let mut model = tract_onnx::onnx()
        .model_for_path(&model_path)
        .map_err(tract_fail)?;
    let names: Vec<String> = model
        .input_outlets()
        .map_err(tract_fail)?
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    let xs = batch(Path::new(&need("--tokenizer")?), &names)?;
    for (k, x) in xs.iter().enumerate() {
        model = model
            .with_input_fact(k, InferenceFact::dt_shape(x.datum_type(), x.shape()))
            .map_err(tract_fail)?;
    }
    let plan = model
        .into_optimized()
        .map_err(tract_fail)?
        .into_runnable()
        .map_err(tract_fail)?;
    plan.run(xs.iter().cloned().collect()).map_err(tract_fail)?;
    let t = Instant::now();
    let mut sum = 0f64;
    for _ in 0..runs {
        let out = plan.run(xs.iter().cloned().collect()).map_err(tract_fail)?;
        sum += out[0]
            .to_plain_array_view::<f32>()
            .map_err(tract_fail)?
            .iter()
            .map(|v| *v as f64)
            .sum::<f64>();
    }
    let secs = t.elapsed().as_secs_f64();
    report(
        "base",
        runs,
        secs,
        &format!("shape={:?} checksum={sum:.3}", xs[0].shape()),
    );
    Ok(())
}

fn patched(runs: usize) -> Result<()> {
    let model_path = PathBuf::from(need("--model")?);
    let bundle = Bundle::read(Path::new(&need("--bundle")?))?;
    let dir = PathBuf::from(need("--tasks")?);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "elxc"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Usage(format!("no .elxc files in {}", dir.display())));
    }
    // Load as a server does (default options: MiniLM's legacy export gets per-shape plans,
    // built on the first run of each shape).
    let rt = Runtime::load(&model_path, &bundle)?;
    let xs = batch(Path::new(&need("--tokenizer")?), rt.input_names())?;
    let (_, rss_loaded) = rss_kib();
    let ids: Vec<TaskId> = files
        .iter()
        .map(|f| rt.load_task(f))
        .collect::<Result<_>>()?;
    let (_, rss_tasks) = rss_kib();
    let mut coeff_f32 = 0usize;
    for &id in &ids {
        coeff_f32 += 4 * rt.task(id)?.values.len();
    }
    // The store holds one copy (tract tensors are filled from it per run, from a pool).
    let coeff_tract = 0usize;
    // The first run builds the plan for this shape: not timed.
    rt.run(&xs, ids[0])?;
    let t = Instant::now();
    let mut sum = 0f64;
    for i in 0..runs {
        let out = rt.run(&xs, ids[i % ids.len()])?;
        sum += out[0]
            .to_plain_array_view::<f32>()
            .map_err(tract_fail)?
            .iter()
            .map(|v| *v as f64)
            .sum::<f64>();
    }
    let secs = t.elapsed().as_secs_f64();
    report(
        "patched",
        runs,
        secs,
        &format!(
            "tasks={} coeff_bytes_f32={coeff_f32} coeff_bytes_tract={coeff_tract} rss_after_load_kib={rss_loaded} rss_after_tasks_kib={rss_tasks} shape={:?} checksum={sum:.3}",
            ids.len(),
            xs[0].shape()
        ),
    );
    Ok(())
}

fn make_tasks() -> Result<()> {
    let bundle = Bundle::read(Path::new(&need("--bundle")?))?;
    let like_path = PathBuf::from(need("--like")?);
    let like = CoeffFile::read_for(&like_path, &bundle.manifest)?;
    let out = PathBuf::from(need("--out")?);
    let n = num("--n", 94)?;
    let seed = num("--seed", 1)? as u64;
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let rms = |m: &Mat<f64>| {
        let n = (m.nrows() * m.ncols()).max(1) as f64;
        let s: f64 = (0..m.nrows())
            .flat_map(|i| (0..m.ncols()).map(move |j| (i, j)))
            .map(|(i, j)| m[(i, j)] * m[(i, j)])
            .sum();
        (s / n).sqrt()
    };
    for t in 0..n {
        let mut g = GaussianRng::new(seed.wrapping_mul(1_000_003).wrapping_add(t as u64));
        let modules = like
            .modules
            .iter()
            .map(|(name, c)| {
                let (sa, sb) = (rms(&c.alpha_a), rms(&c.alpha_b));
                let (r, ka, kb) = (c.alpha_a.nrows(), c.alpha_a.ncols(), c.alpha_b.nrows());
                let alpha_a = Mat::<f64>::from_fn(r, ka, |_, _| g.next_normal() * sa);
                let alpha_b = Mat::<f64>::from_fn(kb, r, |_, _| g.next_normal() * sb);
                (name.clone(), Coefficients { alpha_a, alpha_b })
            })
            .collect();
        let c = CoeffFile {
            subspace_id: bundle.manifest.subspace_id.clone(),
            task: format!("random{t:03}"),
            provenance: Provenance::ZeroShot,
            modules,
            head: None,
        };
        c.write(&out.join(format!("random{t:03}.elxc")))?;
    }
    println!(
        "wrote {n} coefficient files to {} (seed {seed})",
        out.display()
    );
    Ok(())
}

fn main() -> Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let runs = num("--runs", 200)?;
    match mode.as_str() {
        "base" => base(runs),
        "patched" => patched(runs),
        "make-tasks" => make_tasks(),
        _ => Err(Error::Usage(
            "usage: bench_memory base|patched|make-tasks ... (see the file's docs)".into(),
        )),
    }
}
