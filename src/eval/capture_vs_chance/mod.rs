//! Will recycling pay? Diagnostics computed from adapter and bundle files alone, before any
//! training or serving.
//!
//! A recycled subspace helps a new task only when the new task's ΔW lies inside it. These
//! measurements say how much does, each next to what chance alone would give:
//!
//! * [`chance_capture`]: the expected share of a ΔW inside independent random subspaces of
//!   the same size, (K_A/in)·(K_B/out); the seeded random-basis control measures the same.
//! * [`spectrum_vs_null`]: how many directions of a stacked side stand above a Gaussian matrix
//!   of the same shape and energy (the Bai–Yin edge), i.e. carry signal rather than spread.
//! * [`held_out()`]: each adapter of a pool against the subspace of all the others
//!   (leave-one-out), recycled vs random vs chance, and split into the mean direction alone,
//!   the centered basis alone, and both (the `--center` mean vector).
//! * [`capture_vs_n`]: the held-out capture against subspaces of N = 1, 2, 4, … of the others:
//!   whether more adapters of this kind keep adding.
//! * [`verdict`]: one line, from the captures above.
//!
//! Captures over several modules are weighted by each module's ‖ΔW‖²_F, the same definition
//! as [`super::capture`], so `elx inspect` and `elx demo` report one number for one question.
//!
//! Where things are: chance and the Gaussian null (`chance.rs`), a pool of adapters loaded
//! once (`pool.rs`), one adapter or module measured in a subspace (`measure.rs`), the
//! held-out captures and their curve against N (`held_out.rs`), the verdict (`verdict.rs`),
//! and the pool's structure: pairwise captures, clusters, a verdict per cluster
//! (`structure.rs`).

mod chance;
mod held_out;
mod measure;
mod pool;
mod structure;
#[cfg(test)]
mod tests;
mod verdict;

pub use chance::{
    NullComparison, chance_capture, spectrum_vs_null, spectrum_vs_null_of, stack_shapes,
};
pub use held_out::{CurvePoint, HeldOut, HeldOutMean, capture_vs_n, doubling_sizes, held_out};
pub use measure::{
    CaptureSummary, ModuleMeasure, capture_summary, combine, measure_module, measure_module_with,
    one_sided,
};
pub use pool::Pool;
pub use structure::{
    CLUSTER_EDGE_CAPTURE, CLUSTER_EDGE_OVER_CHANCE, CLUSTER_MIN_SIZE, Cluster, Distribution,
    PairCapture, Structure, clusters, pairwise_capture, short_name, structure,
};
pub use verdict::{GAIN_CAPTURE, GAIN_OVER_CHANCE, Gain, NO_GAIN_CAPTURE, Verdict, verdict};
