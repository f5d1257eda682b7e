//! Small shared helpers: atomic file writes, content hashes and a seeded Gaussian source
//! that the numpy reference in `tools/` reproduces bit for bit.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
///
/// A crash at any point leaves either the old file or the new one under `path`, never a
/// half-written one. Temporary files that killed writers left for `path` (`.NAME.tmp-PID`
/// of a process that no longer runs) are removed first. A `path` that is a symbolic link
/// keeps being one: the file it points to is replaced (e.g. `elx bind` in place on a
/// linked bundle), in that file's folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let target;
    let path = if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        target = fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        target.as_path()
    } else {
        path
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a file path", path.display())))?;
    remove_stale_temps(&dir, &file_name.to_string_lossy());
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Removes `.NAME.tmp-PID` files in `dir` whose writer process is gone (Linux: no
/// /proc/PID). Best effort: elsewhere, or on any error, nothing is removed.
fn remove_stale_temps(dir: &Path, name: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!(".{name}.tmp-");
    let Ok(list) = fs::read_dir(dir) else {
        return;
    };
    for entry in list.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Refuses to write `output` when it is one of `inputs`: the same path after resolving
/// symbolic links and `..`, or the same file through a hard link (same device and inode).
/// An output that does not exist yet cannot be an input. `what` names the flag in the error
/// ("-o", "--checkpoint").
pub fn refuse_clobber(output: &Path, inputs: &[&Path], what: &str) -> Result<()> {
    match clobbered_input(output, inputs) {
        Some(input) => Err(Error::Usage(format!(
            "{what} {} is also an input ({}); writing it would destroy that input, so nothing was written",
            output.display(),
            input.display()
        ))),
        None => Ok(()),
    }
}

/// The input among `inputs` that `output` would overwrite ([`refuse_clobber`]'s test).
fn clobbered_input<'a>(output: &Path, inputs: &[&'a Path]) -> Option<&'a Path> {
    let out_meta = fs::metadata(output).ok()?;
    let out_canon = fs::canonicalize(output).ok();
    inputs.iter().copied().find(|input| {
        let same_path = out_canon.is_some() && fs::canonicalize(input).ok() == out_canon;
        let same_file = fs::metadata(input).is_ok_and(|m| same_inode(&m, &out_meta));
        same_path || same_file
    })
}

