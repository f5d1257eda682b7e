//! A run job: the one place that turns "this model, this bundle, this engine, this tokenizer,
//! this pooling" into a ready [`Runner`], and a batch plus its tasks into pooled rows and
//! predictions.
//!
//! `elx run`, the C API's runtime and the Python `Runtime` fill a [`RunSpec`] from their own
//! arguments and print or hand back what [`Runner::run`] returns (as ripgrep's `HiArgs`
//! builds every object its `main` uses): the engine choice, the tokenizer lookup, the output
//! choice and pooling are written here once.

use crate::bundle::{Bundle, CoeffFile, Head, Manifest};
use crate::error::{Error, Result};
use crate::serve::input::{Batch, OutputTensor, TextEncoder, find_tokenizer};
use crate::serve::store::TaskId;
use crate::serve::{Backend, Engine};
use crate::task::{Pooling, Prediction, apply_head, pool};
use std::path::PathBuf;

/// Which graph output is pooled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OutputChoice {
    /// The first output.
    #[default]
    First,
    /// The output at this index.
    Index(usize),
    /// The output of this name (checked at each run: the error lists the names).
    Name(String),
}

/// Everything a [`Runner`] is built from.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The base ONNX model the bundle is bound to.
    pub model: PathBuf,
    /// The bound bundle (.elxb).
    pub bundle: PathBuf,
    /// The engine (a provider that cannot start falls back to the CPU with a warning).
    pub backend: Backend,
    /// Whether texts will be run: only then is a tokenizer looked for and opened.
    pub text_inputs: bool,
    /// HF tokenizer.json for text inputs; `None`: `tokenizer.json` next to the model when
    /// there is one, else texts are refused (see [`Runner::text_encoder`]).
    pub tokenizer: Option<PathBuf>,
    /// Truncate texts to this many tokens (`None`: from the tokenizer files, else 512).
    pub max_length: Option<usize>,
    /// How an output becomes one vector per row.
    pub pooling: Pooling,
    /// Which output is pooled.
    pub output: OutputChoice,
}

impl RunSpec {
    /// The defaults of `elx run`: tract, the tokenizer beside the model, mean pooling of the
    /// first output.
    pub fn new(model: impl Into<PathBuf>, bundle: impl Into<PathBuf>) -> RunSpec {
        RunSpec {
            model: model.into(),
            bundle: bundle.into(),
            backend: Backend::Tract,
            text_inputs: true,
            tokenizer: None,
            max_length: None,
            pooling: Pooling::Mean,
            output: OutputChoice::First,
        }
    }
}

/// A base model patched for one bound bundle on one engine, with its tokenizer and the
/// pooling of its output. Thread-safe: tasks load while other threads run.
pub struct Runner {
    engine: Engine,
    manifest: Manifest,
    text: Option<TextEncoder>,
    /// The tokenizer path looked for, named when texts are refused.
    tokenizer_path: PathBuf,
    pooling: Pooling,
    output: OutputChoice,
}

/// One run's outputs: the raw graph outputs, the pooled rows (or why pooling failed: the raw
/// outputs are still there) and each row's task.
pub struct RunOutput {
    /// Every graph output, f32, row-major.
    pub outputs: Vec<OutputTensor>,
    /// One vector per row, pooled from the chosen output.
    pub pooled: Result<Vec<Vec<f32>>>,
    /// Per row: the task's name and head (taken before the run, so a task unloaded meanwhile
    /// fails the run itself, never the report).
    pub rows: Vec<(String, Option<Head>)>,
}

impl RunOutput {
    /// The prediction of row `row` when its task has a head: `None` without a head, an error
    /// when pooling failed.
    pub fn prediction(&self, row: usize) -> Option<Result<Prediction>> {
        let (_, head) = self.rows.get(row)?;
        let head = head.as_ref()?;
        Some(match &self.pooled {
            Ok(p) => p
                .get(row)
                .ok_or_else(|| Error::Numeric(format!("pooling lost row {row}")))
                .and_then(|v| apply_head(head, v)),
            Err(e) => Err(Error::Usage(e.to_string())),
        })
    }
}

/// Which task each row of a batch runs with.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    /// Every row with one task.
    One(TaskId),
    /// Row i with the i-th task, all in one pass.
    Each(&'a [TaskId]),
}

