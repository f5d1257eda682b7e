//! Storage dtypes of bundle components and their (de)quantization.

/// How bundle components are stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageDtype {
    F32,
    F16,
    Bf16,
    /// Symmetric int8 with one f32 absmax scale per stored row.
    Int8,
}
