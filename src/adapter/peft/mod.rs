//! HF PEFT adapter folders: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Scaling follows PEFT (checked against peft 0.21 `tuners/lora`): s = lora_alpha/r, or
//! lora_alpha/√r with `use_rslora`; `rank_pattern` and `alpha_pattern` override r and alpha per
//! module, their keys being regexes matched as `re.match(rf"(.*\.)?({key})$", name)`, first
//! key in file order wins. `target_modules` is a list of name suffixes or one regex that must
//! match the whole name (`re.fullmatch`).
//!
//! Where things are: the config (`config.rs`), the weight keys (`keys.rs`), reading a folder
//! or one in memory (`read.rs`) and writing one (`write.rs`).

mod config;
mod keys;
mod read;
mod write;

pub use config::{PeftConfig, TargetModules};
pub use keys::canonical_module_name;
pub use read::{from_memory, open};
pub use write::{PassThrough, PeftWriteOptions, pad_to_uniform_rank, pass_through, write};

use std::path::{Path, PathBuf};

/// Name of the PEFT config file in an adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";

/// Name of the PEFT weights file in an adapter folder.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Name of the pickled weights file that older PEFT versions wrote (refused).
pub const PICKLE_FILE: &str = "adapter_model.bin";

/// The weights path of a PEFT folder (for callers that report it).
pub fn weights_path(dir: &Path) -> PathBuf {
    dir.join(WEIGHTS_FILE)
}
