//! A thread-safe store of task coefficients, prepared once for the patched graph.
//!
//! Each task is converted at load to one f32 buffer laid out as the patched graph's
//! coefficient inputs expect (per input alpha_Aᵀ [1, K_A, r_max] then alpha_Bᵀ [1, r_max,
//! K_B], zero-padded when the task's rank is below r_max). That buffer is the only copy of a
//! task's coefficients: names and shapes are the store's, shared by every task, and engines
//! read the buffer directly (ONNX Runtime borrows it; tract copies it into tensors it reuses
//! across runs). Tasks live behind `Arc`: a run clones an `Arc` and reads immutable data, so
//! replacing, adding or unloading a task while others run never tears coefficients, and
//! selecting a task allocates nothing.

use crate::bundle::{CoeffFile, Head, Manifest};
use crate::error::{Error, Result};
use crate::graph::patch::CoeffInput;
use crate::task::{write_alpha_a_t, write_alpha_b_t};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Handle of a task in a [`TaskStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub usize);

/// One coefficient input's data for one task, a view into [`TaskData::values`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CoeffTensor<'a> {
    /// Graph input name.
    pub name: &'a str,
    /// Shape with a leading task axis of 1: [1, K_A, r] or [1, r, K_B].
    pub shape: [usize; 3],
    /// Values, `shape.iter().product()` of them, row-major.
    pub data: &'a [f32],
}

/// The coefficient values a task holds for `inputs`.
pub fn coeff_len(inputs: &[CoeffInput]) -> usize {
    inputs.iter().map(|c| c.r * (c.k_a + c.k_b)).sum()
}

/// A task's prepared coefficients, backend-independent.
#[derive(Clone, Debug)]
pub struct TaskData {
    /// Task name (from the coefficient file).
    pub name: String,
    /// File it was loaded from, if any.
    pub path: Option<PathBuf>,
    /// Every coefficient, per [`CoeffInput`] in the store's order: alpha_Aᵀ [1, K_A, r] then
    /// alpha_Bᵀ [1, r, K_B], row-major ([`coeff_len`] values).
    pub values: Box<[f32]>,
    /// The task's head, if the file has one.
    pub head: Option<Head>,
}

impl TaskData {
    /// All-zero coefficients for `inputs` (the base model; a finetuner's trial buffer).
    pub fn zeros(name: &str, inputs: &[CoeffInput]) -> TaskData {
        TaskData {
            name: name.to_string(),
            path: None,
            values: vec![0f32; coeff_len(inputs)].into_boxed_slice(),
            head: None,
        }
    }

    /// Checks that the values fit `inputs` (a task built for another graph does not).
    pub fn check(&self, inputs: &[CoeffInput]) -> Result<()> {
        let want = coeff_len(inputs);
        if self.values.len() != want {
            return Err(Error::Usage(format!(
                "task `{}` holds {} coefficient values, the graph takes {want}",
                self.name,
                self.values.len()
            )));
        }
        Ok(())
    }

    /// The coefficient tensors for `inputs`, two per input (alpha_Aᵀ then alpha_Bᵀ), in
    /// graph order; fewer when the values are too short (see [`TaskData::check`]).
    pub fn tensors<'a>(
        &'a self,
        inputs: &'a [CoeffInput],
    ) -> impl Iterator<Item = CoeffTensor<'a>> + 'a {
        let mut rest: &'a [f32] = &self.values;
        inputs
            .iter()
            .flat_map(|c| {
                [
                    (c.alpha_a.as_str(), [1, c.k_a, c.r]),
                    (c.alpha_b.as_str(), [1, c.r, c.k_b]),
                ]
            })
            .map_while(move |(name, shape)| {
                let n = shape[1] * shape[2];
                if rest.len() < n {
                    return None;
                }
                let (data, tail) = rest.split_at(n);
                rest = tail;
                Some(CoeffTensor { name, shape, data })
            })
    }

    /// The (alpha_Aᵀ, alpha_Bᵀ) tensors of the i-th coefficient input.
    pub fn input<'a>(
        &'a self,
        inputs: &'a [CoeffInput],
        i: usize,
    ) -> Option<(CoeffTensor<'a>, CoeffTensor<'a>)> {
        let mut it = self.tensors(inputs).skip(2 * i);
        Some((it.next()?, it.next()?))
    }

    /// The (alpha_Aᵀ, alpha_Bᵀ) values of each input, writable, in `inputs` order (the
    /// values must fit: [`TaskData::check`]).
    pub fn inputs_mut<'a>(
        &'a mut self,
        inputs: &[CoeffInput],
    ) -> Vec<(&'a mut [f32], &'a mut [f32])> {
        let mut rest: &'a mut [f32] = &mut self.values;
        let mut out = Vec::with_capacity(inputs.len());
        for c in inputs {
            let (a, tail) = std::mem::take(&mut rest).split_at_mut(c.k_a * c.r);
            let (b, tail) = tail.split_at_mut(c.r * c.k_b);
            rest = tail;
            out.push((a, b));
        }
        out
    }
}

/// A task in a store: its data behind an `Arc`.
pub type Task = TaskData;

/// Loaded tasks of one bundle; see the module docs.
pub struct TaskStore {
    manifest: Manifest,
    inputs: Vec<CoeffInput>,
    /// Slot i holds task i; an unloaded task leaves `None`, so ids are never reused.
    tasks: RwLock<Vec<Option<Arc<Task>>>>,
}

impl TaskStore {
    /// An empty store for the coefficient inputs of a graph patched for `manifest`'s bundle.
    pub fn new(manifest: &Manifest, inputs: &[CoeffInput]) -> Self {
        TaskStore {
            manifest: manifest.clone(),
            inputs: inputs.to_vec(),
            tasks: RwLock::new(Vec::new()),
        }
    }

    /// The coefficient inputs this store prepares tensors for.
    pub fn inputs(&self) -> &[CoeffInput] {
        &self.inputs
    }

    /// The subspace id every task must belong to.
    pub fn subspace_id(&self) -> &str {
        &self.manifest.subspace_id
    }

    /// Loads a coefficient file (checked against the bundle's subspace id once, here).
    pub fn load(&self, path: &Path) -> Result<TaskId> {
        let coeffs = CoeffFile::read_for(path, &self.manifest)?;
        self.insert_from(&coeffs, Some(path))
    }

    /// Loads a coefficient file held in memory (checked like [`TaskStore::load`]); `name`
    /// stands for its path in error messages.
    pub fn load_bytes(&self, name: &Path, bytes: Vec<u8>) -> Result<TaskId> {
        let coeffs = CoeffFile::from_bytes_for(name, bytes, &self.manifest)?;
        self.insert_from(&coeffs, None)
    }

    /// Adds coefficients already in memory.
    pub fn insert(&self, coeffs: &CoeffFile) -> Result<TaskId> {
        self.insert_from(coeffs, None)
    }

    fn insert_from(&self, coeffs: &CoeffFile, path: Option<&Path>) -> Result<TaskId> {
        let task = Arc::new(self.build(coeffs, path)?);
        let mut tasks = self
            .tasks
            .write()
            .map_err(|_| Error::Internal("task store lock poisoned".into()))?;
        tasks.push(Some(task));
        Ok(TaskId(tasks.len() - 1))
    }

    /// Replaces a task's coefficients (e.g. after on-device training). Runs already holding
    /// the old task finish with it; later runs see the new one.
    pub fn replace(&self, id: TaskId, coeffs: &CoeffFile) -> Result<()> {
        let task = Arc::new(self.build(coeffs, None)?);
        let mut tasks = self
            .tasks
            .write()
            .map_err(|_| Error::Internal("task store lock poisoned".into()))?;
        let slot = tasks
            .get_mut(id.0)
            .filter(|s| s.is_some())
            .ok_or_else(|| Error::Usage(format!("no task {} in the store", id.0)))?;
        *slot = Some(task);
        Ok(())
    }

    /// Unloads a task: its id stays unused. Runs already holding it finish with it; its
    /// memory goes with the last of them.
    pub fn unload(&self, id: TaskId) -> Result<()> {
        let mut tasks = self
            .tasks
            .write()
            .map_err(|_| Error::Internal("task store lock poisoned".into()))?;
        match tasks.get_mut(id.0) {
            Some(slot @ Some(_)) => {
                *slot = None;
                Ok(())
            }
            Some(None) => Err(Error::Usage(format!("task {} was unloaded", id.0))),
            None => Err(Error::Usage(format!(
                "no task {} in the store ({} ids given out)",
                id.0,
                tasks.len()
            ))),
        }
    }

    /// The ids of the loaded tasks, in load order.
    pub fn ids(&self) -> Vec<TaskId> {
        self.tasks
            .read()
            .map(|t| {
                t.iter()
                    .enumerate()
                    .filter(|(_, s)| s.is_some())
                    .map(|(i, _)| TaskId(i))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The task `id` (an `Arc` clone: no allocation, no copy).
    pub fn get(&self, id: TaskId) -> Result<Arc<Task>> {
        let tasks = self
            .tasks
            .read()
            .map_err(|_| Error::Internal("task store lock poisoned".into()))?;
        match tasks.get(id.0) {
            Some(Some(t)) => Ok(Arc::clone(t)),
            Some(None) => Err(Error::Usage(format!("task {} was unloaded", id.0))),
            None => Err(Error::Usage(format!(
                "no task {} in the store ({} ids given out)",
                id.0,
                tasks.iter().flatten().count()
            ))),
        }
    }

    /// How many tasks are loaded.
    pub fn len(&self) -> usize {
        self.tasks
            .read()
            .map(|t| t.iter().flatten().count())
            .unwrap_or(0)
    }

    /// Whether no task is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first task named `name`.
    pub fn find(&self, name: &str) -> Option<TaskId> {
        let tasks = self.tasks.read().ok()?;
        tasks
            .iter()
            .position(|t| t.as_ref().is_some_and(|t| t.name == name))
            .map(TaskId)
    }

    /// Converts a coefficient file into the patched graph's layout.
    fn build(&self, c: &CoeffFile, path: Option<&Path>) -> Result<Task> {
        let src: PathBuf = path
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(format!("<task {}>", c.task)));
        if c.subspace_id != self.manifest.subspace_id {
            return Err(Error::SubspaceMismatch {
                path: src,
                expected: self.manifest.subspace_id.clone(),
                found: c.subspace_id.clone(),
            });
        }
        for m in c.modules.keys() {
            if !self.inputs.iter().any(|ci| &ci.module == m) {
                return Err(Error::bad_tensor(
                    &src,
                    format!("{m}.alpha_A"),
                    "expected coefficients only for modules bound in the base model; this one is not",
                ));
            }
        }
        let mut task = TaskData::zeros(&c.task, &self.inputs);
        task.path = path.map(Path::to_path_buf);
        task.head = c.head.clone();
        let mut flat = Vec::new();
        for (ci, (ta, tb)) in self.inputs.iter().zip(task.inputs_mut(&self.inputs)) {
            let (k_a, k_b, rm) = (ci.k_a, ci.k_b, ci.r);
            if let Some(co) = c.modules.get(&ci.module) {
                let (aa, ab) = (&co.alpha_a, &co.alpha_b);
                let l = ci.layout();
                if !co.fits(&l) {
                    return Err(Error::bad_tensor(
                        &src,
                        format!("{}.alpha_A", ci.module),
                        format!(
                            "expected alpha_A [r x {k_a}] and alpha_B [{k_b} x r] with r <= {rm}; found alpha_A {}x{}, alpha_B {}x{}",
                            aa.nrows(),
                            aa.ncols(),
                            ab.nrows(),
                            ab.ncols()
                        ),
                    ));
                }
                let in_features = self
                    .manifest
                    .modules
                    .get(&ci.module)
                    .map_or(0, |mm| mm.in_features);
                co.check_magnitude(in_features)
                    .map_err(|m| Error::bad_tensor(&src, format!("{}.alpha_A", ci.module), m))?;
                // The flat parameter layout, then the graph's transposition of it: the same
                // path the finetuner's trial coefficients take.
                flat.clear();
                flat.resize(l.len(), 0f32);
                co.write_params(&l, &mut flat);
                let (a, b) = flat.split_at(rm * k_a);
                write_alpha_a_t(&l, a, ta);
                write_alpha_b_t(&l, b, tb);
                if let Some(bad) = ta.iter().chain(tb.iter()).find(|v| !v.is_finite()) {
                    return Err(Error::bad_tensor(
                        &src,
                        format!("{}.alpha_A", ci.module),
                        format!("expected finite f32 coefficients, found {bad}"),
                    ));
                }
            }
        }
        Ok(task)
    }
}
