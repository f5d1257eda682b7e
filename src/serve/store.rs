//! A thread-safe store of task coefficients, prepared once for the patched graph.
//!
//! Each task is converted at load to f32 tensors laid out as the patched graph's coefficient
//! inputs expect (alpha_Aᵀ [1, K_A, r_max], alpha_Bᵀ [1, r_max, K_B], zero-padded when the
//! task's rank is below r_max), plus an optional backend payload `E` built from them once
//! (e.g. tract tensors). Tasks live behind `Arc`: a run clones an `Arc` and reads immutable
//! data, so replacing or adding a task while others run never tears coefficients, and
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

/// One coefficient input's data for one task (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct CoeffTensor {
    /// Graph input name.
    pub name: String,
    /// Shape with a leading task axis of 1: [1, K_A, r] or [1, r, K_B].
    pub shape: [usize; 3],
    /// Values, `shape.iter().product()` of them.
    pub data: Vec<f32>,
}

/// A task's prepared coefficients, backend-independent.
#[derive(Clone, Debug)]
pub struct TaskData {
    /// Task name (from the coefficient file).
    pub name: String,
    /// File it was loaded from, if any.
    pub path: Option<PathBuf>,
    /// Two tensors per [`CoeffInput`], in its order: alpha_Aᵀ then alpha_Bᵀ.
    pub tensors: Vec<CoeffTensor>,
    /// The task's head, if the file has one.
    pub head: Option<Head>,
}

impl TaskData {
    /// The (alpha_Aᵀ, alpha_Bᵀ) tensors of the i-th coefficient input.
    pub fn input(&self, i: usize) -> Option<(&CoeffTensor, &CoeffTensor)> {
        Some((self.tensors.get(2 * i)?, self.tensors.get(2 * i + 1)?))
    }
}

/// A task: its data and the backend payload prepared from it.
#[derive(Debug)]
pub struct Task<E = ()> {
    /// The coefficients as f32 tensors.
    pub data: TaskData,
    /// Backend payload (e.g. ready-made engine tensors).
    pub extra: E,
}

/// Builds a backend payload from a task's data.
pub type Prepare<E> = Box<dyn Fn(&TaskData) -> Result<E> + Send + Sync>;

/// Loaded tasks of one bundle; see the module docs.
pub struct TaskStore<E = ()> {
    manifest: Manifest,
    inputs: Vec<CoeffInput>,
    prepare: Prepare<E>,
    /// Slot i holds task i; an unloaded task leaves `None`, so ids are never reused.
    tasks: RwLock<Vec<Option<Arc<Task<E>>>>>,
}

impl TaskStore<()> {
    /// A store without backend payload.
    pub fn new(manifest: &Manifest, inputs: &[CoeffInput]) -> Self {
        Self::with_prepare(manifest, inputs, Box::new(|_| Ok(())))
    }
}

impl<E> TaskStore<E> {
    /// A store that builds each task's payload with `prepare` once, at load.
    pub fn with_prepare(manifest: &Manifest, inputs: &[CoeffInput], prepare: Prepare<E>) -> Self {
        TaskStore {
            manifest: manifest.clone(),
            inputs: inputs.to_vec(),
            prepare,
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
    pub fn get(&self, id: TaskId) -> Result<Arc<Task<E>>> {
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
                tasks.len()
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
            .position(|t| t.as_ref().is_some_and(|t| t.data.name == name))
            .map(TaskId)
    }

    /// Converts a coefficient file into the patched graph's layout and builds its payload.
    fn build(&self, c: &CoeffFile, path: Option<&Path>) -> Result<Task<E>> {
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
        let mut tensors = Vec::with_capacity(2 * self.inputs.len());
        for ci in &self.inputs {
            let (k_a, k_b, rm) = (ci.k_a, ci.k_b, ci.r);
            let mut ta = vec![0f32; k_a * rm];
            let mut tb = vec![0f32; rm * k_b];
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
                // The flat parameter layout, then the graph's transposition of it: the same
                // path the finetuner's trial coefficients take.
                let mut flat = vec![0f32; l.len()];
                co.write_params(&l, &mut flat);
                let (a, b) = flat.split_at(rm * k_a);
                write_alpha_a_t(&l, a, &mut ta);
                write_alpha_b_t(&l, b, &mut tb);
                if let Some(bad) = ta.iter().chain(tb.iter()).find(|v| !v.is_finite()) {
                    return Err(Error::bad_tensor(
                        &src,
                        format!("{}.alpha_A", ci.module),
                        format!("expected finite f32 coefficients, found {bad}"),
                    ));
                }
            }
            tensors.push(CoeffTensor {
                name: ci.alpha_a.clone(),
                shape: [1, k_a, rm],
                data: ta,
            });
            tensors.push(CoeffTensor {
                name: ci.alpha_b.clone(),
                shape: [1, rm, k_b],
                data: tb,
            });
        }
        let data = TaskData {
            name: c.task.clone(),
            path: path.map(Path::to_path_buf),
            tensors,
            head: c.head.clone(),
        };
        let extra = (self.prepare)(&data)?;
        Ok(Task { data, extra })
    }
}
