//! Any bytes as a finetuning checkpoint. The expected vector sizes are taken from the file's
//! own tensors where it has them (so a mutated real checkpoint gets past the size check and
//! into the state validation), else fixed ones. One that reads goes through the resume's
//! consistency checks.
#![no_main]
use eigenlorax::finetune::checkpoint::{Checkpoint, TENSORS};
use eigenlorax::tensorfile::TensorFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = fuzz_support::file("ck.elxk", data);
    let mut sizes = [4, 6, 4, 4, 6, 6, 4, 6];
    if let Ok(tf) = TensorFile::open(&p) {
        for (s, name) in sizes.iter_mut().zip(TENSORS) {
            if let Some(i) = tf.info(name) {
                *s = i.shape.iter().product::<usize>().min(1 << 20);
            }
        }
    }
    // A checkpoint that reads (its SHA-256 matches) goes through the resume's number checks.
    if let Ok(ck) = Checkpoint::read(&p, &sizes) {
        let _ = ck.check_consistent(&p, 64, 1000, false);
    }
});
