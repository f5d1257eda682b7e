//! Stage 5, on-device finetuning: gradients, training, the tract backend and `elx finetune`.
//! One test binary for the stage (a debug build links tract into every test binary);
//! shared helpers in `support`.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod exact;
mod grad;
mod tract;
mod train;
