//! Extraction speed and peak memory on synthetic adapters (not a test: numbers, not asserts).
//!
//! ```text
//! cargo run --release --example bench_extract -- --n 10,50,200
//! cargo run --release --example bench_extract -- --n 200 --write /tmp/elx-synth   # PEFT folders for numpy
//! cargo run --release --example bench_extract -- --n 10,50 --from /tmp/elx-synth   # through the file reader
//! ```
//!
//! Each N runs in a fresh child process (this executable with `--child N`), so the peak
//! resident set (VmHWM from /proc/self/status) of one N does not leak into the next.
//!
//! # Synthetic adapters (deterministic)
//!
//! 24 modules `model.layers.{l}.self_attn.{q,k,v,o}_proj` (l = 0..5), r = 16, in = out = 1024.
//! Module m (0..24) has a latent basis from `GaussianRng::new(seed + 1_000_000·(m+1))`:
//! U_A [32 x in] then U_B [out x 32], standard normals drawn row-major, each divided by √in
//! (resp. √out). Adapter t (0..N) of module m draws from `GaussianRng::new(seed +
//! 1_000_000·(m+1) + t + 1)`, in this order and row-major: C [r x 32], noise_A [r x in],
//! D [32 x r], noise_B [out x r]; then A = C·U_A + 0.3·noise_A/√in and B = U_B·D +
//! 0.3·noise_B/√out, rounded to f32 (the values the PEFT files hold, lora_alpha = r so s = 1).
//! Adapters for a smaller N are a prefix of those for a larger one.
//!
//! In memory, each module's adapters are generated one at a time and streamed into
//! `extract_module_stream` (the same path `extract` takes when reading files), with up to
//! `--threads` modules in flight. Times are reported as wall seconds and as process CPU seconds
//! (/proc/self/stat, all threads): on a shared machine the CPU figure is the meaningful one.
//! The generator's own CPU cost is measured by a generation-only pass in the same child before
//! the timed run, and subtracted to give "extract CPU s".

use eigenlorax::adapter::{Adapter, LoraModule};
use eigenlorax::error::Result;
use eigenlorax::linalg;
use eigenlorax::subspace::{self, ExtractOptions, KRule, ModuleSubspace, Route};
use eigenlorax::util::{GaussianRng, write_atomic};
use faer::Mat;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

const R: usize = 16;
const DIM_IN: usize = 1024;
const DIM_OUT: usize = 1024;
const LATENT: usize = 32;
const N_MODULES: usize = 24;

fn module_name(m: usize) -> String {
    let proj = ["q", "k", "v", "o"][m % 4];
    format!("model.layers.{}.self_attn.{proj}_proj", m / 4)
}

fn gaussian(rng: &mut GaussianRng, rows: usize, cols: usize, scale: f64) -> Mat<f64> {
    let v: Vec<f64> = (0..rows * cols)
        .map(|_| rng.next_normal() * scale)
        .collect();
    Mat::from_fn(rows, cols, |i, j| v[i * cols + j])
}

struct Latent {
    u_a: Mat<f64>,
    u_b: Mat<f64>,
}

fn latent(seed: u64, m: usize) -> Latent {
    let mut rng = GaussianRng::new(seed.wrapping_add(1_000_000 * (m as u64 + 1)));
    let u_a = gaussian(&mut rng, LATENT, DIM_IN, 1.0 / (DIM_IN as f64).sqrt());
    let u_b = gaussian(&mut rng, DIM_OUT, LATENT, 1.0 / (DIM_OUT as f64).sqrt());
    Latent { u_a, u_b }
}

fn adapter_module(seed: u64, m: usize, t: usize, lat: &Latent) -> LoraModule {
    let mut rng = GaussianRng::new(seed.wrapping_add(1_000_000 * (m as u64 + 1) + t as u64 + 1));
    let c = gaussian(&mut rng, R, LATENT, 1.0);
    let na = gaussian(&mut rng, R, DIM_IN, 0.3 / (DIM_IN as f64).sqrt());
    let d = gaussian(&mut rng, LATENT, R, 1.0);
    let nb = gaussian(&mut rng, DIM_OUT, R, 0.3 / (DIM_OUT as f64).sqrt());
    let ca = linalg::mul(c.as_ref(), lat.u_a.as_ref());
    let bd = linalg::mul(lat.u_b.as_ref(), d.as_ref());
    let f32r = |x: f64| x as f32 as f64;
    LoraModule {
        a: Mat::from_fn(R, DIM_IN, |i, j| f32r(ca[(i, j)] + na[(i, j)])),
        b: Mat::from_fn(DIM_OUT, R, |i, j| f32r(bd[(i, j)] + nb[(i, j)])),
    }
}

struct Args {
    ns: Vec<usize>,
    threads: usize,
    options: ExtractOptions,
    seed: u64,
    write: Option<PathBuf>,
    from: Option<PathBuf>,
    child: Option<usize>,
    route: Route,
}

