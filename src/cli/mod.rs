//! The `elx` command line: one file per subcommand, each a thin layer over the library
//! (argument parsing, calls, printing). No math lives here.
//!
//! To add a subcommand: a file with an `Args` struct (clap derive) and a `run(args)`
//! function, a variant in [`Command`] and an arm in [`run`].

//! Everything a subcommand prints goes through [`outln!`] / [`out!`] (stdout) and
//! [`errln!`] / [`warn`] (stderr): an I/O error (a full disk, `> /dev/full`) becomes the
//! crate's [`Error::Io`] naming `<stdout>` or `<stderr>` (exit 1), never a panic, and control
//! characters other than newlines are escaped on the way out ([`printable`]).

/// `println!` for a subcommand: writes a line to stdout, an I/O error becomes an
/// [`Error::Io`] on `<stdout>` (use with `?`).
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for a subcommand ([`outln!`] without the newline).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` for a subcommand: an I/O error becomes an [`Error::Io`] on `<stderr>`.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod bind;
pub mod bundle;
pub mod demo;
pub mod demo_generation;
pub mod examples;
pub mod extract;
pub mod finetune;
pub mod generate;
pub mod import_gguf;
pub mod import_hf;
pub mod inspect;
pub mod leave_one_out;
pub mod leave_one_out_report;
pub mod plot;
pub mod plot_capture;
pub mod plot_curve;
pub mod plot_lm_curves;
pub mod project;
pub mod reconstruct;
pub mod run;
pub mod score;

use clap::{Parser, Subcommand};
use eigenlorax::serve::Backend;
use eigenlorax::serve::ExecutionProvider;
use eigenlorax::task::Pooling;
use eigenlorax::{Error, Result};
use std::io::IsTerminal;
use std::path::Path;

/// `--grad`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradArg {
    /// Exact gradients through a training graph.
    Exact,
    /// Forward-only SPSA estimates.
    Spsa,
}

impl GradArg {
    /// The library's mode.
    pub fn mode(self) -> eigenlorax::finetune::GradMode {
        match self {
            GradArg::Exact => eigenlorax::finetune::GradMode::Exact,
            GradArg::Spsa => eigenlorax::finetune::GradMode::Spsa,
        }
    }
}

/// Which inference engine runs the patched graph (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// tract: pure Rust, CPU, always built (unless `--no-default-features`).
    Tract,
    /// ONNX Runtime (feature `ort`; library from ORT_DYLIB_PATH), CPU/CUDA/TensorRT.
    Ort,
}

impl BackendArg {
    /// The library's [`Backend`] for `--backend` and `--ep`; `--ep` applies to ort only.
    pub fn with_ep(self, ep: EpArg) -> Result<Backend> {
        let ep = ExecutionProvider::from(ep);
        match self {
            BackendArg::Tract if ep != ExecutionProvider::Cpu => Err(Error::Usage(
                "--ep applies to --backend ort; tract runs on the CPU".into(),
            )),
            BackendArg::Tract => Ok(Backend::Tract),
            BackendArg::Ort => Ok(Backend::Ort(ep)),
        }
    }
}

/// Where ONNX Runtime runs the graph (`--ep`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EpArg {
    /// ONNX Runtime's CPU provider (always there).
    Cpu,
    /// NVIDIA CUDA (needs a GPU build of ONNX Runtime and a GPU).
    Cuda,
    /// NVIDIA TensorRT, with CUDA behind it for the nodes TensorRT does not take.
    #[value(name = "tensorrt")]
    TensorRt,
}

impl From<EpArg> for ExecutionProvider {
    fn from(ep: EpArg) -> Self {
        match ep {
            EpArg::Cpu => ExecutionProvider::Cpu,
            EpArg::Cuda => ExecutionProvider::Cuda,
            EpArg::TensorRt => ExecutionProvider::TensorRt,
        }
    }
}

/// How per-token hidden states become one vector per row (`--pooling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolingArg {
    /// Mean over the tokens whose attention mask is 1 (sentence-transformers' default).
    Mean,
    /// The first token's state (BERT's [CLS]).
    Cls,
    /// The output as it is, one flattened row per batch row.
    None,
}

impl From<PoolingArg> for Pooling {
    fn from(p: PoolingArg) -> Self {
        match p {
            PoolingArg::Mean => Pooling::Mean,
            PoolingArg::Cls => Pooling::Cls,
            PoolingArg::None => Pooling::None,
        }
    }
}

