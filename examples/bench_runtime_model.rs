//! Runtime benchmark on a real base ONNX model and its PEFT adapters (the MiniLM workload:
//! all-MiniLM-L6-v2 exported by torch's legacy exporter, six r=8 adapters on query+value).
//!
//! ```text
//! cargo run --release [--features ort] --example bench_runtime_model -- \
//!     --model BASE.onnx [--adapters models/minilm/adapters] [--task sentiment] \
//!     [--ks 8,16,32,64] [--shapes 1x32,1x128,8x32,8x128] [--iters 15]
//! ```
//!
//! Everything is built in this process from the adapters: one bundle per K (the principal
//! directions of the six adapters, capped at their N·r; pseudo-PCs make up a K above it),
//! bound to the base model by the bias-anchored rule, and the task's projected coefficients.
//! All latencies of one input shape are measured interleaved (one run of every variant per
//! round, rotating the order) and reported as medians and as ratios to the base model.
//!
//! * base: the unpatched base graph on tract, plan for the fixed input shape.
//! * patched K: `Runtime::run` with the task (the runtime's own per-shape plan).
//! * LoRA branch: the base graph plus, per adapted module, `Y += (X·A'ᵀ)·B'ᵀ` with the task
//!   adapter's own A' = √s·A [r x in] and B' = √s·B [out x r] as initializers (rank r, same
//!   modules, same engine). Checked against the base graph with B'A' merged into its weights.
//! * mixed: `Runtime::run_mixed` with a different task per row (batch > 1 only).
//! * with `--features ort`: the base graph and the patched graph (K = the largest of `--ks`
//!   that is at most 32) on ONNX Runtime's CPU provider, intra-op and inter-op threads = 1,
//!   sequential execution, like tract (single-threaded).
//!
//! Resident bytes are counted by a global allocator (live heap bytes).

use eigenlorax::adapter::{Adapter, LoraModule};
use eigenlorax::bundle::{Bundle, CoeffFile, Provenance, StorageDtype, WeightLayout};
use eigenlorax::graph::onnx::{self, node, tensor_f32};
#[cfg(feature = "ort")]
use eigenlorax::graph::patch;
use eigenlorax::graph::pb::ModelProto;
use eigenlorax::graph::{PatchForm, bind_file, patch_with};
use eigenlorax::serve::TaskId;
use eigenlorax::serve::backend::tract::Runtime;
use eigenlorax::subspace::{ExtractOptions, KRule, extract, project};
use eigenlorax::util::GaussianRng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;

/// Live heap bytes, for the resident-memory figures.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn terr(e: TractError) -> Box<dyn std::error::Error> {
    format!("{e:#}").into()
}

struct Args {
    model: PathBuf,
    adapters: PathBuf,
    task: String,
    ks: Vec<usize>,
    shapes: Vec<(usize, usize)>,
    iters: usize,
}