fn parse_k(s: &str) -> std::result::Result<KRule, String> {
    if s == "gd" {
        return Ok(KRule::GavishDonoho);
    }
    if let Some(v) = s.strip_prefix("fixed:") {
        return v.parse().map(KRule::Fixed).map_err(|e| format!("{s}: {e}"));
    }
    if let Some(v) = s.strip_prefix("energy:") {
        return v
            .parse()
            .map(KRule::Energy)
            .map_err(|e| format!("{s}: {e}"));
    }
    Err(format!("--k {s}: expected fixed:K, energy:T or gd"))
}

fn parse_args(raw: &[String]) -> std::result::Result<Args, String> {
    let mut a = Args {
        ns: vec![10, 50, 200],
        threads: 2,
        options: ExtractOptions::default(),
        seed: 0,
        write: None,
        from: None,
        child: None,
        route: Route::Auto,
    };
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--n" => {
                a.ns = val()?
                    .split(',')
                    .map(|x| {
                        x.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--n {x}: {e}"))
                    })
                    .collect::<std::result::Result<_, _>>()?
            }
            "--threads" => a.threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--seed" => a.seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--k" => {
                let k = parse_k(&val()?)?;
                a.options.k_rule_a = k;
                a.options.k_rule_b = k;
            }
            "--no-canonicalize" => a.options.canonicalize = false,
            "--center" => a.options.center = true,
            "--pseudo" => {
                a.options.pseudo = val()?.parse().map_err(|e| format!("--pseudo: {e}"))?
            }
            "--route" => {
                a.route = match val()?.as_str() {
                    "auto" => Route::Auto,
                    "svd" => Route::Svd,
                    "gram" => Route::Gram,
                    other => return Err(format!("--route {other}: expected auto, svd or gram")),
                }
            }
            "--write" => a.write = Some(PathBuf::from(val()?)),
            "--from" => a.from = Some(PathBuf::from(val()?)),
            "--child" => a.child = Some(val()?.parse().map_err(|e| format!("--child: {e}"))?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn proc_status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// In memory: modules on `threads` workers, adapters generated and streamed one at a time.
fn run_in_memory(a: &Args, n: usize) -> Result<BTreeMap<String, ModuleSubspace>> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(BTreeMap::new());
    let first_err = Mutex::new(None);
    let work = || {
        loop {
            let m = next.fetch_add(1, Ordering::SeqCst);
            if m >= N_MODULES {
                break;
            }
            let lat = latent(a.seed, m);
            let stream = (0..n).map(|t| Ok(adapter_module(a.seed, m, t, &lat)));
            let res = subspace::extract_module_stream(DIM_IN, DIM_OUT, &a.options, a.route, stream);
            match res {
                Ok(s) => {
                    if let Ok(mut r) = results.lock() {
                        r.insert(module_name(m), s);
                    }
                }
                Err(e) => {
                    if let Ok(mut f) = first_err.lock() {
                        f.get_or_insert(e);
                    }
                    break;
                }
            }
        }
    };
    std::thread::scope(|sc| {
        for _ in 0..a.threads.max(1) {
            sc.spawn(work);
        }
    });
    if let Some(e) = first_err.into_inner().ok().flatten() {
        return Err(e);
    }
    Ok(results.into_inner().unwrap_or_default())
}

