//! Which base model adapters were trained on: grouping, and a fingerprint of module shapes.
//!
//! A subspace only means something for adapters of one base model. An adapter names its base
//! in PEFT's `base_model_name_or_path`; the module names and shapes say it too (a GPT-2 adapter
//! has `transformer.h.0.attn.c_attn` of 768 -> 2304, a DistilBERT one `…q_lin` of 768 -> 768).
//! [`group_by_base`] puts adapters into groups:
//!
//! * PEFT adapters that name a base join the group of that name (compared after
//!   [`normalize_base_name`]). kohya/diffusers files record only a checkpoint file name
//!   (`ss_sd_model_name`), which differs between users of one base, so they count as unnamed.
//! * An unnamed adapter joins the group it shares a module with, at the same shapes (a named
//!   group first). One that shares no module with any group starts its own.
//!
//! Within a group, a module of one name must have one shape everywhere; extraction checks
//! that and names both files. [`refuse_mixed`] turns two or more groups into an error that
//! names every group; `elx extract --allow-mixed-bases` skips it.
//!
//! [`fingerprint`] hashes a set of module shapes; bundles store it (see
//! `bundle::format::BaseIdentity`) so that `project` can tell an adapter for another base.

use super::{Adapter, AdapterFormat};
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One group of adapters that share a base model.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseGroup {
    /// The base model's name ([`normalize_base_name`]d), when a member names it.
    pub name: Option<String>,
    /// Indices of the members into the slice given to [`group_by_base`], ascending.
    pub members: Vec<usize>,
    /// The union of the members' modules: name -> (in, out).
    pub shapes: BTreeMap<String, (usize, usize)>,
}

impl BaseGroup {
    /// "`gpt2`" or "an unnamed base".
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("base `{n}`"),
            None => "an unnamed base".to_string(),
        }
    }

    /// [`fingerprint`] of this group's modules.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.shapes.iter().map(|(n, &(i, o))| (n.as_str(), i, o)))
    }
}

/// The base model name used for grouping: surrounding white space and trailing `/` removed.
/// Nothing else is guessed (`gpt2` and `openai-community/gpt2` stay two names).
pub fn normalize_base_name(name: &str) -> String {
    name.trim().trim_end_matches('/').to_string()
}

/// The base an adapter declares for grouping: PEFT's `base_model_name_or_path`, normalized;
/// `None` for kohya/diffusers files and PEFT configs without one.
pub fn declared_base(adapter: &Adapter) -> Option<String> {
    match adapter.format {
        AdapterFormat::Peft => adapter
            .base_model
            .as_deref()
            .map(normalize_base_name)
            .filter(|s| !s.is_empty()),
        AdapterFormat::Kohya => None,
    }
}

/// `shapes-` and the first 16 hex digits of a SHA-256 over the modules, sorted by name, each as
/// `name\tin\tout\n`. Two bundles (or adapters) with this fingerprint have the same modules at
/// the same shapes.
pub fn fingerprint<'a>(modules: impl IntoIterator<Item = (&'a str, usize, usize)>) -> String {
    let mut v: Vec<(&str, usize, usize)> = modules.into_iter().collect();
    v.sort();
    v.dedup();
    let mut h = Sha256::new();
    for (n, i, o) in v {
        h.update(format!("{n}\t{i}\t{o}\n").as_bytes());
    }
    let d = h.finalize();
    let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("shapes-{hex}")
}

/// The modules of one adapter as name -> (in, out).
fn shapes_of(a: &Adapter) -> BTreeMap<String, (usize, usize)> {
    a.modules
        .iter()
        .map(|(n, m)| (n.clone(), (m.in_features, m.out_features)))
        .collect()
}

/// Whether `a` and `g` share at least one module and every shared one has the same shape.
fn fits(a: &BTreeMap<String, (usize, usize)>, g: &BTreeMap<String, (usize, usize)>) -> bool {
    let mut shared = false;
    for (n, s) in a {
        if let Some(t) = g.get(n) {
            if s != t {
                return false;
            }
            shared = true;
        }
    }
    shared
}

