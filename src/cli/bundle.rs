//! `elx bundle merge PART... -o OUT`

use super::file_size;
use eigenlorax::Result;
use eigenlorax::bundle::merge;
use std::path::{Path, PathBuf};

/// Arguments of `elx bundle`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to do with bundles.
    #[command(subcommand)]
    pub action: Action,
}

/// `elx bundle` actions.
#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Join bundles extracted from the same adapters over disjoint modules (`elx extract
    /// --shard` / `--modules`) into the one-shot extraction's bundle: same bytes, same id.
    Merge {
        /// The parts (.elxb), at least two.
        #[arg(required = true, num_args = 2..)]
        parts: Vec<PathBuf>,
        /// Output bundle (.elxb).
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// Runs `elx bundle`.
pub fn run(a: Args) -> Result<()> {
    match a.action {
        Action::Merge { parts, output } => {
            let inputs: Vec<&Path> = parts.iter().map(|p| p.as_path()).collect();
            super::refuse_clobber(&output, &inputs, "-o")?;
            let manifest = merge::merge(&parts, &output)?;
            // A shard left out still merges (every part is a valid bundle); the sources say
            // how many modules an adapter has, so a short count is worth a word.
            if let Some(most) = manifest.sources.iter().max_by_key(|s| s.modules)
                && most.modules > manifest.modules.len()
            {
                super::warn(format!(
                    "the merged bundle has {} modules but {} has {}: is a part missing?",
                    manifest.modules.len(),
                    most.path,
                    most.modules
                ))?;
            }
            outln!("subspace id: {}", manifest.subspace_id)?;
            outln!(
                "wrote {} ({} modules from {} parts, {} adapters, {})",
                output.display(),
                manifest.modules.len(),
                parts.len(),
                manifest.sources.len(),
                file_size(&output)
            )?;
            Ok(())
        }
    }
}