/// CPU seconds (user + system, all threads, exited ones included) of this process so far, from
/// /proc/self/stat fields 14 and 15 (clock ticks of 1/100 s on Linux).
fn process_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesized command name (which may contain spaces).
            let rest = s.get(s.rfind(')')? + 2..)?.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // rest starts at field 3 (state): utime is field 14 → index 11, stime index 12.
            let ut: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((ut + st) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// CPU seconds the generator alone takes for N adapters (single thread, nothing kept).
fn generation_cpu_s(a: &Args, n: usize) -> f64 {
    let c0 = process_cpu_s();
    let mut sink = 0.0;
    for m in 0..N_MODULES {
        let lat = latent(a.seed, m);
        for t in 0..n {
            let md = adapter_module(a.seed, m, t, &lat);
            sink += md.a[(0, 0)] + md.b[(0, 0)];
        }
    }
    std::hint::black_box(sink);
    process_cpu_s() - c0
}

fn child(a: &Args, n: usize) -> Result<()> {
    let rss0 = proc_status_kb("VmRSS:");
    let gen_cpu = if a.from.is_none() {
        generation_cpu_s(a, n)
    } else {
        0.0
    };
    let cpu0 = process_cpu_s();
    let t0 = Instant::now();
    let modules = match &a.from {
        Some(dir) => {
            let adapters: Vec<Adapter> = (0..n)
                .map(|t| Adapter::open(&dir.join(format!("adapter_{t:04}"))))
                .collect::<Result<_>>()?;
            let sub = subspace::extract(&adapters, &a.options, &|_, _, _| {})?;
            sub.modules
        }
        None => run_in_memory(a, n)?,
    };
    let wall = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_s() - cpu0;
    let extract_cpu = cpu - gen_cpu;
    let hwm = proc_status_kb("VmHWM:");
    let (mut ka, mut kb, mut ea) = (0usize, 0usize, 0.0f64);
    for s in modules.values() {
        ka += s.a.k_total();
        kb += s.b.k_total();
        ea += s.a.energy_kept;
    }
    let nm = modules.len().max(1);
    println!(
        "RESULT {n} {wall:.2} {cpu:.2} {gen_cpu:.2} {extract_cpu:.2} {hwm} {rss0} {:.1} {:.1} {:.3} {}",
        ka as f64 / nm as f64,
        kb as f64 / nm as f64,
        ea / nm as f64,
        modules.len()
    );
    Ok(())
}

fn write_peft(dir: &Path, seed: u64, n: usize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| eigenlorax::Error::io(dir, e))?;
    let lats: Vec<Latent> = (0..N_MODULES).map(|m| latent(seed, m)).collect();
    let proj: Vec<String> = ["q_proj", "k_proj", "v_proj", "o_proj"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for t in 0..n {
        let ad = dir.join(format!("adapter_{t:04}"));
        std::fs::create_dir_all(&ad).map_err(|e| eigenlorax::Error::io(&ad, e))?;
        let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (m, lat) in lats.iter().enumerate() {
            let md = adapter_module(seed, m, t, lat);
            let name = module_name(m);
            let row_major = |x: &Mat<f64>| -> Vec<u8> {
                let mut out = Vec::with_capacity(x.nrows() * x.ncols() * 4);
                for i in 0..x.nrows() {
                    for j in 0..x.ncols() {
                        out.extend_from_slice(&(x[(i, j)] as f32).to_le_bytes());
                    }
                }
                out
            };
            bufs.push((
                format!("base_model.model.{name}.lora_A.weight"),
                vec![R, DIM_IN],
                row_major(&md.a),
            ));
            bufs.push((
                format!("base_model.model.{name}.lora_B.weight"),
                vec![DIM_OUT, R],
                row_major(&md.b),
            ));
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bufs
            .iter()
            .map(|(k, shape, data)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| eigenlorax::Error::Numeric(format!("{k}: {e}")))
            })
            .collect::<Result<_>>()?;
        let bytes = safetensors::tensor::serialize(views, None)
            .map_err(|e| eigenlorax::Error::Numeric(format!("serialize: {e}")))?;
        write_atomic(&ad.join("adapter_model.safetensors"), &bytes)?;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "r": R,
            "lora_alpha": R,
            "target_modules": proj,
            "base_model_name_or_path": "synthetic-1024",
            "fan_in_fan_out": false,
            "bias": "none",
            "use_rslora": false,
            "task_type": null
        });
        let text = serde_json::to_string_pretty(&config)
            .map_err(|e| eigenlorax::Error::Numeric(e.to_string()))?;
        write_atomic(&ad.join("adapter_config.json"), text.as_bytes())?;
    }
    Ok(())
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse_args(&raw) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_extract: {e}");
            std::process::exit(2);
        }
    };
    if let Some(n) = a.child {
        if let Err(e) = child(&a, n) {
            eprintln!("bench_extract (N={n}): {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(dir) = &a.write {
        let n = a.ns.iter().copied().max().unwrap_or(0);
        let t0 = Instant::now();
        if let Err(e) = write_peft(dir, a.seed, n) {
            eprintln!("bench_extract: writing PEFT folders: {e}");
            std::process::exit(1);
        }
        println!(
            "wrote {n} PEFT adapters to {} in {:.1} s",
            dir.display(),
            t0.elapsed().as_secs_f64()
        );
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bench_extract: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "synthetic adapters: {N_MODULES} modules, r={R}, in={DIM_IN}, out={DIM_OUT}; threads={}, route={:?}, source={}",
        a.threads,
        a.route,
        a.from
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "in-memory".into())
    );
    println!(
        "options: {}",
        serde_json::to_string(&a.options).unwrap_or_default()
    );
    println!(
        "{:>6} {:>8} {:>8} {:>10} {:>14} {:>12} {:>9} {:>6} {:>6} {:>9}",
        "N",
        "wall s",
        "CPU s",
        "gen CPU s",
        "extract CPU s",
        "peak RSS MB",
        "start MB",
        "K_A",
        "K_B",
        "energy A"
    );
    for &n in &a.ns {
        let mut cmd = Command::new(&exe);
        cmd.args(&raw).arg("--child").arg(n.to_string());
        match cmd.output() {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                let line = text.lines().find(|l| l.starts_with("RESULT "));
                match line {
                    Some(l) => {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        let get = |i: usize| f.get(i).copied().unwrap_or("?");
                        let mb = |i: usize| {
                            get(i)
                                .parse::<f64>()
                                .map(|kb| format!("{:.1}", kb / 1024.0))
                                .unwrap_or("?".into())
                        };
                        println!(
                            "{:>6} {:>8} {:>8} {:>10} {:>14} {:>12} {:>9} {:>6} {:>6} {:>9}",
                            get(1),
                            get(2),
                            get(3),
                            get(4),
                            get(5),
                            mb(6),
                            mb(7),
                            get(8),
                            get(9),
                            get(10)
                        );
                    }
                    None => println!(
                        "{n:>6} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                            .lines()
                            .last()
                            .unwrap_or("no output")
                    ),
                }
            }
            Err(e) => println!("{n:>6} failed to start: {e}"),
        }
    }
}