/// EigenLoRAx at the edge: recycle LoRA adapters into one principal subspace, express tasks
/// as a few KB of coefficients in it.
#[derive(Parser, Debug)]
#[command(name = "elx", version, about, long_about = None)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands. Each one's long help (`--help`) ends with its examples ([`examples`]).
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Will recycling pay? Diagnostics and leave-one-out on two real task families (the README's main command).
    #[command(after_long_help = examples::DEMO)]
    Demo(demo::Args),
    /// Extract a per-module principal subspace from N LoRA adapters into a bundle (.elxb).
    #[command(after_long_help = examples::EXTRACT)]
    Extract(extract::Args),
    /// Work on bundles as files: merge the shards of one extraction.
    #[command(after_long_help = examples::BUNDLE)]
    Bundle(bundle::Args),
    /// Express one adapter as coefficients (.elxc) in a bundle's subspace.
    #[command(after_long_help = examples::PROJECT)]
    Project(project::Args),
    /// Rebuild a standard PEFT adapter folder from a coefficient file and its bundle.
    #[command(after_long_help = examples::RECONSTRUCT)]
    Reconstruct(reconstruct::Args),
    /// Show what a bundle or coefficient file holds; measure adapters against a bundle.
    #[command(after_long_help = examples::INSPECT)]
    Inspect(inspect::Args),
    /// Run the base model with task coefficients on text or tensors (tract or ONNX Runtime).
    #[command(after_long_help = examples::RUN)]
    Run(run::RunArgs),
    /// Bind a bundle to a base ONNX model (module -> MatMul/Gemm node, model hash).
    #[command(after_long_help = examples::BIND)]
    Bind(bind::BindArgs),
    /// Build the ONNX graph of a BERT encoder from a HF folder (config.json, model.safetensors).
    #[command(after_long_help = examples::IMPORT_HF)]
    ImportHf(import_hf::ImportHfArgs),
    /// Build the ONNX decoder graph (KV cache) of a Llama-family GGUF file into a folder.
    #[command(after_long_help = examples::IMPORT_GGUF)]
    ImportGguf(import_gguf::ImportGgufArgs),
    /// Generate text from a decoder with a task's coefficients, streaming tokens.
    #[command(after_long_help = examples::GENERATE)]
    Generate(generate::GenerateArgs),
    /// Train a new task on the device: an encoder's coefficients and head (exact gradients, or
    /// SPSA), or a decoder's coefficients from prompt/answer pairs (--objective lm).
    #[command(after_long_help = examples::FINETUNE)]
    Finetune(finetune::FinetuneArgs),
    /// Score a decoder task on prompt/answer pairs: Rouge-L, exact match, reference NLL.
    #[command(after_long_help = examples::SCORE)]
    Score(score::ScoreArgs),
    /// Leave-one-out on a family of decoder generation tasks: zero-shot, in-context and
    /// device-trained rows against each task's own LoRA (Rouge-L, exact match, NLL).
    #[command(after_long_help = examples::LEAVE_ONE_OUT)]
    LeaveOneOut(leave_one_out::Args),
    /// Merge `elx leave-one-out` runs: the tables, the few-shot comparison against a random
    /// basis and the host's LoRA, and the convergence plots.
    #[command(after_long_help = examples::LEAVE_ONE_OUT_REPORT)]
    LeaveOneOutReport(leave_one_out_report::Args),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Extract(a) => extract::run(a),
        Command::Bundle(a) => bundle::run(a),
        Command::Project(a) => project::run(a),
        Command::Reconstruct(a) => reconstruct::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Run(a) => run::run(&a),
        Command::Bind(a) => bind::run(&a),
        Command::Finetune(a) => finetune::run(&a),
        Command::ImportHf(a) => import_hf::run(&a),
        Command::ImportGguf(a) => import_gguf::run(&a),
        Command::Generate(a) => generate::run(&a),
        Command::Score(a) => score::run(&a),
        Command::LeaveOneOut(a) => leave_one_out::run(&a),
        Command::LeaveOneOutReport(a) => leave_one_out_report::run(&a),
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal (logs, pipes, tests).
pub fn progress_bar(len: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}") {
        bar.set_style(style);
    }
    bar
}

/// Refuses an output (`flag` names it: "-o", "--checkpoint") that is one of the inputs:
/// files given directly, or the files inside a given folder (a PEFT adapter, an HF model).
/// Nothing has been written when this fails.
pub fn refuse_clobber(output: &Path, inputs: &[&Path], flag: &str) -> Result<()> {
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for p in inputs {
        if p.is_dir() {
            if let Ok(list) = std::fs::read_dir(p) {
                files.extend(list.flatten().map(|e| e.path()));
            }
        } else {
            files.push(p.to_path_buf());
        }
    }
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    eigenlorax::util::refuse_clobber(output, &refs, flag)
}

/// Prints a warning on stderr (an I/O error is an [`Error::Io`] on `<stderr>`).
pub fn warn(message: impl AsRef<str>) -> Result<()> {
    write_stderr(format_args!("warning: {}\n", message.as_ref()))
}

