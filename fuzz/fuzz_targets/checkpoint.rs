//! Any bytes as a finetuning checkpoint. The expected vector sizes are taken from the file's
//! own tensors where it has them (so a mutated real checkpoint gets past the size check and
//! into the state validation), else fixed ones.
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
    let _ = Checkpoint::read(&p, &sizes);
});
