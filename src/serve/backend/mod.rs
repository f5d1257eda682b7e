//! The engines that run a patched graph, one folder each, behind one object-safe trait
//! ([`EngineBackend`], in [`api`]):
//!
//! * `tract/` (feature `tract`, default): the pure-Rust CPU engine;
//! * `ort/` (feature `ort`): ONNX Runtime on the CPU, CUDA or TensorRT.
//!
//! Each folder holds the engine's runtime, its hidden-state view for the finetuner, its
//! training session and its tensor conversion. Which engines are compiled in is decided on
//! the `mod` lines below and in [`open`], and nowhere else: asking for an engine that is not
//! built gives an error saying how to rebuild ([`not_built`]).

pub mod api;
pub mod guard;
pub mod kind;
#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;

pub use api::{
    EngineBackend, FixedSession, HiddenView, LoadOptions, Loader, Trainer, WeightFormat,
};
pub use guard::engine_call;
pub use kind::{Backend, ExecutionProvider, not_built};

/// The engine `kind` as compiled into this build, ready to check or load; an engine this
/// build lacks is a [`crate::Error::Usage`] that says how to rebuild.
pub fn open(kind: Backend) -> crate::Result<Box<dyn Loader>> {
    match kind {
        #[cfg(feature = "tract")]
        Backend::Tract => Ok(Box::new(tract::TractLoader)),
        #[cfg(feature = "ort")]
        Backend::Ort(ep) => Ok(Box::new(ort::OrtLoader(ep))),
        #[allow(unreachable_patterns)]
        other => Err(not_built(other)),
    }
}

/// How many threads the CPU engines split a matrix product over, from now on, in this whole
/// process: tract's matrix products (one executor for every plan), and the intra-op pool of
/// every ONNX Runtime session built afterwards (each session keeps its own pool).
pub fn set_cpu_threads(n: usize) {
    #[cfg(feature = "tract")]
    tract::set_threads(n);
    #[cfg(feature = "ort")]
    ort::runtime::set_threads(n);
    #[cfg(not(any(feature = "tract", feature = "ort")))]
    let _ = n;
}