/// The name standing for the standard output in errors (`Error::Io { path: "<stdout>" }`).
pub const STDOUT: &str = "<stdout>";
/// The name standing for the standard error in errors.
pub const STDERR: &str = "<stderr>";

/// Writes `args` to stdout with [`printable_keep_newlines`]; an I/O error becomes
/// [`Error::Io`] on [`STDOUT`]. What [`outln!`] and [`out!`] call.
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> Result<()> {
    write_to(&mut std::io::stdout().lock(), args).map_err(|e| Error::io(STDOUT, e))
}

/// [`write_stdout`] on stderr ([`STDERR`] in errors). What [`errln!`] and [`warn`] call.
pub fn write_stderr(args: std::fmt::Arguments<'_>) -> Result<()> {
    write_to(&mut std::io::stderr().lock(), args).map_err(|e| Error::io(STDERR, e))
}

/// Writes `args` to `w`, control characters but newlines escaped, and flushes (stdout is
/// line-buffered: a failing write must fail here, not in a destructor that cannot report).
pub fn write_to(w: &mut dyn std::io::Write, args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let text = match args.as_str() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(args.to_string()),
    };
    w.write_all(printable_keep_newlines(&text).as_bytes())?;
    w.flush()
}

/// Writes generated text to stdout as it streams, and flushes: control characters escaped as
/// everywhere ([`printable`]), but newlines and tabs kept (generated code has both).
pub fn write_generated(text: &str) -> Result<()> {
    let escaped = |c: char| c.is_control() && c != '\n' && c != '\t';
    let shown: std::borrow::Cow<'_, str> = if text.chars().any(escaped) {
        text.chars()
            .map(|c| {
                if escaped(c) {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        text.into()
    };
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, shown.as_bytes())
        .and_then(|()| std::io::Write::flush(&mut out))
        .map_err(|e| Error::io(STDOUT, e))
}

/// Collects the first error of writes made where `?` cannot reach (a progress callback
/// that returns nothing); [`LogSink::finish`] returns it.
#[derive(Default)]
pub struct LogSink {
    first: Option<Error>,
}

impl LogSink {
    /// Writes a line to stderr, keeping the first error.
    pub fn line(&mut self, args: std::fmt::Arguments<'_>) {
        if self.first.is_none()
            && let Err(e) = write_stderr(format_args!("{args}\n"))
        {
            self.first = Some(e);
        }
    }

    /// The first write error, if any.
    pub fn finish(self) -> Result<()> {
        self.first.map_or(Ok(()), Err)
    }
}

/// Size of a file in human units ("12.3 KiB"); "?" when it cannot be read.
pub fn file_size(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => human_bytes(m.len()),
        Err(_) => "?".into(),
    }
}

/// Bytes in human units.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{n} B, {v:.1} {}", UNITS[u])
}

/// A plain text table: left-aligned first column, right-aligned others.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    left: Vec<usize>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            left: vec![0],
        }
    }

    /// Left-aligns these columns too (text columns).
    pub fn left(mut self, cols: &[usize]) -> Table {
        self.left.extend_from_slice(cols);
        self
    }

    /// Appends a row (missing cells print empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders with two spaces between columns.
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut width = vec![0usize; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in width.iter().enumerate() {
                let c = r.get(i).map(String::as_str).unwrap_or("");
                if i == 0 {
                    line.push_str(&format!("{c:<w$}"));
                } else if self.left.contains(&i) {
                    line.push_str(&format!("  {c:<w$}"));
                } else {
                    line.push_str(&format!("  {c:>w$}"));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A share in [0, 1] as a percentage with one decimal; "n/a" when not finite.
pub fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", 100.0 * x)
    } else {
        "n/a".into()
    }
}

/// `s` with its control characters escaped (`\u{1b}`, `\n`), for names and labels read from
/// a user's files: a task name or label holding ANSI escapes or newlines must not drive the
/// terminal or fake an output line. The one escaping function of the command line: every
/// user-supplied string printed goes through it, and [`write_stdout`] / [`write_stderr`]
/// apply it to whole lines as well ([`printable_keep_newlines`]).
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    escape_controls(s, false)
}

/// [`printable`] keeping `\n`, for whole lines of output: the net under every line printed.
pub fn printable_keep_newlines(s: &str) -> std::borrow::Cow<'_, str> {
    escape_controls(s, true)
}

fn escape_controls(s: &str, keep_newlines: bool) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c.is_control() && !(keep_newlines && c == '\n');
    if !s.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(s);
    }
    s.chars()
        .map(|c| {
            if escaped(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// A relative error in scientific notation; "n/a" when not finite.
pub fn sci(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3e}")
    } else {
        "n/a".into()
    }
}