fn args() -> R<Args> {
    let a: Vec<String> = std::env::args().collect();
    let get = |n: &str| {
        a.iter()
            .position(|x| x == n)
            .and_then(|i| a.get(i + 1))
            .cloned()
    };
    let list = |s: String| -> R<Vec<usize>> {
        s.split(',')
            .map(|v| v.trim().parse::<usize>().map_err(|e| e.to_string().into()))
            .collect()
    };
    let shapes = get("--shapes")
        .unwrap_or_else(|| "1x32,1x128,8x32,8x128".into())
        .split(',')
        .map(|s| -> R<(usize, usize)> {
            let (b, q) = s.split_once('x').ok_or("--shapes: expected BxS,...")?;
            Ok((b.parse()?, q.parse()?))
        })
        .collect::<R<_>>()?;
    Ok(Args {
        model: get("--model")
            .ok_or("usage: bench_runtime_model --model BASE.onnx [--adapters DIR] ...")?
            .into(),
        adapters: get("--adapters")
            .unwrap_or_else(|| "models/minilm/adapters".into())
            .into(),
        task: get("--task").unwrap_or_else(|| "sentiment".into()),
        ks: list(get("--ks").unwrap_or_else(|| "8,16,32,64".into()))?,
        shapes,
        iters: get("--iters").map(|v| v.parse()).transpose()?.unwrap_or(15),
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn to_vec(t: &TValue) -> R<Vec<f32>> {
    Ok(t.to_plain_array_view::<f32>()
        .map_err(terr)?
        .iter()
        .copied()
        .collect())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A tract plan for `model` with every graph input fixed to the shape and type of the value of
/// that name in `feed`, and the inputs in the plan's order.
fn plan_fed(
    model: &ModelProto,
    feed: &[(String, TValue)],
) -> R<(Arc<TypedRunnableModel>, TVec<TValue>)> {
    let bytes = onnx::encode_model(model);
    let mut m = tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .map_err(terr)?;
    let mut ordered = TVec::new();
    for (k, o) in m
        .input_outlets()
        .map_err(terr)?
        .to_vec()
        .into_iter()
        .enumerate()
    {
        let name = m.node(o.node).name.clone();
        let x = feed
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, x)| x.clone())
            .ok_or_else(|| format!("no value for graph input {name}"))?;
        m = m
            .with_input_fact(k, InferenceFact::dt_shape(x.datum_type(), x.shape()))
            .map_err(terr)?;
        ordered.push(x);
    }
    let p = m
        .into_optimized()
        .map_err(terr)?
        .into_runnable()
        .map_err(terr)?;
    Ok((p, ordered))
}

/// [`plan_fed`] for a graph whose inputs are the base inputs `x` (named `names`).
fn plan(model: &ModelProto, names: &[String], x: &[TValue]) -> R<Arc<TypedRunnableModel>> {
    let feed: Vec<(String, TValue)> = names.iter().cloned().zip(x.iter().cloned()).collect();
    Ok(plan_fed(model, &feed)?.0)
}

/// The base graph with `Y += (X·A'ᵀ)·B'ᵀ` per module (an unmerged LoRA branch).
fn lora_model(
    base: &ModelProto,
    bundle: &Bundle,
    lora: &BTreeMap<String, LoraModule>,
) -> R<ModelProto> {
    let binding = bundle.manifest.binding.as_ref().ok_or("unbound bundle")?;
    let mut model = base.clone();
    let g = model.graph.as_mut().ok_or("no graph")?;
    let mut inserts: HashMap<usize, Vec<_>> = HashMap::new();
    for (m, mb) in &binding.modules {
        let lm = &lora[m];
        let (r, din, dout) = (lm.rank(), lm.in_features(), lm.out_features());
        let at: Vec<f32> = (0..din * r).map(|i| lm.a[(i % r, i / r)] as f32).collect();
        let bt: Vec<f32> = (0..r * dout)
            .map(|i| lm.b[(i % dout, i / dout)] as f32)
            .collect();
        let (an, bn) = (format!("lora/{m}/A_T"), format!("lora/{m}/B_T"));
        g.initializer.push(tensor_f32(&an, &[din, r], &at));
        g.initializer.push(tensor_f32(&bn, &[r, dout], &bt));
        let pi = g
            .node
            .iter()
            .position(|n| n.output.contains(&mb.output))
            .ok_or("no producer")?;
        let ybase = format!("{}.lora_base", mb.output);
        for o in g.node[pi].output.iter_mut() {
            if *o == mb.output {
                *o = ybase.clone();
            }
        }
        let (h, t) = (format!("lora/{m}/h"), format!("lora/{m}/t"));
        inserts.entry(pi).or_default().extend([
            node(
                "MatMul",
                &format!("lora/{m}/down"),
                &[&mb.input, &an],
                &[&h],
                vec![],
            ),
            node("MatMul", &format!("lora/{m}/up"), &[&h, &bn], &[&t], vec![]),
            node(
                "Add",
                &format!("lora/{m}/add"),
                &[&ybase, &t],
                &[&mb.output],
                vec![],
            ),
        ]);
    }
    let old = std::mem::take(&mut g.node);
    for (i, n) in old.into_iter().enumerate() {
        g.node.push(n);
        if let Some(x) = inserts.remove(&i) {
            g.node.extend(x);
        }
    }
    Ok(model)
}

/// W0 += (B'A')ᵀ (InOut layout) for every module, in f32, on the model's initializers.
fn merge_into(
    model: &mut ModelProto,
    bundle: &Bundle,
    deltas: &BTreeMap<String, (Vec<f32>, Vec<f32>, usize)>,
) -> R<()> {
    let binding = bundle.manifest.binding.as_ref().ok_or("unbound bundle")?;
    let g = model.graph.as_mut().ok_or("no graph")?;
    for (m, mb) in &binding.modules {
        if mb.layout != WeightLayout::InOut {
            return Err(format!("{m}: only the InOut layout is handled here").into());
        }
        let t = g
            .initializer
            .iter_mut()
            .find(|t| t.name == mb.weight)
            .ok_or("no weight")?;
        let mut w = onnx::f32_data(t, Path::new("base"))?;
        let (din, dout) = (t.dims[0] as usize, t.dims[1] as usize);
        merge_weights(&mut w, &deltas[m], din, dout);
        *t = tensor_f32(&t.name.clone(), &[din, dout], &w);
    }
    Ok(())
}

/// W [in x out] += Σ_j B'[o][j]·A'[j][i], f32.
fn merge_weights(
    w: &mut [f32],
    (bf, af, r): &(Vec<f32>, Vec<f32>, usize),
    din: usize,
    dout: usize,
) {
    let r = *r;
    for i in 0..din {
        for o in 0..dout {
            let mut s = 0f32;
            for j in 0..r {
                s += bf[o * r + j] * af[j * din + i];
            }
            w[i * dout + o] += s;
        }
    }
}

/// Base inputs of shape [b, s]: random token ids, full attention mask, zero token types.
fn inputs(names: &[String], b: usize, s: usize, seed: u64) -> R<(Vec<TValue>, Vec<Vec<i64>>)> {
    let mut g = GaussianRng::new(seed);
    let mut vs = Vec::new();
    let mut raw = Vec::new();
    for n in names {
        let data: Vec<i64> = (0..b * s)
            .map(|i| {
                if n.contains("mask") {
                    1
                } else if n.contains("type") {
                    0
                } else if i % s == 0 {
                    101
                } else {
                    1000 + ((g.next_normal().abs() * 5000.0) as i64 % 20000)
                }
            })
            .collect();
        vs.push(Tensor::from_shape(&[b, s], &data)?.into());
        raw.push(data);
    }
    Ok((vs, raw))
}

type Variant<'a> = (String, Box<dyn FnMut() -> R<()> + 'a>);

/// Interleaved medians: every round runs each variant once, the order rotating per round.
fn interleaved(vars: &mut [Variant<'_>], iters: usize) -> R<Vec<Duration>> {
    for (_, f) in vars.iter_mut() {
        f()?; // warm-up (builds per-shape plans)
        f()?;
    }
    let n = vars.len();
    let mut times = vec![Vec::with_capacity(iters); n];
    for round in 0..iters {
        for k in 0..n {
            let i = (k + round) % n;
            let t = Instant::now();
            (vars[i].1)()?;
            times[i].push(t.elapsed());
        }
    }
    Ok(times.into_iter().map(median).collect())
}

fn main() -> R<()> {
    let a = args()?;
    let dir = std::env::temp_dir().join(format!("elx-bench-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&a.adapters)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("adapter_config.json").is_file())
        .collect();
    dirs.sort();
    let adapters: Vec<Adapter> = dirs
        .iter()
        .map(|d| Adapter::open(d))
        .collect::<Result<_, _>>()?;
    let names: Vec<String> = dirs
        .iter()
        .map(|d| {
            d.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let ti = names
        .iter()
        .position(|n| *n == a.task)
        .ok_or_else(|| format!("no adapter named {} in {}", a.task, a.adapters.display()))?;
    let modules: Vec<String> = adapters[ti]
        .module_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let lora: BTreeMap<String, LoraModule> = modules
        .iter()
        .map(|m| Ok((m.clone(), adapters[ti].load_module(m)?)))
        .collect::<R<_>>()?;
    let r = lora.values().map(|l| l.rank()).max().unwrap_or(0);
    let span = adapters.len() * r;
    let (base_model, _) = onnx::read_model(&a.model)?;
    let model_bytes = std::fs::metadata(&a.model)?.len();
    println!(
        "model {} ({model_bytes} bytes); {} adapters in {} ({} modules, r={r}, span N·r={span}); task `{}`",
        a.model.display(),
        adapters.len(),
        a.adapters.display(),
        modules.len(),
        a.task
    );

    // One bound bundle, the task's coefficients and a runtime per K.
    struct PerK {
        k: usize,
        bundle: Bundle,
        coeffs: Vec<CoeffFile>,
        rt: Runtime,
        task: TaskId,
        zero: TaskId,
        all: Vec<TaskId>,
    }
    let mut ks = Vec::new();
    for &k in &a.ks {
        let options = ExtractOptions {
            k_rule_a: KRule::Fixed(k.min(span)),
            k_rule_b: KRule::Fixed(k.min(span)),
            pseudo: k.saturating_sub(span),
            ..Default::default()
        };
        let sub = extract(&adapters, &options, &|_, _, _| {})?;
        let path = dir.join(format!("k{k}.elxb"));
        Bundle::write(&path, &sub, &[], StorageDtype::F32, None)?;
        let mut bundle = Bundle::read(&path)?;
        bundle.manifest.binding = Some(bind_file(&a.model, &bundle, None)?);
        let coeffs: Vec<CoeffFile> = adapters
            .iter()
            .zip(&names)
            .map(|(ad, n)| {
                let mut ms = BTreeMap::new();
                for m in ad.module_names() {
                    ms.insert(
                        m.to_string(),
                        project(&ad.load_module(m)?, &bundle.subspace.modules[m]),
                    );
                }
                Ok(CoeffFile {
                    subspace_id: bundle.manifest.subspace_id.clone(),
                    task: n.clone(),
                    provenance: Provenance::Projected,
                    modules: ms,
                    head: None,
                })
            })
            .collect::<R<_>>()?;
        let rt = Runtime::load(&a.model, &bundle)?;
        let all: Vec<TaskId> = coeffs
            .iter()
            .map(|c| rt.insert_task(c))
            .collect::<Result<_, _>>()?;
        let zero = rt.insert_task(&CoeffFile {
            modules: BTreeMap::new(),
            task: "zero".into(),
            ..coeffs[0].clone()
        })?;
        let kk = bundle
            .subspace
            .modules
            .values()
            .map(|s| s.v_a.nrows())
            .max()
            .unwrap_or(0);
        println!(
            "K={k}: bundle K_A={kk}, runtime shape-generic plan: {}",
            rt.is_shape_generic()
        );
        ks.push(PerK {
            k,
            bundle,
            coeffs,
            rt,
            task: all[ti],
            zero,
            all,
        });
    }
    let deltas: BTreeMap<String, (Vec<f32>, Vec<f32>, usize)> = lora
        .iter()
        .map(|(m, l)| {
            let (r, din, dout) = (l.rank(), l.in_features(), l.out_features());
            let bf = (0..dout * r).map(|i| l.b[(i / r, i % r)] as f32).collect();
            let af = (0..r * din)
                .map(|i| l.a[(i / din, i % din)] as f32)
                .collect();
            (m.clone(), (bf, af, r))
        })
        .collect();
    let names_in: Vec<String> = ks[0].rt.input_names().to_vec();
    let lora_proto = lora_model(&base_model, &ks[0].bundle, &lora)?;
    let mut merged_proto = base_model.clone();
    merge_into(&mut merged_proto, &ks[0].bundle, &deltas)?;

    // Identities at the first shape.
    {
        let (b, s) = a.shapes[0];
        let (x, _) = inputs(&names_in, b, s, 1)?;
        let out = |p: &Arc<TypedRunnableModel>| -> R<Vec<f32>> {
            to_vec(&p.run(x.iter().cloned().collect()).map_err(terr)?[0])
        };
        let base = out(&plan(&base_model, &names_in, &x)?)?;
        // The previous association must agree with the runtime's.
        let pk = ks.last().ok_or("no K")?;
        let act = patch_with(&base_model, &pk.bundle, 1, PatchForm::Activations)?.proto;
        let task = pk.rt.task(pk.task)?;
        let mut feed: Vec<(String, TValue)> =
            names_in.iter().cloned().zip(x.iter().cloned()).collect();
        let values = pk.rt.coeff_values(&task)?;
        for (c, v) in task.tensors(pk.rt.coeff_inputs()).zip(values) {
            feed.push((c.name.to_string(), v));
        }
        let (ap, ordered) = plan_fed(&act, &feed)?;
        let act_o = to_vec(&ap.run(ordered).map_err(terr)?[0])?;
        let fac_o = to_vec(&pk.rt.run(&x, pk.task)?[0])?;
        println!(
            "  K={}: patch forms X·V_A-first vs factors: {:.2e}",
            pk.k,
            max_diff(&act_o, &fac_o)
        );
        let merged = out(&plan(&merged_proto, &names_in, &x)?)?;
        let lora_o = out(&plan(&lora_proto, &names_in, &x)?)?;
        println!("identities at [{b}, {s}] (max |diff| over the output):");
        println!(
            "  LoRA branch vs merged weights:     {:.2e}",
            max_diff(&lora_o, &merged)
        );
        println!(
            "  task moves the output by:          {:.2e}",
            max_diff(&merged, &base)
        );
        for pk in &ks {
            let z = to_vec(&pk.rt.run(&x, pk.zero)?[0])?;
            let t = to_vec(&pk.rt.run(&x, pk.task)?[0])?;
            println!(
                "  K={:3}: zero coeffs vs base {:.2e}; patched vs merged {:.2e}",
                pk.k,
                max_diff(&z, &base),
                max_diff(&t, &merged)
            );
        }
    }

    // (a) + (c): latency per shape.
    #[cfg(feature = "ort")]
    let ort_k = ks
        .iter()
        .filter(|p| p.k <= 32)
        .map(|p| p.k)
        .max()
        .unwrap_or(ks[0].k);
    for &(b, s) in &a.shapes {
        let (x, raw) = inputs(&names_in, b, s, 2)?;
        let base_plan = plan(&base_model, &names_in, &x)?;
        let lora_plan = plan(&lora_proto, &names_in, &x)?;
        // The previous association of the same patch, for comparison.
        let act: Vec<(usize, Arc<TypedRunnableModel>, TVec<TValue>)> = ks
            .iter()
            .map(|pk| -> R<_> {
                let p = patch_with(&base_model, &pk.bundle, 1, PatchForm::Activations)?.proto;
                let task = pk.rt.task(pk.task)?;
                let mut feed: Vec<(String, TValue)> =
                    names_in.iter().cloned().zip(x.iter().cloned()).collect();
                let values = pk.rt.coeff_values(&task)?;
                for (c, v) in task.tensors(pk.rt.coeff_inputs()).zip(values) {
                    feed.push((c.name.to_string(), v));
                }
                let (pl, ordered) = plan_fed(&p, &feed)?;
                Ok((pk.k, pl, ordered))
            })
            .collect::<R<_>>()?;
        #[cfg(feature = "ort")]
        let ort_models = {
            let pk = ks.iter().find(|p| p.k == ort_k).ok_or("ort K")?;
            let patched = patch(&base_model, &pk.bundle, 1)?.proto;
            let coeffs = (pk.rt.task(pk.task)?, pk.rt.coeff_inputs().to_vec());
            (
                ortb::Ort::new(&base_model)?,
                ortb::Ort::new(&patched)?,
                coeffs,
            )
        };
        let mut vars: Vec<Variant> = Vec::new();
        vars.push((
            "tract base".into(),
            Box::new(|| {
                base_plan.run(x.iter().cloned().collect()).map_err(terr)?;
                Ok(())
            }),
        ));
        for pk in &ks {
            let x = &x;
            vars.push((
                format!("tract patched K={}", pk.k),
                Box::new(move || {
                    pk.rt.run(x, pk.task)?;
                    Ok(())
                }),
            ));
        }
        for (k, pl, ordered) in &act {
            vars.push((
                format!("tract patched K={k} (X·V_A first)"),
                Box::new(move || {
                    pl.run(ordered.clone()).map_err(terr)?;
                    Ok(())
                }),
            ));
        }
        vars.push((
            format!("tract LoRA branch r={r}"),
            Box::new(|| {
                lora_plan.run(x.iter().cloned().collect()).map_err(terr)?;
                Ok(())
            }),
        ));
        if b > 1 {
            let pk = ks.iter().find(|p| p.k == 32).unwrap_or(&ks[0]);
            let tasks: Vec<TaskId> = (0..b).map(|i| pk.all[i % pk.all.len()]).collect();
            let x = &x;
            vars.push((
                format!("tract mixed K={} ({} tasks)", pk.k, pk.all.len().min(b)),
                Box::new(move || {
                    pk.rt.run_mixed(x, &tasks)?;
                    Ok(())
                }),
            ));
        }
        #[cfg(feature = "ort")]
        {
            let (ob, op, coeffs) = &ort_models;
            let feed = |o: &ortb::Ort, extra: bool| -> R<()> {
                let mut e: Vec<(&str, &[usize], &[f32])> = Vec::new();
                if extra {
                    let (task, inputs) = coeffs;
                    let tensors: Vec<_> = task.tensors(inputs).collect();
                    for t in &tensors {
                        e.push((t.name, &t.shape[..], t.data));
                    }
                    o.run(&names_in, &raw, b, s, &e)?;
                    return Ok(());
                }
                o.run(&names_in, &raw, b, s, &e)?;
                Ok(())
            };
            vars.push(("ort base".into(), Box::new(move || feed(ob, false))));
            vars.push((
                format!("ort patched K={ort_k}"),
                Box::new(move || feed(op, true)),
            ));
        }
        let _ = &raw;
        let t = interleaved(&mut vars, a.iters)?;
        println!(
            "latency, input [{b}, {s}], median of {} interleaved rounds:",
            a.iters
        );
        for ((name, _), d) in vars.iter().zip(&t) {
            println!(
                "  {name:32} {:9.3} ms   / tract base = {:.3}",
                ms(*d),
                d.as_secs_f64() / t[0].as_secs_f64()
            );
        }
        #[cfg(feature = "ort")]
        {
            let n = t.len();
            let tp = vars
                .iter()
                .position(|(nm, _)| *nm == format!("tract patched K={ort_k}"))
                .ok_or("variant")?;
            println!(
                "  ort/tract: base {:.3}, patched K={ort_k} {:.3}; ort patched/ort base {:.3}",
                t[n - 2].as_secs_f64() / t[0].as_secs_f64(),
                t[n - 1].as_secs_f64() / t[tp].as_secs_f64(),
                t[n - 1].as_secs_f64() / t[n - 2].as_secs_f64()
            );
        }
    }

    // (b) resident bytes.
    println!("resident bytes (live heap, counting allocator):");
    let lora_bytes: usize = lora
        .values()
        .map(|l| 4 * l.rank() * (l.in_features() + l.out_features()))
        .sum();
    let merged_bytes: usize = lora
        .values()
        .map(|l| 4 * l.in_features() * l.out_features())
        .sum();
    for pk in &ks {
        let before = live();
        let mut row = Vec::new();
        let mut n = 0;
        for target in [1usize, 10, 100] {
            while n < target {
                pk.rt.insert_task(&pk.coeffs[n % pk.coeffs.len()])?;
                n += 1;
            }
            row.push((target, live() - before));
        }
        let raw_f32: usize = pk
            .rt
            .coeff_inputs()
            .iter()
            .map(|c| 4 * (c.k_a * c.r + c.r * c.k_b))
            .sum();
        let v_f32: usize = pk
            .bundle
            .subspace
            .modules
            .values()
            .map(|s| 4 * (s.v_a.nrows() * s.in_features + s.v_b.ncols() * s.out_features))
            .sum();
        println!(
            "  K={:3}: coefficient f32 per task {raw_f32}; store: {}; LoRA A,B f32 per adapter {lora_bytes} (x{:.1} per task); merged adapted weights per task {merged_bytes}; bundle V_A,V_B f32 {v_f32}",
            pk.k,
            row.iter()
                .map(|(n, d)| format!("N={n}: {d} ({:.0}/task)", *d as f64 / *n as f64))
                .collect::<Vec<_>>()
                .join(", "),
            lora_bytes as f64 / (row[2].1 as f64 / 100.0)
        );
    }
    {
        let pk = ks.iter().find(|p| p.k == 32).unwrap_or(&ks[0]);
        let before = live();
        let rt = Runtime::load(&a.model, &pk.bundle)?;
        let after_load = live() - before;
        let (x, _) = inputs(&names_in, 1, 128, 3)?;
        let t = rt.insert_task(&pk.coeffs[ti])?;
        rt.run(&x, t)?;
        let after_plan = live() - before;
        println!(
            "  runtime K={} resident: after load {after_load} (base ModelProto kept for lazy plans: ~{model_bytes}); after the first [1,128] plan {after_plan}",
            pk.k
        );
    }

    // (d) swaps at the middle K.
    let pk = ks.iter().find(|p| p.k == 32).unwrap_or(&ks[0]);
    let cfile = dir.join("task.elxc");
    pk.coeffs[ti].write(&cfile)?;
    let (x, _) = inputs(&names_in, 1, 128, 4)?;
    let time = |iters: usize, f: &mut dyn FnMut() -> R<()>| -> R<Duration> {
        let mut v = Vec::new();
        for _ in 0..iters {
            let t = Instant::now();
            f()?;
            v.push(t.elapsed());
        }
        Ok(median(v))
    };
    let t_warm = time(1000, &mut || {
        std::hint::black_box(pk.rt.task(pk.all[(ti + 1) % pk.all.len()])?);
        Ok(())
    })?;
    let t_cold = time(a.iters, &mut || {
        pk.rt.load_task(&cfile)?;
        Ok(())
    })?;
    let weights: Vec<(String, Vec<f32>, usize, usize)> = {
        let binding = pk.bundle.manifest.binding.as_ref().ok_or("unbound")?;
        let g = base_model.graph.as_ref().ok_or("no graph")?;
        binding
            .modules
            .iter()
            .map(|(m, mb)| {
                let t = g
                    .initializer
                    .iter()
                    .find(|t| t.name == mb.weight)
                    .ok_or("weight")?;
                Ok((
                    m.clone(),
                    onnx::f32_data(t, &a.model)?,
                    t.dims[0] as usize,
                    t.dims[1] as usize,
                ))
            })
            .collect::<R<_>>()?
    };
    let t_merge = time(a.iters.min(10), &mut || {
        for (m, w, din, dout) in &weights {
            let mut w = w.clone();
            merge_weights(&mut w, &deltas[m], *din, *dout);
            std::hint::black_box(w);
        }
        Ok(())
    })?;
    let t_rebuild = time(a.iters.min(5), &mut || {
        let mut p = base_model.clone();
        merge_into(&mut p, &pk.bundle, &deltas)?;
        std::hint::black_box(plan(&p, &names_in, &x)?);
        Ok(())
    })?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "swap (K={}, {} bytes .elxc):",
        pk.k,
        std::fs::metadata(&cfile)?.len()
    );
    println!("  warm (select a loaded task)     {:10.3} us", us(t_warm));
    println!("  cold (load .elxc)               {:10.3} ms", ms(t_cold));
    println!("  merge LoRA (arithmetic, f32)    {:10.3} ms", ms(t_merge));
    println!(
        "  merge + rebuild tract plan      {:10.3} ms",
        ms(t_rebuild)
    );
    println!(
        "  merge+rebuild / cold = {:.0}; merge / warm = {:.0}",
        t_rebuild.as_secs_f64() / t_cold.as_secs_f64(),
        t_merge.as_secs_f64() / t_warm.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A plain ONNX Runtime session (CPU, one intra-op and one inter-op thread, sequential).
#[cfg(feature = "ort")]
mod ortb {
    use super::R;
    use eigenlorax::graph::onnx::encode_model;
    use eigenlorax::graph::pb::ModelProto;
    use ort::session::{Session, SessionInputValue};
    use ort::value::TensorRef;
    use std::borrow::Cow;
    use std::sync::Mutex;

    pub struct Ort(Mutex<Session>);

    impl Ort {
        pub fn new(model: &ModelProto) -> R<Ort> {
            let env = eigenlorax::serve::backend::ort::environment()?;
            let s = Session::builder(&env)
                .map_err(|e| e.to_string())?
                .with_intra_threads(1)
                .map_err(|e| e.to_string())?
                .with_inter_threads(1)
                .map_err(|e| e.to_string())?
                .with_parallel_execution(false)
                .map_err(|e| e.to_string())?
                .commit_from_memory(&encode_model(model))
                .map_err(|e| e.to_string())?;
            Ok(Ort(Mutex::new(s)))
        }

        pub fn run(
            &self,
            names: &[String],
            raw: &[Vec<i64>],
            b: usize,
            s: usize,
            extra: &[(&str, &[usize], &[f32])],
        ) -> R<()> {
            let shape = [b, s];
            let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::new();
            for (n, d) in names.iter().zip(raw) {
                let v = TensorRef::from_array_view((&shape[..], d.as_slice()))
                    .map_err(|e| e.to_string())?;
                feed.push((Cow::Borrowed(n.as_str()), v.into()));
            }
            for &(n, sh, d) in extra {
                let v = TensorRef::from_array_view((sh, d)).map_err(|e| e.to_string())?;
                feed.push((Cow::Borrowed(n), v.into()));
            }
            let mut sess = self.0.lock().map_err(|_| "poisoned")?;
            let out = sess.run(feed).map_err(|e| e.to_string())?;
            std::hint::black_box(out);
            Ok(())
        }
    }
}
