//! Shared helpers of the fuzz targets: each input is written to a per-process scratch file
//! (the readers memory-map real files), in /dev/shm when it exists.

use std::path::PathBuf;

/// A scratch path for this process and `name` (the same path every call: inputs overwrite).
pub fn scratch(name: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("elx-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir.join(name)
}

/// Writes `bytes` to the scratch file `name` and returns its path.
pub fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch(name);
    std::fs::write(&p, bytes).expect("scratch write");
    p
}

/// The repository root (seed fixtures, the tiny BERT).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
