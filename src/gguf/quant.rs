//! ggml tensor types, their block layouts, dequantization to f32, and the row permutation
//! that llama.cpp's converter applies to the query and key projections.

use crate::error::{Error, Result};

/// A ggml tensor type, by its id in the GGUF tensor info.
///
/// Every type the GGUF format defines a fixed block layout for is known here, so that the
/// byte range of any tensor can be checked against the file; only the types of
/// [`GgmlType::SUPPORTED`] can be dequantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

impl GgmlType {
    /// The types [`dequantize`] converts to f32.
    pub const SUPPORTED: [GgmlType; 6] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
    ];

    /// The type with ggml id `id` (`ggml_type` in ggml.h), or `None` for an id whose layout
    /// we do not know.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            _ => return None,
        })
    }

    /// The ggml name ("F32", "Q4_1", "Q6_K", ...).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            BF16 => "BF16",
        }
    }

    /// Elements per block (1 for plain types, 32 for the legacy quants, 256 for k-quants).
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => 256,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            I8 => 1,
            F16 | BF16 | I16 => 2,
            F32 | I32 => 4,
            F64 | I64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
        }
    }

    /// Whether [`dequantize`] converts this type.
    pub fn is_supported(self) -> bool {
        Self::SUPPORTED.contains(&self)
    }

    /// Bytes that `n` elements take, or `None` if `n` is not a whole number of blocks or the
    /// size overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.block_bytes())
    }
}

/// "F32, F16, BF16, Q8_0, Q4_0, Q4_1", for error messages.
pub(crate) fn supported_list() -> String {
    GgmlType::SUPPORTED
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Converts `bytes`, which hold `n` elements of type `ty` in ggml's block layout, to f32.
///
/// Layouts (little-endian; `d` and `m` are f16):
/// * Q8_0: blocks of 34 bytes, `d` then 32 `i8` values `q`; element = `q · d`.
/// * Q4_0: blocks of 18 bytes, `d` then 16 bytes; byte `j` holds element `j` in its low
///   nibble and element `j + 16` in its high nibble; element = `(x − 8) · d`.
/// * Q4_1: blocks of 20 bytes, `d`, `m`, then 16 bytes as in Q4_0; element = `x · d + m`.
///
/// The error (an [`Error::Unsupported`] for a type outside [`GgmlType::SUPPORTED`], an
/// [`Error::Internal`] for a length that does not match `n`) has no file to name: callers
/// with a file ([`super::Gguf::dequantize`]) check both first.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    if !ty.is_supported() {
        return Err(Error::Unsupported(format!(
            "ggml type {} cannot be dequantized (supported: {})",
            ty.name(),
            supported_list()
        )));
    }
    if ty.bytes_for(n) != Some(bytes.len()) {
        return Err(Error::Internal(format!(
            "dequantize: {n} elements of {} do not take {} bytes",
            ty.name(),
            bytes.len()
        )));
    }
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(f16)),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let d = f16(&b[0..2]);
                out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            for b in bytes.chunks_exact(18) {
                let d = f16(&b[0..2]);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| (i32::from(q & 0x0f) - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| (i32::from(q >> 4) - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in bytes.chunks_exact(20) {
                let d = f16(&b[0..2]);
                let m = f16(&b[2..4]);
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0f) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        _ => unreachable!("checked by is_supported"),
    }
    Ok(out)
}

fn check_qk(len: usize, shape: [usize; 2], n_head: usize, what: &str) -> Result<usize> {
    let [rows, cols] = shape;
    if rows.checked_mul(cols) != Some(len) {
        return Err(Error::Usage(format!(
            "{what}: expected {rows} x {cols} values, found {len}"
        )));
    }
    if n_head == 0
        || n_head
            .checked_mul(2)
            .is_none_or(|m| !rows.is_multiple_of(m))
    {
        return Err(Error::Usage(format!(
            "{what}: expected the row count {rows} to be a multiple of 2 x n_head ({n_head})"
        )));
    }
    Ok(rows / n_head / 2)
}

/// Undoes llama.cpp's row permutation of an `attn_q` / `attn_k` weight: `weights` is the
/// row-major `[rows, cols]` matrix as stored in the GGUF (`rows` = output features), the
/// result is the Hugging Face layout. `n_head` is the number of heads of that projection:
/// `head_count` for `attn_q`, `head_count_kv` for `attn_k`.
///
/// Derivation. Hugging Face's rotary embedding (`rotate_half`) pairs, inside each head of
/// `2h` rows, row `j` with row `j + h`; ggml's rope (normal mode) pairs adjacent rows `2j`
/// and `2j + 1`. So `convert_hf_to_gguf.py` reshapes the rows to `[n_head, 2, h]`, swaps the
/// last two axes (`[n_head, h, 2]`) and flattens: HF row `head·2h + i·h + j` (`i ∈ {0, 1}`,
/// `j < h`) becomes GGUF row `head·2h + 2j + i`. The inverse reads HF row
/// `head·2h + i·h + j` from GGUF row `head·2h + 2j + i`. Columns are untouched.
pub fn unpermute_qk(weights: &[f32], shape: [usize; 2], n_head: usize) -> Result<Vec<f32>> {
    let h = check_qk(weights.len(), shape, n_head, "unpermute_qk")?;
    Ok(permute_rows(weights, shape[1], n_head, h, false))
}

/// llama.cpp's permutation itself (Hugging Face layout in, GGUF layout out), the inverse of
/// [`unpermute_qk`]; for tests and for writing GGUF files.
pub fn permute_qk(weights: &[f32], shape: [usize; 2], n_head: usize) -> Result<Vec<f32>> {
    let h = check_qk(weights.len(), shape, n_head, "permute_qk")?;
    Ok(permute_rows(weights, shape[1], n_head, h, true))
}

fn permute_rows(w: &[f32], cols: usize, n_head: usize, h: usize, to_gguf: bool) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    if w.is_empty() {
        // No columns: nothing to move, however many rows (a loop over 2^33 empty rows was a
        // fuzz-found hang).
        return out;
    }
    for head in 0..n_head {
        let base = head * 2 * h;
        for i in 0..2 {
            for j in 0..h {
                let hf = base + i * h + j;
                let gg = base + 2 * j + i;
                let (src, dst) = if to_gguf { (hf, gg) } else { (gg, hf) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}
