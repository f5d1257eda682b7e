//! Atomic file writes and the checks that keep an output from overwriting an input.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
///
/// A crash at any point leaves either the old file or the new one under `path`, never a
/// half-written one. Temporary files that killed writers left for `path` (`.NAME.tmp-PID`
/// of a process that no longer runs) are removed first. A `path` that is a symbolic link
/// keeps being one: the file it points to is replaced (e.g. `elx bind` in place on a
/// linked bundle), in that file's folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] for content produced piece by piece: `fill` writes the whole file through
/// the temporary file it is handed (buffer as needed), then the file is synced and renamed
/// over `path`. A `fill` error removes the temporary file and leaves `path` as it was.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
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
        fill(&mut f)?;
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

/// Removes `.NAME.tmp-PID` (and `.NAME.tmp-PID.spool`) files in `dir` whose writer process is gone (Linux: no
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
            // `.NAME.tmp-PID` or a spooled body `.NAME.tmp-PID.spool` (tensorfile::SpoolWriter).
            .map(|p| p.strip_suffix(".spool").unwrap_or(p))
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

/// Reads the JSON object in the file at `path` (at most `max_bytes`, checked before reading):
/// an error naming the file when it is larger, unreadable, not JSON or not an object.
pub fn read_json_object(
    path: &Path,
    max_bytes: u64,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > max_bytes {
        return Err(Error::bad_file(
            path,
            format!(
                "expected a {} of at most {max_bytes} bytes, found {}",
                path.file_name()
                    .map_or_else(|| "file".into(), |n| n.to_string_lossy()),
                meta.len()
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(path, format!("expected a JSON object: {e}")))?;
    match v {
        serde_json::Value::Object(o) => Ok(o),
        _ => Err(Error::bad_file(path, "expected a JSON object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let dead_spool = dir.join(".out.bin.tmp-4294967295.spool");
        let live_spool = dir.join(".out.bin.tmp-1.spool");
        for p in [&dead, &live, &other, &dead_spool, &live_spool] {
            fs::write(p, b"half").unwrap();
        }
        write_atomic(&dir.join("out.bin"), b"whole").unwrap();
        assert_eq!(fs::read(dir.join("out.bin")).unwrap(), b"whole");
        assert!(!dead.exists() && !dead_spool.exists());
        assert!(live.exists() && other.exists() && live_spool.exists());
        fs::remove_dir_all(&dir).unwrap();
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