/// Groups `adapters` by base model (see the module docs). Named groups come first, in the
/// order their first member appears; then unnamed ones.
pub fn group_by_base(adapters: &[Adapter]) -> Vec<BaseGroup> {
    let mut groups: Vec<BaseGroup> = Vec::new();
    let add = |g: &mut BaseGroup, i: usize, shapes: &BTreeMap<String, (usize, usize)>| {
        g.members.push(i);
        for (n, s) in shapes {
            g.shapes.entry(n.clone()).or_insert(*s);
        }
    };
    for (i, a) in adapters.iter().enumerate() {
        if let Some(name) = declared_base(a) {
            let shapes = shapes_of(a);
            match groups.iter_mut().find(|g| g.name.as_ref() == Some(&name)) {
                Some(g) => add(g, i, &shapes),
                None => {
                    let mut g = BaseGroup {
                        name: Some(name),
                        members: Vec::new(),
                        shapes: BTreeMap::new(),
                    };
                    add(&mut g, i, &shapes);
                    groups.push(g);
                }
            }
        }
    }
    for (i, a) in adapters.iter().enumerate() {
        if declared_base(a).is_some() {
            continue;
        }
        let shapes = shapes_of(a);
        let hits: Vec<usize> = (0..groups.len())
            .filter(|&g| fits(&shapes, &groups[g].shapes))
            .collect();
        // A named group first; otherwise every unnamed group it fits is one base (it bridges them).
        if let Some(&g) = hits.iter().find(|&&g| groups[g].name.is_some()) {
            add(&mut groups[g], i, &shapes);
        } else if let Some((&first, rest)) = hits.split_first() {
            for &g in rest.iter().rev() {
                let other = groups.remove(g);
                for m in other.members {
                    groups[first].members.push(m);
                }
                for (n, s) in other.shapes {
                    groups[first].shapes.entry(n).or_insert(s);
                }
            }
            add(&mut groups[first], i, &shapes);
        } else {
            let mut g = BaseGroup {
                name: None,
                members: Vec::new(),
                shapes: BTreeMap::new(),
            };
            add(&mut g, i, &shapes);
            groups.push(g);
        }
    }
    for g in &mut groups {
        g.members.sort_unstable();
    }
    groups
}

/// A short description of a group for messages: its base, members and one module.
pub fn describe_group(g: &BaseGroup, paths: &[PathBuf]) -> String {
    let shown = 3;
    let mut names: Vec<String> = g
        .members
        .iter()
        .take(shown)
        .filter_map(|&i| paths.get(i).map(|p| p.display().to_string()))
        .collect();
    if g.members.len() > shown {
        names.push(format!("and {} more", g.members.len() - shown));
    }
    let example = g
        .shapes
        .iter()
        .next()
        .map(|(n, (i, o))| format!(", e.g. `{n}` {i} -> {o}"))
        .unwrap_or_default();
    format!(
        "{} ({} adapter{}: {}; {} module{}{example})",
        g.label(),
        g.members.len(),
        if g.members.len() == 1 { "" } else { "s" },
        names.join(", "),
        g.shapes.len(),
        if g.shapes.len() == 1 { "" } else { "s" },
    )
}

/// The groups of `adapters`, or an [`Error::Usage`] naming every group when there are
/// several; `escape` names the flag that allows a mix (`--allow-mixed-bases`).
pub fn refuse_mixed(adapters: &[Adapter], escape: &str) -> Result<Vec<BaseGroup>> {
    let groups = group_by_base(adapters);
    if groups.len() <= 1 {
        return Ok(groups);
    }
    let paths: Vec<PathBuf> = adapters.iter().map(|a| a.path.clone()).collect();
    let listed: Vec<String> = groups.iter().map(|g| describe_group(g, &paths)).collect();
    // Named groups whose modules agree wherever they meet may be two names of one model.
    let mut union: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut agree = true;
    let mut meet = false;
    for g in &groups {
        agree &= g.name.is_some();
        for (n, s) in &g.shapes {
            match union.get(n) {
                Some(t) if t != s => agree = false,
                Some(_) => meet = true,
                None => {
                    union.insert(n.clone(), *s);
                }
            }
        }
    }
    let hint = if agree && meet {
        format!(
            " (their modules agree in name and shape wherever they meet: if these names are one \
             model, pass {escape})"
        )
    } else {
        String::new()
    };
    Err(Error::Usage(format!(
        "expected adapters of one base model, found {} groups: {}. A subspace mixes only \
         adapters of one base: give each group on its own, or pass {escape} if they share one \
         base model after all{hint}",
        groups.len(),
        listed.join("; and ")
    )))
}
