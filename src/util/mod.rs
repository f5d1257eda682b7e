//! Small shared helpers, one concept a file:
//!
//! * `alloc`: glibc's allocator kept from returning freed blocks during an extraction;
//! * `fs`: atomic file writes, output-over-input checks, bounded JSON reads;
//! * `parallel`: a small job pool and the caught-panic marker of engine calls;
//! * `hash`: SHA-256 of bytes and files;
//! * `rng`: a seeded Gaussian source that the numpy reference in `tools/` reproduces bit for
//!   bit.
//!
//! The files are private: every helper has the one public path `eigenlorax::util::NAME`.

mod alloc;
mod fs;
mod hash;
mod parallel;
mod rng;

pub use alloc::*;
pub use fs::*;
pub use hash::*;
pub use parallel::*;
pub use rng::*;
