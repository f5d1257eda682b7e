//! Stage 2, subspaces: extraction, K rules, projection and reconstruction.
//! One test binary for the stage (a debug build links tract into every test binary);
//! shared helpers in `support`.

#[path = "../support/mod.rs"]
mod support;

mod extract;
mod project;
mod select;
mod topk;
