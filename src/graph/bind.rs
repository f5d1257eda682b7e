//! Binding a bundle to a base ONNX model: which MatMul/Gemm node each module is.
//!
//! Exporters rename weights (the legacy torch exporter gives `onnx::MatMul_886`, stored
//! [in x out]; the dynamo exporter gives `val_84`) but keep bias names. Each module is
//! resolved, once, on the host:
//!
//! 1. an entry of the user map (module -> node name), when the user gave one: an explicit
//!    choice overrides the automatic rules, so a wrong automatic match can always be fixed;
//! 2. an initializer named `<module>.weight` feeding a MatMul (directly: stored [in x out];
//!    through a Transpose: stored [out x in]) or a Gemm (transB=1: [out x in], else [in x out]);
//! 3. a MatMul with a constant 2-D [in x out] weight whose output feeds an Add of the
//!    initializer `<module>.bias`.
//!
//! The weight's shape must agree with the module's in/out features. When a module cannot be
//! resolved, the error lists every unresolved module with the nodes whose weight shape fits.

use super::onnx::{self, get_attr, get_attr_float, get_attr_int};
use super::pb::{GraphProto, ModelProto, NodeProto, TensorProto};
use crate::bundle::{Binding, Bundle, Manifest, ModuleBinding, WeightLayout};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A MatMul/Gemm node whose weight is a constant 2-D initializer.
#[derive(Clone, Debug)]
struct Site {
    node: usize,
    input: String,
    weight: String,
    layout: WeightLayout,
    /// (in, out) implied by the weight and layout.
    in_out: (usize, usize),
}

/// Lookup tables over one graph.
struct GraphIndex<'a> {
    graph: &'a GraphProto,
    inits: HashMap<&'a str, &'a TensorProto>,
    producer: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    sites: Vec<Site>,
}

fn dims2(t: &TensorProto) -> Option<(usize, usize)> {
    match t.dims.as_slice() {
        [a, b] => Some((usize::try_from(*a).ok()?, usize::try_from(*b).ok()?)),
        _ => None,
    }
}

impl<'a> GraphIndex<'a> {
    fn new(graph: &'a GraphProto) -> Self {
        let inits: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.as_str(), i);
            }
            for x in &n.input {
                if !x.is_empty() {
                    consumers.entry(x.as_str()).or_default().push(i);
                }
            }
        }
        let mut idx = GraphIndex {
            graph,
            inits,
            producer,
            consumers,
            sites: Vec::new(),
        };
        idx.sites = (0..graph.node.len())
            .filter_map(|i| idx.site_of(i))
            .collect();
        idx
    }

    fn is_default_domain(n: &NodeProto) -> bool {
        n.domain.is_empty() || n.domain == "ai.onnx"
    }

    /// The 2-D f32 initializer behind `name`, directly or through a 2-D Transpose
    /// (returned flag: transposed).
    fn weight_behind(&self, name: &str) -> Option<(&'a TensorProto, bool)> {
        if let Some(t) = self.inits.get(name) {
            return (t.data_type == onnx::FLOAT && dims2(t).is_some()).then_some((*t, false));
        }
        let p = &self.graph.node[*self.producer.get(name)?];
        if p.op_type != "Transpose" || !Self::is_default_domain(p) {
            return None;
        }
        if let Some(perm) = get_attr(p, "perm")
            && perm.ints != [1, 0]
        {
            return None;
        }
        let t = self.inits.get(p.input.first()?.as_str())?;
        (t.data_type == onnx::FLOAT && dims2(t).is_some()).then_some((*t, true))
    }

    fn site_of(&self, i: usize) -> Option<Site> {
        let n = &self.graph.node[i];
        if !Self::is_default_domain(n) || n.output.is_empty() {
            return None;
        }
        let x = n.input.first()?.clone();
        let w = n.input.get(1)?;
        let (t, transposed) = self.weight_behind(w)?;
        let (a, b) = dims2(t)?;
        let layout = match n.op_type.as_str() {
            "MatMul" => {
                if transposed {
                    WeightLayout::OutIn
                } else {
                    WeightLayout::InOut
                }
            }
            "Gemm" => {
                // Only the plain form Y = X·op(W) (+ C) can take an additive correction that
                // equals merging ΔW into W.
                if transposed
                    || get_attr_int(n, "transA", 0) != 0
                    || get_attr_float(n, "alpha", 1.0) != 1.0
                {
                    return None;
                }
                if get_attr_int(n, "transB", 0) != 0 {
                    WeightLayout::OutIn
                } else {
                    WeightLayout::InOut
                }
            }
            _ => return None,
        };
        let in_out = match layout {
            WeightLayout::InOut => (a, b),
            WeightLayout::OutIn => (b, a),
        };
        Some(Site {
            node: i,
            input: x,
            weight: t.name.clone(),
            layout,
            in_out,
        })
    }

    fn site_for_node(&self, i: usize) -> Option<&Site> {
        self.sites.iter().find(|s| s.node == i)
    }

    /// The tensor whose consumers get Y + T: the bias Add's output when the node's only
    /// consumer is an Add of a 1-D initializer (keeps MatMul+Add adjacent for fusion), else
    /// the node's own output.
    fn output_of(&self, site: &Site) -> String {
        let n = &self.graph.node[site.node];
        let y = n.output[0].as_str();
        if n.op_type == "MatMul"
            && let Some(cs) = self.consumers.get(y)
            && let [c] = cs.as_slice()
        {
            let add = &self.graph.node[*c];
            if add.op_type == "Add" && Self::is_default_domain(add) && add.input.len() == 2 {
                let other = if add.input[0] == y {
                    &add.input[1]
                } else {
                    &add.input[0]
                };
                if self
                    .inits
                    .get(other.as_str())
                    .is_some_and(|t| t.dims.len() == 1)
                    && !add.output.is_empty()
                {
                    return add.output[0].clone();
                }
            }
        }
        y.to_string()
    }

    fn binding_of(&self, site: &Site) -> ModuleBinding {
        ModuleBinding {
            node: self.graph.node[site.node].name.clone(),
            input: site.input.clone(),
            output: self.output_of(site),
            weight: site.weight.clone(),
            layout: site.layout,
        }
    }
}