impl Runner {
    /// Opens the tokenizer (when there is one), reads the bundle, checks the model against
    /// its binding, patches it once and prepares the engine.
    pub fn open(spec: &RunSpec) -> Result<Runner> {
        let tokenizer = if spec.text_inputs {
            find_tokenizer(&spec.model, spec.tokenizer.as_deref())
        } else {
            None
        };
        let text = match &tokenizer {
            Some(p) => Some(TextEncoder::from_file(p, spec.max_length)?),
            None => None,
        };
        let bundle = Bundle::read(&spec.bundle)?;
        let engine = Engine::load(&spec.model, &bundle, spec.backend)?;
        Ok(Runner {
            engine,
            manifest: bundle.manifest,
            text,
            tokenizer_path: tokenizer
                .unwrap_or_else(|| crate::serve::input::tokenizer_beside(&spec.model)),
            pooling: spec.pooling,
            output: spec.output.clone(),
        })
    }

    /// The engine (tasks, specs, the backend actually running).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The subspace id of the bundle: task files must carry it.
    pub fn subspace_id(&self) -> &str {
        &self.manifest.subspace_id
    }

    /// The bundle's manifest (modules, ranks, binding).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The pooling of this runner.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The tokenizer, or an [`Error::Usage`] naming where it was looked for.
    pub fn text_encoder(&self) -> Result<&TextEncoder> {
        self.text.as_ref().ok_or_else(|| {
            Error::Usage(format!(
                "{}: expected a HF tokenizer.json for text inputs (give the tokenizer's path), found no file",
                self.tokenizer_path.display()
            ))
        })
    }

    /// Tokenizes `texts` into a batch for the model's inputs.
    pub fn encode(&self, texts: &[String]) -> Result<Batch> {
        self.text_encoder()?.encode(texts, self.engine.specs()?)
    }

    /// Adds the base model as a task: all-zero coefficients, no head.
    pub fn insert_base_task(&self) -> Result<TaskId> {
        self.engine
            .insert_task(&CoeffFile::base(&self.manifest.subspace_id))
    }

    /// Runs `batch` with its tasks and pools the chosen output.
    pub fn run(&self, batch: &Batch, rows: Rows<'_>) -> Result<RunOutput> {
        let ids: Vec<TaskId> = match rows {
            Rows::One(t) => vec![t; batch.rows],
            Rows::Each(ts) => {
                if ts.len() != batch.rows {
                    return Err(Error::Usage(format!(
                        "a mixed batch pairs row i with task i: {} rows but {} tasks",
                        batch.rows,
                        ts.len()
                    )));
                }
                ts.to_vec()
            }
        };
        // Heads first: a task unloaded from now on fails the run itself.
        let mut infos: Vec<(TaskId, String, Option<Head>)> = Vec::new();
        for &id in &ids {
            if !infos.iter().any(|(i, _, _)| *i == id) {
                let (name, head) = self.engine.task_info(id)?;
                infos.push((id, name, head));
            }
        }
        let outputs = match rows {
            Rows::One(t) => self.engine.run(batch, t)?,
            Rows::Each(ts) => self.engine.run_mixed(batch, ts)?,
        };
        let pooled = self.pool(batch, &outputs);
        let rows = ids
            .iter()
            .filter_map(|id| infos.iter().find(|(i, _, _)| i == id))
            .map(|(_, name, head)| (name.clone(), head.clone()))
            .collect();
        Ok(RunOutput {
            outputs,
            pooled,
            rows,
        })
    }

    /// Picks the output to pool and pools it with the batch's attention mask.
    fn pool(&self, batch: &Batch, outputs: &[OutputTensor]) -> Result<Vec<Vec<f32>>> {
        let o = match &self.output {
            OutputChoice::Name(name) => {
                outputs.iter().find(|o| &o.name == name).ok_or_else(|| {
                    let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
                    Error::Usage(format!(
                        "the model has no output `{name}` (it has {names:?})"
                    ))
                })?
            }
            OutputChoice::First => outputs
                .first()
                .ok_or_else(|| Error::Usage("the model has no output".into()))?,
            OutputChoice::Index(i) => outputs
                .get(*i)
                .ok_or_else(|| Error::Numeric("the run returned too few outputs".into()))?,
        };
        pool(&o.data, &o.shape, batch.mask.as_deref(), self.pooling)
    }
}
