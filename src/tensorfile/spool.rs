//! [`SpoolWriter`]: a safetensors file written tensor by tensor through a spool on disk, so
//! that memory holds no tensor once it is added.

use super::write::{check_out, header_bytes};
use super::{Dtype, TensorOut};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Bytes copied per read while a [`SpoolWriter`] hashes or lays out its tensors.
const SPOOL_CHUNK: usize = 8 << 20;

/// A safetensors file written tensor by tensor without holding the tensors in memory.
///
/// Each [`SpoolWriter::add`] appends the tensor's bytes to a temporary body file beside the
/// output (`.NAME.tmp-PID.spool`) and keeps only its name, dtype, shape and place. The header can
/// only be written once every tensor is known (it holds all offsets, and callers put hashes
/// of the data in the metadata), so [`SpoolWriter::finish`] writes the header and then copies
/// the tensors from the body in the order asked, atomically ([`crate::util::write_atomic_with`]):
/// the bytes are those [`write`] gives for the same tensors in that order. Memory stays at one
/// copy buffer; the disk holds the body and the new file until the body is removed (on
/// `finish` or drop).
pub struct SpoolWriter {
    path: PathBuf,
    body_path: PathBuf,
    body: File,
    len: u64,
    entries: BTreeMap<String, Spooled>,
}

/// Where one spooled tensor lies in the body file.
struct Spooled {
    dtype: Dtype,
    shape: Vec<usize>,
    offset: u64,
    len: usize,
}

impl SpoolWriter {
    /// Starts a file to be written at `path` (nothing appears there before `finish`).
    pub fn create(path: &Path) -> Result<SpoolWriter> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::Usage(format!("{}: not a file path", path.display())))?;
        // Named like write_atomic's temporary file plus `.spool`, so that a killed writer's
        // body is removed by the next write to `path` (util::write_atomic's stale-temp sweep).
        let body_path = dir.join(format!(
            ".{}.tmp-{}.spool",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let body = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&body_path)
            .map_err(|e| Error::io(path, e))?;
        Ok(SpoolWriter {
            path: path.to_path_buf(),
            body_path,
            body,
            len: 0,
            entries: BTreeMap::new(),
        })
    }

    /// Appends one tensor to the body (its data is dropped on return). A name used twice,
    /// the reserved name or data whose length disagrees with the shape is refused.
    pub fn add(&mut self, t: TensorOut) -> Result<()> {
        use std::io::Write;
        check_out(&self.path, &t)?;
        if self.entries.contains_key(&t.name) {
            return Err(Error::Usage(format!(
                "{}: tensor name `{}` is reserved or used twice",
                self.path.display(),
                t.name
            )));
        }
        self.body
            .write_all(&t.data)
            .map_err(|e| Error::io(&self.path, e))?;
        self.entries.insert(
            t.name,
            Spooled {
                dtype: t.dtype,
                shape: t.shape,
                offset: self.len,
                len: t.data.len(),
            },
        );
        self.len += t.data.len() as u64;
        Ok(())
    }

    /// Dtype, shape and byte length of a spooled tensor.
    pub fn info(&self, name: &str) -> Option<(Dtype, &[usize], usize)> {
        self.entries
            .get(name)
            .map(|e| (e.dtype, e.shape.as_slice(), e.len))
    }

    /// Names of the spooled tensors, ascending.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|k| k.as_str())
    }

    /// Hands the bytes of a spooled tensor to `visit` in pieces of at most 8 MiB, in order.
    pub fn read_chunks(&self, name: &str, mut visit: impl FnMut(&[u8])) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let e = self.entries.get(name).ok_or_else(|| {
            Error::Usage(format!(
                "{}: no spooled tensor `{name}`",
                self.path.display()
            ))
        })?;
        let mut buf = vec![0u8; SPOOL_CHUNK.min(e.len)];
        let mut done = 0usize;
        while done < e.len {
            let n = (e.len - done).min(buf.len());
            self.body
                .read_exact_at(&mut buf[..n], e.offset + done as u64)
                .map_err(|err| Error::io(&self.body_path, err))?;
            visit(&buf[..n]);
            done += n;
        }
        Ok(())
    }

    /// Writes the file atomically: the header with `metadata`, then the tensors in `order`
    /// (which must name every spooled tensor once), then removes the body.
    pub fn finish(self, order: &[&str], metadata: BTreeMap<String, String>) -> Result<()> {
        use std::io::Write;
        if order.len() != self.entries.len() || order.iter().any(|n| !self.entries.contains_key(*n))
        {
            return Err(Error::Usage(format!(
                "{}: the layout names {} tensors, {} were spooled",
                self.path.display(),
                order.len(),
                self.entries.len()
            )));
        }
        let header = header_bytes(
            &self.path,
            order.iter().filter_map(|n| {
                self.entries
                    .get(*n)
                    .map(|e| (*n, e.dtype, e.shape.as_slice(), e.len))
            }),
            metadata,
        )?;
        let mut failed: Option<Error> = None;
        crate::util::write_atomic_with(&self.path, |f| {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            w.write_all(&header)?;
            for n in order {
                let mut io_err = None;
                let res = self.read_chunks(n, |bytes| {
                    if io_err.is_none()
                        && let Err(e) = w.write_all(bytes)
                    {
                        io_err = Some(e);
                    }
                });
                if let Some(e) = io_err {
                    return Err(e);
                }
                if let Err(e) = res {
                    let msg = e.to_string();
                    failed = Some(e);
                    return Err(std::io::Error::other(msg));
                }
            }
            w.flush()
        })
        .map_err(|e| failed.take().unwrap_or(e))
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.body_path);
    }
}
