//! Which engine runs a patched graph, as a value: [`Backend`] (and the ONNX Runtime
//! [`ExecutionProvider`] inside it). Both exist in every build, whichever engines are compiled
//! in, so that a caller can name an engine and get a clear error ([`not_built`]) when this build
//! lacks it.

use crate::error::Error;

/// Which inference engine runs the patched graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// tract: pure Rust, CPU (feature `tract`, on by default).
    #[default]
    Tract,
    /// ONNX Runtime (feature `ort`) on this execution provider; a provider that cannot start
    /// falls back to the CPU with a warning.
    Ort(ExecutionProvider),
}

impl Backend {
    /// Human name for messages, e.g. `tract` or `ONNX Runtime (CUDA)`.
    pub fn name(self) -> String {
        match self {
            Backend::Tract => "tract".into(),
            Backend::Ort(ep) => format!("ONNX Runtime ({})", ep.name()),
        }
    }
}

/// Where ONNX Runtime runs the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU provider (always there).
    Cpu,
    /// NVIDIA CUDA (needs a GPU build of ONNX Runtime and a GPU).
    Cuda,
    /// NVIDIA TensorRT, with CUDA behind it for the nodes TensorRT does not take.
    TensorRt,
}

impl ExecutionProvider {
    /// Human name for messages.
    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "CPU",
            ExecutionProvider::Cuda => "CUDA",
            ExecutionProvider::TensorRt => "TensorRT",
        }
    }
}

/// The error for an engine this build does not have: it says how to rebuild.
pub fn not_built(backend: Backend) -> Error {
    match backend {
        Backend::Tract => Error::Usage(
            "this build of eigenlorax was not compiled with the tract backend; rebuild with the `tract` feature"
                .into(),
        ),
        Backend::Ort(_) => Error::Usage(
            "this build of eigenlorax was not compiled with the ONNX Runtime backend; rebuild with `--features ort`"
                .into(),
        ),
    }
}