/// Resolves every module of `manifest` to a node of `model`.
///
/// `model_bytes_sha256` is the SHA-256 of the model file (stored in the binding so the device
/// refuses any other model); `base_file` names the model in errors and in the binding.
/// `user_map` (module -> node name) overrides the automatic rules for the modules it names.
pub fn bind(
    model: &ModelProto,
    model_bytes_sha256: String,
    base_file: &str,
    manifest: &Manifest,
    user_map: Option<&BTreeMap<String, String>>,
) -> Result<Binding> {
    let graph = model.graph.as_ref().ok_or_else(|| {
        Error::bad_file(base_file, "expected an ONNX model with a graph, found none")
    })?;
    // Named in the error when modules do not resolve: the model may be of another base. (A
    // bundle of several names is not refused up front: `--allow-mixed-bases` is also how
    // two names of one model, `gpt2` and `openai-community/gpt2`, get into one bundle.)
    let base = manifest.base_identity();
    let idx = GraphIndex::new(graph);
    if let Some(map) = user_map {
        for m in map.keys() {
            if !manifest.modules.contains_key(m) {
                return Err(Error::Usage(format!(
                    "user map names module `{m}`, which the bundle does not have (it has {} modules)",
                    manifest.modules.len()
                )));
            }
        }
    }
    let mut bound: BTreeMap<String, ModuleBinding> = BTreeMap::new();
    let mut used_nodes: HashMap<usize, String> = HashMap::new();
    let mut failures: Vec<String> = Vec::new();
    for (m, mm) in &manifest.modules {
        let want = (mm.in_features, mm.out_features);
        let found: std::result::Result<&Site, String> = resolve(&idx, m, want, user_map);
        match found {
            Ok(site) => {
                if let Some(other) = used_nodes.get(&site.node) {
                    failures.push(format!(
                        "module `{m}`: resolved to node `{}`, already bound to module `{other}`",
                        graph.node[site.node].name
                    ));
                    continue;
                }
                used_nodes.insert(site.node, m.clone());
                bound.insert(m.clone(), idx.binding_of(site));
            }
            Err(why) => {
                let cands: Vec<String> = idx
                    .sites
                    .iter()
                    .filter(|s| s.in_out == want)
                    .map(|s| {
                        let n = &graph.node[s.node];
                        format!("{} `{}` (weight `{}`)", n.op_type, n.name, s.weight)
                    })
                    .collect();
                let shown = cands.len().min(8);
                let mut line = format!(
                    "module `{m}` ({} in x {} out): {why}; candidate nodes with a fitting weight: ",
                    want.0, want.1
                );
                if cands.is_empty() {
                    line.push_str("none");
                } else {
                    line.push_str(&cands[..shown].join(", "));
                    if cands.len() > shown {
                        line.push_str(&format!(" and {} more", cands.len() - shown));
                    }
                }
                failures.push(line);
            }
        }
    }
    if !failures.is_empty() {
        return Err(Error::bad_file(
            base_file,
            format!(
                "expected a MatMul/Gemm for every bundle module (the bundle is for {}); {} of {} unresolved (map them with a user map module -> node, or bind the model of that base):\n  {}",
                base.describe(),
                failures.len(),
                manifest.modules.len(),
                failures.join("\n  ")
            ),
        ));
    }
    let binding = Binding {
        base_sha256: model_bytes_sha256,
        base_file: base_file.to_string(),
        modules: bound,
    };
    // What the patch will assume of every bound node, checked now rather than at load.
    super::check::check_model(model, manifest, &binding, base_file)?;
    Ok(binding)
}

