//! Describing one file: a bundle's manifest and per-module table, an adapter's modules, a
//! coefficient file's tasks and head.

use crate::cli::{Table, file_size, pct, sci, warn};
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::fidelity::projection_error_bound;
use eigenlorax::bundle::{Bundle, CoeffFile};
use eigenlorax::subspace::KRule;
use eigenlorax::{Error, Result};
use std::path::Path;

fn rule(r: &KRule) -> String {
    match r {
        KRule::Fixed(k) => format!("fixed K={k}"),
        KRule::Energy(e) => format!("energy {}", pct(*e)),
        KRule::GavishDonoho => "Gavish-Donoho".into(),
    }
}

fn side_k(k: usize, s: &eigenlorax::bundle::format::SideSummary) -> String {
    let mut extra = String::new();
    if s.mean_vector {
        extra.push_str("+mean");
    }
    if s.pseudo > 0 {
        extra.push_str(&format!("+{}p", s.pseudo));
    }
    if extra.is_empty() {
        k.to_string()
    } else {
        format!("{k} ({}{extra})", s.k_principal)
    }
}

pub(super) fn print_bundle(b: &Bundle) -> Result<()> {
    let m = &b.manifest;
    let o = &m.options;
    outln!(
        "bundle:       {} ({})",
        b.path.display(),
        file_size(&b.path)
    )?;
    outln!("subspace id:  {}", m.subspace_id)?;
    outln!(
        "format:       version {}, bases stored as {}",
        m.format_version,
        m.dtype.name()
    )?;
    outln!(
        "options:      canonicalize={} center={} K rule A: {}, B: {}; pseudo-PCs {} (seed {})",
        o.canonicalize,
        o.center,
        rule(&o.k_rule_a),
        rule(&o.k_rule_b),
        o.pseudo,
        o.seed
    )?;
    outln!(
        "base:         {}{}",
        m.base_identity().describe(),
        if m.base.is_none() {
            " (derived: this format stores none)"
        } else {
            ""
        }
    )?;
    outln!("sources:      {} adapters", m.sources.len())?;
    let mut t =
        Table::new(&["  path", "sha256", "format", "modules", "base model"]).left(&[1, 2, 4]);
    for s in &m.sources {
        t.row(vec![
            format!("  {}", s.path),
            s.sha256.clone(),
            format!("{:?}", s.format).to_lowercase(),
            s.modules.to_string(),
            s.base_model.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out!("{}", t.render())?;
    let mut t = Table::new(&[
        "module",
        "in",
        "out",
        "n",
        "r_max",
        "K_A",
        "K_B",
        "energy A",
        "energy B",
        "storage bound",
    ]);
    for (name, mm) in &m.modules {
        t.row(vec![
            name.clone(),
            mm.in_features.to_string(),
            mm.out_features.to_string(),
            mm.n_adapters.to_string(),
            mm.r_max.to_string(),
            side_k(mm.k_a, &mm.a),
            side_k(mm.k_b, &mm.b),
            pct(mm.a.energy_kept),
            pct(mm.b.energy_kept),
            projection_error_bound(b, name)
                .map(sci)
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    out!("{}", t.render())?;
    outln!(
        "(storage bound: worst relative ΔW loss that storing the bases as {} can cause an in-span adapter)",
        m.dtype.name()
    )?;
    match &m.binding {
        None => outln!("binding:      none (run `elx bind` to bind it to a base ONNX model)")?,
        Some(bd) => {
            outln!(
                "binding:      {} (sha256 {}), {} modules",
                bd.base_file,
                bd.base_sha256,
                bd.modules.len()
            )?;
            let mut t = Table::new(&["  module", "node", "weight", "layout"]).left(&[1, 2, 3]);
            for (n, mb) in &bd.modules {
                t.row(vec![
                    format!("  {n}"),
                    mb.node.clone(),
                    mb.weight.clone(),
                    format!("{:?}", mb.layout),
                ]);
            }
            out!("{}", t.render())?;
        }
    }
    Ok(())
}

/// `elx inspect ADAPTER`: what the adapter holds, read the way `elx extract` reads it.
pub(super) fn inspect_adapter(path: &Path) -> Result<()> {
    let ad = Adapter::open(path).map_err(|e| match e {
        Error::BadInput {
            path: p,
            tensor,
            message,
        } if !path.is_dir() && p == path && tensor.is_none() => Error::BadInput {
            path: p,
            tensor,
            message: format!(
                "expected an eigenlorax bundle or coefficient file, or a LoRA adapter: {message}"
            ),
        },
        other => other,
    })?;
    let norms = ad.delta_norms()?;
    let weights = ad.weights_path();
    outln!(
        "adapter:      {} ({})",
        ad.path.display(),
        format!("{:?}", ad.format).to_lowercase()
    )?;
    outln!(
        "weights:      {} ({}, sha256 {})",
        weights.display(),
        file_size(weights),
        ad.sha256
    )?;
    outln!(
        "base model:   {} (fingerprint {} over {} modules)",
        ad.base_model.as_deref().unwrap_or("-"),
        ad.fingerprint(),
        ad.modules.len()
    )?;
    let c = &ad.config;
    let json = |k: &str| match c.get(k) {
        None | Some(serde_json::Value::Null) => "-".to_string(),
        Some(serde_json::Value::String(s)) => crate::cli::printable(s).into_owned(),
        Some(v) => crate::cli::printable(&v.to_string()).into_owned(),
    };
    if ad.format == eigenlorax::adapter::AdapterFormat::Peft {
        outln!(
            "config:       task_type {}, r {}, lora_alpha {}, use_rslora {}, fan_in_fan_out {}",
            json("task_type"),
            json("r"),
            json("lora_alpha"),
            json("use_rslora"),
            json("fan_in_fan_out"),
        )?;
        outln!("              target_modules {}", json("target_modules"))?;
        outln!("              modules_to_save {}", json("modules_to_save"))?;
    }
    let mut t = Table::new(&["module", "r", "in", "out", "scale", "‖ΔW‖_F"]);
    for (name, m) in &ad.modules {
        t.row(vec![
            name.clone(),
            m.rank.to_string(),
            m.in_features.to_string(),
            m.out_features.to_string(),
            format!("{:.4}", m.scale),
            norms.get(name).map_or("-".into(), |x| sci(*x)),
        ]);
    }
    out!("{}", t.render())?;
    let params: usize = ad
        .modules
        .values()
        .map(|m| (m.in_features + m.out_features) * m.rank)
        .sum();
    outln!(
        "modules:      {} LoRA modules ({params} parameters)",
        ad.modules.len()
    )?;
    if ad.extras.is_empty() {
        outln!("extras:       none (no tensors besides the LoRA pairs)")?;
    } else {
        let bytes: usize = ad.extras.iter().map(|e| e.bytes).sum();
        outln!(
            "extras:       {} non-LoRA tensors, {bytes} B (heads, modules_to_save copies; not part of any subspace)",
            ad.extras.len()
        )?;
        let mut t = Table::new(&["  tensor", "shape", "dtype", "bytes"]).left(&[1, 2, 3]);
        for e in &ad.extras {
            t.row(vec![
                format!("  {}", crate::cli::printable(&e.key)),
                format!("{:?}", e.shape),
                e.dtype.clone(),
                e.bytes.to_string(),
            ]);
        }
        out!("{}", t.render())?;
    }
    let zero: Vec<&str> = norms
        .iter()
        .filter(|(_, n)| **n == 0.0)
        .map(|(k, _)| k.as_str())
        .collect();
    if !zero.is_empty() && zero.len() == norms.len() {
        warn(format!(
            "{}: every ΔW is zero (an untrained adapter, B = 0?): it adds nothing to a subspace",
            path.display()
        ))?;
    } else if !zero.is_empty() {
        warn(format!(
            "{}: {} of its {} modules have a zero ΔW: {}",
            path.display(),
            zero.len(),
            norms.len(),
            zero.join(", ")
        ))?;
    }
    Ok(())
}

pub(super) fn inspect_coeffs(path: &Path) -> Result<()> {
    let c = CoeffFile::read(path)?;
    outln!("coefficients: {} ({})", path.display(), file_size(path))?;
    outln!("subspace id:  {}", c.subspace_id)?;
    outln!("task:         {}", crate::cli::printable(&c.task))?;
    outln!("provenance:   {}", c.provenance.name())?;
    let mut t = Table::new(&["module", "r", "K_A", "K_B", "parameters"]);
    let mut total = 0;
    for (n, co) in &c.modules {
        let params =
            co.alpha_a.nrows() * co.alpha_a.ncols() + co.alpha_b.nrows() * co.alpha_b.ncols();
        total += params;
        t.row(vec![
            n.clone(),
            co.alpha_a.nrows().to_string(),
            co.alpha_a.ncols().to_string(),
            co.alpha_b.nrows().to_string(),
            params.to_string(),
        ]);
    }
    out!("{}", t.render())?;
    outln!("modules:      {} ({total} coefficients)", c.modules.len())?;
    match &c.head {
        None => outln!("head:         none")?,
        Some(h) => {
            outln!(
                "head:         {} classes x {} features",
                h.weight.nrows(),
                h.weight.ncols()
            )?;
            let labels: Vec<_> = h.labels.iter().map(|l| crate::cli::printable(l)).collect();
            outln!("labels:       {}", labels.join(", "))?;
        }
    }
    Ok(())
}