/// Makes `dir` ready to receive a command's output files: created when missing; when it
/// already holds entries, refused unless `force`, and with `force` its files are removed
/// first, so no stale file of an earlier output (an old `head.safetensors`) stays beside the
/// new ones. Refused even with `force` when it holds a subfolder (not a folder an `elx`
/// command wrote) or one of `inputs` (removing it would destroy that input).
pub fn prepare_output_dir(dir: &Path, force: bool, inputs: &[&Path]) -> Result<()> {
    if !dir.exists() {
        return fs::create_dir_all(dir).map_err(|e| Error::io(dir, e));
    }
    if !dir.is_dir() {
        return Err(Error::Usage(format!(
            "-o {} is a file; expected a folder for the adapter",
            dir.display()
        )));
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    if entries.is_empty() {
        return Ok(());
    }
    entries.sort();
    let names: Vec<String> = entries
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if !force {
        return Err(Error::Usage(format!(
            "-o {} is not empty (it holds {}); give --force to replace its contents, or choose an empty folder",
            dir.display(),
            names.join(", ")
        )));
    }
    for e in &entries {
        if e.is_dir() {
            return Err(Error::Usage(format!(
                "-o {}: --force clears an adapter folder's files, but this folder holds the folder {}; nothing was removed",
                dir.display(),
                e.display()
            )));
        }
        if let Some(input) = clobbered_input(e, inputs) {
            return Err(Error::Usage(format!(
                "-o {}: --force would remove {}, which is the input {}; nothing was removed",
                dir.display(),
                e.display(),
                input.display()
            )));
        }
    }
    for e in &entries {
        fs::remove_file(e).map_err(|err| Error::io(e, err))?;
    }
    Ok(())
}

#[cfg(unix)]
fn same_inode(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_inode(_: &fs::Metadata, _: &fs::Metadata) -> bool {
    false
}

thread_local! {
    static CATCHING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as running code whose panics are caught and turned into an
/// error (the engine calls behind `catch_unwind`), until dropped. A panic hook can ask
/// [`panics_are_caught`] and stay silent for those: the error that the panic becomes
/// reports it (`elx` does, so a caught engine panic prints no "thread 'main' panicked").
pub struct CatchingPanics(());

impl CatchingPanics {
    /// Enters a region whose panics are caught (nests).
    pub fn enter() -> Self {
        CATCHING.with(|c| c.set(c.get() + 1));
        CatchingPanics(())
    }
}

impl Drop for CatchingPanics {
    fn drop(&mut self) {
        CATCHING.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// Whether the current thread is inside a [`CatchingPanics`] region.
pub fn panics_are_caught() -> bool {
    CATCHING.with(|c| c.get() > 0)
}

/// A job for [`run_parallel`].
pub type Job<'a, T> = Box<dyn FnOnce() -> Result<T> + Send + 'a>;

/// Runs `jobs` on up to `threads` scoped threads, each taking the next job from a shared
/// queue, and returns their results in job order; the first error in job order is returned.
/// The engines' runs are single-threaded, so independent evaluations fill the cores this
/// way.
pub fn run_parallel<T: Send>(jobs: Vec<Job<'_, T>>, threads: usize) -> Result<Vec<T>> {
    use std::sync::Mutex;
    let n = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>());
    let done: Mutex<Vec<(usize, Result<T>)>> = Mutex::new(Vec::with_capacity(n));
    let work = || {
        loop {
            // Jobs are taken in order; a poisoned lock only means another worker panicked.
            let next = {
                let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.is_empty() {
                    None
                } else {
                    Some(q.remove(0))
                }
            };
            let Some((i, job)) = next else { break };
            let r = job();
            done.lock().unwrap_or_else(|p| p.into_inner()).push((i, r));
        }
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.clamp(1, n.max(1)))
            .map(|_| s.spawn(work))
            .collect();
        for h in handles {
            // A panicking job leaves its result missing, reported below.
            let _ = h.join();
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    if done.len() != n {
        return Err(Error::Usage(format!(
            "{} of {n} parallel jobs did not finish (a worker thread panicked)",
            n - done.len()
        )));
    }
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Worker threads for independent evaluations: the machine's cores.
pub fn eval_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Lowercase hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex SHA-256 of a file, streamed (the file is never held whole in memory).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A seeded source of standard normal numbers.
///
/// SplitMix64 for the integers, Box–Muller (cosine branch only) for the normals. It is
/// deliberately simple so that `tools/elx_reference.py` reproduces it exactly, which makes
/// pseudo-PCs and random-basis controls comparable across the two implementations.
#[derive(Clone, Debug)]
pub struct GaussianRng {
    state: u64,
}

impl GaussianRng {
    /// A generator whose stream depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// Next raw 64-bit value (SplitMix64).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal sample.
    pub fn next_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_uniform(); // (0, 1]: ln is finite
        let u2 = self.next_uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_jobs_return_in_order_and_report_errors_and_panics() {
        let jobs: Vec<Job<'_, usize>> = (0usize..7)
            .map(|i| Box::new(move || Ok(i * i)) as Job<'_, usize>)
            .collect();
        assert_eq!(run_parallel(jobs, 3).unwrap(), [0, 1, 4, 9, 16, 25, 36]);
        let jobs: Vec<Job<'_, usize>> = vec![
            Box::new(|| Ok(1usize)),
            Box::new(|| Err(Error::Usage("second".into()))),
            Box::new(|| Err(Error::Usage("third".into()))),
        ];
        let e = run_parallel(jobs, 2).unwrap_err().to_string();
        assert!(e.contains("second"), "{e}");
        let jobs: Vec<Job<'_, usize>> = vec![Box::new(|| Ok(1usize)), Box::new(|| panic!("job"))];
        assert!(
            run_parallel(jobs, 2)
                .unwrap_err()
                .to_string()
                .contains("did not finish")
        );
        assert!(
            run_parallel(Vec::<Job<'_, usize>>::new(), 2)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn clobbering_an_input_is_refused_through_any_path() {
        let dir = std::env::temp_dir().join(format!("elx-util-clobber-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub")).unwrap();
        let input = dir.join("in.elxb");
        fs::write(&input, b"x").unwrap();
        let dotted = dir.join("sub").join("..").join("in.elxb");
        let hard = dir.join("hard.elxb");
        fs::hard_link(&input, &hard).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&input, dir.join("soft.elxb")).unwrap();
        for out in [&input, &dotted, &hard] {
            let e = refuse_clobber(out, &[Path::new("other"), &input], "-o").unwrap_err();
            assert!(e.to_string().contains("is also an input"), "{e}");
        }
        #[cfg(unix)]
        assert!(refuse_clobber(&dir.join("soft.elxb"), &[&input], "-o").is_err());
        // A new file, or another existing file, is fine.
        let other = dir.join("other.elxb");
        refuse_clobber(&other, &[&input], "-o").unwrap();
        fs::write(&other, b"y").unwrap();
        refuse_clobber(&other, &[&input], "-o").unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_atomic_removes_temps_of_dead_writers_only() {
        let dir = std::env::temp_dir().join(format!("elx-util-stale-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // PID 1 runs; 4294967295 is above any pid_max, so no process has it.
        let dead = dir.join(".out.bin.tmp-4294967295");
        let live = dir.join(".out.bin.tmp-1");
        let other = dir.join(".other.bin.tmp-4294967295");
        for p in [&dead, &live, &other] {
            fs::write(p, b"half").unwrap();
        }
        write_atomic(&dir.join("out.bin"), b"whole").unwrap();
        assert_eq!(fs::read(dir.join("out.bin")).unwrap(), b"whole");
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn splitmix_matches_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (published reference sequence).
        let mut r = GaussianRng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn normals_have_unit_moments() {
        let mut r = GaussianRng::new(7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.next_normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        // 5 standard errors.
        assert!(mean.abs() < 5.0 / (n as f64).sqrt(), "mean {mean}");
        assert!(
            (var - 1.0).abs() < 5.0 * (2.0 / n as f64).sqrt(),
            "var {var}"
        );
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = std::env::temp_dir().join(format!("elx-util-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.bin");
        write_atomic(&p, b"first version, longer").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
        fs::remove_dir_all(&dir).unwrap();
    }
}