fn check_shape(site: &Site, want: (usize, usize), how: &str) -> std::result::Result<(), String> {
    if site.in_out == want {
        Ok(())
    } else {
        Err(format!(
            "{how} has a weight `{}` implying {} in x {} out, expected {} x {}",
            site.weight, site.in_out.0, site.in_out.1, want.0, want.1
        ))
    }
}

fn resolve<'i>(
    idx: &'i GraphIndex<'_>,
    m: &str,
    want: (usize, usize),
    user_map: Option<&BTreeMap<String, String>>,
) -> std::result::Result<&'i Site, String> {
    let graph = idx.graph;
    if let Some(node_name) = user_map.and_then(|u| u.get(m)) {
        let i = graph
            .node
            .iter()
            .position(|n| &n.name == node_name)
            .ok_or_else(|| format!("user map names node `{node_name}`, which the model lacks"))?;
        let site = idx
            .site_for_node(i)
            .ok_or_else(|| format!("user map names node `{node_name}`, which is not a MatMul/Gemm with a constant 2-D weight"))?;
        check_shape(site, want, &format!("user-mapped node `{node_name}`"))?;
        return Ok(site);
    }
    // Rule 1: `<module>.weight`.
    let wname = format!("{m}.weight");
    if idx.inits.contains_key(wname.as_str()) {
        let sites: Vec<&Site> = idx.sites.iter().filter(|s| s.weight == wname).collect();
        match sites.as_slice() {
            [s] => {
                check_shape(s, want, &format!("node `{}`", graph.node[s.node].name))?;
                return Ok(s);
            }
            [] => {}
            _ => {
                return Err(format!(
                    "initializer `{wname}` feeds {} MatMul/Gemm nodes; map one explicitly",
                    sites.len()
                ));
            }
        }
    }
    // Rule 2: MatMul [in x out] whose output is added to `<module>.bias`.
    let bname = format!("{m}.bias");
    if let Some(b) = idx.inits.get(bname.as_str()) {
        let mut found: Vec<&Site> = Vec::new();
        for &c in idx
            .consumers
            .get(bname.as_str())
            .map(|v| v.as_slice())
            .unwrap_or(&[])
        {
            let add = &graph.node[c];
            if add.op_type != "Add" || add.input.len() != 2 {
                continue;
            }
            let other = if add.input[0] == bname {
                &add.input[1]
            } else {
                &add.input[0]
            };
            if let Some(&p) = idx.producer.get(other.as_str())
                && let Some(s) = idx.site_for_node(p)
                && graph.node[p].op_type == "MatMul"
                && s.layout == WeightLayout::InOut
            {
                found.push(s);
            }
        }
        match found.as_slice() {
            [s] => {
                if b.dims.len() != 1 || usize::try_from(b.dims[0]).ok() != Some(want.1) {
                    return Err(format!(
                        "bias `{bname}` has dims {:?}, expected [{}]",
                        b.dims, want.1
                    ));
                }
                check_shape(
                    s,
                    want,
                    &format!("node `{}` (anchored by `{bname}`)", graph.node[s.node].name),
                )?;
                return Ok(s);
            }
            [] => {}
            _ => {
                return Err(format!(
                    "bias `{bname}` is added to {} MatMul outputs; map one explicitly",
                    found.len()
                ));
            }
        }
        return Err(format!(
            "no MatMul with a constant [in x out] weight feeds an Add of `{bname}`"
        ));
    }
    Err(format!("no initializer `{wname}` or `{bname}` anchors it"))
}

/// Binds `bundle` to the model file `base`: reads it, hashes its bytes and resolves every
/// module (see [`bind`]).
pub fn bind_file(
    base: &Path,
    bundle: &Bundle,
    user_map: Option<&BTreeMap<String, String>>,
) -> Result<Binding> {
    let (model, sha) = onnx::read_model(base)?;
    let name = base
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| base.display().to_string());
    bind(&model, sha, &name, &bundle.manifest, user_map).map_err(|e| match e {
        // Name the full path in errors rather than the stored file name.
        Error::BadInput {
            tensor, message, ..
        } => Error::BadInput {
            path: base.to_path_buf(),
            tensor,
            message,
        },
        other => other,
    })
}
