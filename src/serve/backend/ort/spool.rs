//! Hands ONNX Runtime a large model as a file whose weights it maps, not as bytes it copies.
//!
//! A session built from bytes holds the weights three times while it starts: the caller's
//! encoding, ONNX Runtime's parsed copy and its tensors (measured with SmolLM2-135M, f32,
//! from Python: 1,758 MiB peak from bytes, 697 MiB from a file with external data). So a
//! model whose initializers exceed [`SPOOL_MIN_BYTES`] is written to a fresh folder under
//! the temporary directory (`TMPDIR`): the graph as `model.onnx`, every initializer over
//! 1 KiB in `weights.bin`, each at a 4 KiB-aligned offset, which ONNX Runtime maps. The
//! folder is removed as soon as the session is built; the map keeps the unlinked file's
//! pages, which the kernel may evict and re-read like any clean file page. (On a `TMPDIR`
//! in memory, a tmpfs, the file's pages are memory, as the copy they replace was; point
//! `TMPDIR` at a disk to gain.)

use crate::error::{Error, Result};
use crate::graph::onnx::encode_model;
use crate::graph::pb::{ModelProto, StringStringEntryProto, tensor_proto::DataLocation};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Models whose initializers hold at least this many bytes are spooled to a file.
pub const SPOOL_MIN_BYTES: usize = 64 << 20;

/// Initializers at least this large go to the weights file; smaller ones stay in the graph.
const EXTERNAL_MIN_BYTES: usize = 1024;

/// Offsets of the weights file are multiples of this (a page), so each tensor maps alone.
const ALIGN: usize = 4096;

/// A model written to a folder of its own, removed on drop.
#[derive(Debug)]
pub struct Spooled {
    dir: PathBuf,
}

impl Spooled {
    /// The graph file to build the session from.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join("model.onnx")
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Bytes of initializer data in `model`.
pub fn initializer_bytes(model: &ModelProto) -> usize {
    model
        .graph
        .as_ref()
        .map_or(0, |g| g.initializer.iter().map(|t| t.raw_data.len()).sum())
}

/// Writes `model` to a new folder under `parent`, its large initializers in `weights.bin`
/// (see the module documentation); `after_write` is called on each initializer's bytes once
/// written (to let go of a mapped file's pages). Nothing is left behind on error.
pub fn spool(model: &ModelProto, parent: &Path, after_write: &dyn Fn(&[u8])) -> Result<Spooled> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = parent.join(format!(
        "elx-ort-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    // create_dir, not create_dir_all: a name someone else holds is an error, not a reuse.
    std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    let spooled = Spooled { dir };
    write(model, &spooled.dir, after_write)?;
    Ok(spooled)
}

fn write(model: &ModelProto, dir: &Path, after_write: &dyn Fn(&[u8])) -> Result<()> {
    let weights_path = dir.join("weights.bin");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&weights_path)
        .map_err(|e| Error::io(&weights_path, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut graph_only = model.clone();
    let Some(graph) = graph_only.graph.as_mut() else {
        return Err(Error::Internal("spooling a model without a graph".into()));
    };
    let mut offset = 0usize;
    let zeros = [0u8; ALIGN];
    for t in graph.initializer.iter_mut() {
        if t.raw_data.len() < EXTERNAL_MIN_BYTES {
            continue;
        }
        let pad = offset.next_multiple_of(ALIGN) - offset;
        out.write_all(&zeros[..pad])
            .and_then(|()| out.write_all(&t.raw_data))
            .map_err(|e| Error::io(&weights_path, e))?;
        after_write(&t.raw_data);
        offset += pad;
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: key.into(),
            value,
        };
        t.external_data = vec![
            entry("location", "weights.bin".into()),
            entry("offset", offset.to_string()),
            entry("length", t.raw_data.len().to_string()),
        ];
        t.data_location = DataLocation::External as i32;
        offset += t.raw_data.len();
        t.raw_data = Default::default();
    }
    out.flush().map_err(|e| Error::io(&weights_path, e))?;
    let model_path = dir.join("model.onnx");
    std::fs::write(&model_path, encode_model(&graph_only)).map_err(|e| Error::io(&model_path, e))
}
