//! `elx leave-one-out-report RESULTS.json…`: the tables, the few-shot comparison and the
//! convergence plots of one or more `elx leave-one-out` runs, merged. Runs are often split
//! (one task per process, a size per run, to share the cores); this puts them back together.

use super::leave_one_out::{ResultsFile, report};
use eigenlorax::error::{Error, Result};
use eigenlorax::eval::loo_lm::LmTaskResult;
use std::path::PathBuf;

/// Arguments of `elx leave-one-out-report`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The `results.json` files of `elx leave-one-out` runs. Rows of the same task are merged;
    /// the runs must share the settings (energy, seed, learning rate, and in-context pairs where both have that row), and a
    /// row two runs both have must agree.
    #[arg(required = true, value_name = "RESULTS.json")]
    pub results: Vec<PathBuf>,
    /// Host LoRA runs to compare and draw beside the trained rows: folders of
    /// `<task>/metrics.json` from `tools/workload/train_wordnet_gen.py train [--train-n N]`
    /// (repeatable).
    #[arg(long, value_name = "DIR")]
    pub host_curves: Vec<PathBuf>,
    /// A row's Rouge-L gap below this leaves the task out of the Rouge-L share (default: the
    /// first run's).
    #[arg(long, value_name = "GAP")]
    pub min_gap: Option<f64>,
    /// The plots' format.
    #[arg(long, value_parser = ["svg", "png"], default_value = "svg")]
    pub plot_format: String,
    /// Where the merged results.json and the plots (curves-<task>, curves-mean) go.
    #[arg(short, long, default_value = "out/leave-one-out-report")]
    pub output: PathBuf,
}

/// Runs `elx leave-one-out-report`.
pub fn run(a: &Args) -> Result<()> {
    let mut merged: Option<ResultsFile> = None;
    let mut first = PathBuf::new();
    for path in &a.results {
        let file = ResultsFile::read(path)?;
        let Some(m) = merged.as_mut() else {
            first = path.clone();
            merged = Some(file);
            continue;
        };
        // --min-gap only shapes the report, not the runs.
        // A run without an in-context row (0) merges with any.
        let settings = |f: &ResultsFile| (f.energy, f.seed, f.lr, f.in_context);
        let in_context_differs =
            m.in_context != file.in_context && m.in_context > 0 && file.in_context > 0;
        if (m.energy, m.seed, m.lr) != (file.energy, file.seed, file.lr) || in_context_differs {
            return Err(Error::bad_file(
                path,
                format!(
                    "expected the settings of {} (energy, seed, lr, in-context = {:?}), \
                     found {:?}",
                    first.display(),
                    settings(m),
                    settings(&file)
                ),
            ));
        }
        m.in_context = m.in_context.max(file.in_context);
        for task in file.tasks {
            match m.tasks.iter_mut().find(|t| t.task == task.task) {
                Some(mine) => mine.merge(task).map_err(|e| Error::bad_file(path, e))?,
                None => m.tasks.push(task),
            }
        }
        for k in file.k_sweep {
            if !m.k_sweep.contains(&k) {
                m.k_sweep.push(k);
            }
        }
    }
    let Some(mut merged) = merged else {
        return Err(Error::Usage("expected at least one results.json".into()));
    };
    if let Some(g) = a.min_gap {
        merged.min_gap = g;
    }
    merged.k_sweep.sort_unstable();
    let tasks: &[LmTaskResult] = &merged.tasks;
    std::fs::create_dir_all(&a.output).map_err(|e| Error::io(&a.output, e))?;
    report(
        tasks,
        merged.min_gap,
        &a.host_curves,
        &a.output,
        &a.plot_format,
        true,
    )?;
    let path = a.output.join("results.json");
    merged.write(&path)?;
    outln!("wrote {}", path.display())?;
    Ok(())
}
