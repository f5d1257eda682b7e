//! [`Gguf`]: a GGUF file read through a memory map (or handed over in memory), its header
//! checked at open (`header.rs`).

use super::{GgufTensor, Value};
use crate::error::{Error, Result};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The bytes of a [`Gguf`]: a read-only map of a file, or a buffer handed over in memory.
#[derive(Debug)]
pub(super) enum Backing {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A memory-mapped GGUF file (or an in-memory one) with validated header, metadata and
/// tensor infos.
#[derive(Debug)]
pub struct Gguf {
    pub(super) path: PathBuf,
    pub(super) bytes: Backing,
    pub(super) version: u32,
    pub(super) alignment: u64,
    pub(super) data_offset: u64,
    pub(super) metadata: Vec<(String, Value)>,
    pub(super) index: HashMap<String, usize>,
    pub(super) tensors: Vec<GgufTensor>,
    pub(super) by_name: BTreeMap<String, usize>,
}

impl Gguf {
    /// Opens and validates `path` (see the module documentation).
    pub fn open(path: &Path) -> Result<Gguf> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and lives as long as `self`. As with every mmap, a
        // concurrent truncation by another process is outside what we can defend against;
        // all bounds below are checked against the mapped length.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, Backing::Map(mmap))
    }

    /// Validates a GGUF file already in memory; `name` stands for its path in error messages.
    pub fn from_bytes(name: &Path, bytes: Vec<u8>) -> Result<Gguf> {
        Self::parse(name, Backing::Owned(bytes))
    }

    /// The file's path (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data section's alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
}
