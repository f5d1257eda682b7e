//! Content hashes (SHA-256, lowercase hex).

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::Path;
/// Lowercase hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex SHA-256 of a byte slice taken `chunk` bytes at a time, calling `after` on
/// each chunk once it is hashed (to let go of a mapped file's pages as the hash goes).
pub fn sha256_hex_chunks(bytes: &[u8], chunk: usize, mut after: impl FnMut(&[u8])) -> String {
    let mut h = Sha256::new();
    for c in bytes.chunks(chunk.max(1)) {
        h.update(c);
        after(c);
    }
    hex(&h.finalize())
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
