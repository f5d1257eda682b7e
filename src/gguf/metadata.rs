//! Metadata: the values of every GGUF type ([`Value`], [`Array`]) and the typed reads of a
//! key, whose errors name the file, the key and what was expected.

use super::Gguf;
use crate::error::{Error, Result};

/// A metadata value of one GGUF type.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Array),
}

/// A metadata array: elements of one GGUF type (never arrays).
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
        }
    }

    /// Whether the array has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GGUF name of the element type ("u32", "string", ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Array::U8(_) => "u8",
            Array::I8(_) => "i8",
            Array::U16(_) => "u16",
            Array::I16(_) => "i16",
            Array::U32(_) => "u32",
            Array::I32(_) => "i32",
            Array::U64(_) => "u64",
            Array::I64(_) => "i64",
            Array::F32(_) => "f32",
            Array::F64(_) => "f64",
            Array::Bool(_) => "bool",
            Array::String(_) => "string",
        }
    }
}

impl Value {
    /// The GGUF name of the type ("u32", "string", "array of f32", ...).
    pub fn type_name(&self) -> String {
        match self {
            Value::U8(_) => "u8".into(),
            Value::I8(_) => "i8".into(),
            Value::U16(_) => "u16".into(),
            Value::I16(_) => "i16".into(),
            Value::U32(_) => "u32".into(),
            Value::I32(_) => "i32".into(),
            Value::U64(_) => "u64".into(),
            Value::I64(_) => "i64".into(),
            Value::F32(_) => "f32".into(),
            Value::F64(_) => "f64".into(),
            Value::Bool(_) => "bool".into(),
            Value::String(_) => "string".into(),
            Value::Array(a) => format!("array of {}", a.type_name()),
        }
    }

    /// Any integer value as i128 (so every GGUF integer fits), `None` for other types.
    pub(super) fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }
}

impl Gguf {
    /// Every metadata key and value, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| {
            Error::bad_tensor(&self.path, key, "expected this metadata key, found none")
        })
    }

    fn wrong(&self, key: &str, want: &str, v: &Value) -> Error {
        Error::bad_tensor(
            &self.path,
            key,
            format!("expected {want}, found a value of type {}", v.type_name()),
        )
    }

    fn integer(&self, key: &str, want: &str, min: i128, max: i128) -> Result<i128> {
        let v = self.value(key)?;
        let n = v.as_integer().ok_or_else(|| self.wrong(key, want, v))?;
        if n < min || n > max {
            return Err(Error::bad_tensor(
                &self.path,
                key,
                format!("expected {want}, found {n} (out of range)"),
            ));
        }
        Ok(n)
    }

    /// `key` as u32: any integer type whose value fits.
    pub fn u32(&self, key: &str) -> Result<u32> {
        self.integer(key, "an integer in u32 range", 0, u32::MAX.into())
            .map(|n| n as u32)
    }

    /// `key` as u64: any integer type whose value fits.
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.integer(key, "an integer in u64 range", 0, u64::MAX.into())
            .map(|n| n as u64)
    }

    /// `key` as i64: any integer type whose value fits.
    pub fn i64(&self, key: &str) -> Result<i64> {
        self.integer(
            key,
            "an integer in i64 range",
            i64::MIN.into(),
            i64::MAX.into(),
        )
        .map(|n| n as i64)
    }

    /// `key` as f32: an f32 value, or an f64 one (rounded).
    pub fn f32(&self, key: &str) -> Result<f32> {
        match self.value(key)? {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            v => Err(self.wrong(key, "an f32 or f64 value", v)),
        }
    }

    /// `key` as a bool.
    pub fn bool(&self, key: &str) -> Result<bool> {
        match self.value(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(self.wrong(key, "a bool value", v)),
        }
    }

    /// `key` as a string.
    pub fn str(&self, key: &str) -> Result<&str> {
        match self.value(key)? {
            Value::String(s) => Ok(s),
            v => Err(self.wrong(key, "a string value", v)),
        }
    }

    /// `key` as an array of any element type.
    pub fn array(&self, key: &str) -> Result<&Array> {
        match self.value(key)? {
            Value::Array(a) => Ok(a),
            v => Err(self.wrong(key, "an array", v)),
        }
    }

    /// `key` as an array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn strings(&self, key: &str) -> Result<&[String]> {
        match self.value(key)? {
            Value::Array(Array::String(s)) => Ok(s),
            v => Err(self.wrong(key, "an array of string", v)),
        }
    }

    /// `key` as an array of i32 (e.g. `tokenizer.ggml.token_type`).
    pub fn i32s(&self, key: &str) -> Result<&[i32]> {
        match self.value(key)? {
            Value::Array(Array::I32(s)) => Ok(s),
            v => Err(self.wrong(key, "an array of i32", v)),
        }
    }

    /// `key` as an array of f32 (e.g. `tokenizer.ggml.scores`).
    pub fn f32s(&self, key: &str) -> Result<&[f32]> {
        match self.value(key)? {
            Value::Array(Array::F32(s)) => Ok(s),
            v => Err(self.wrong(key, "an array of f32", v)),
        }
    }
}
