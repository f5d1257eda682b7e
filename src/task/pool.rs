//! Pooling of per-token hidden states into one vector per row, shared by serving
//! (`elx run --pooling mean`) and training ([`crate::finetune::seq::SequenceModel`]).

/// Appends to `out` [rows x dim] the mean of `hidden` [rows x seq x dim] (row-major) over
/// the positions whose `mask` [rows x seq] is non-zero (every position without a mask).
/// Summed in f64, so the result does not depend on the padding length beyond f32 rounding.
/// The sizes must already be checked; a row with no unmasked position is `Err(row)`.
pub fn masked_mean(
    hidden: &[f32],
    mask: Option<&[i64]>,
    rows: usize,
    seq: usize,
    dim: usize,
    out: &mut Vec<f32>,
) -> std::result::Result<(), usize> {
    let mut acc = vec![0.0f64; dim];
    for r in 0..rows {
        acc.iter_mut().for_each(|a| *a = 0.0);
        let mut count = 0usize;
        for t in 0..seq {
            // Any non-zero mask value counts as a real token, with weight 1.
            if mask.is_some_and(|m| m[r * seq + t] == 0) {
                continue;
            }
            count += 1;
            let h = &hidden[(r * seq + t) * dim..(r * seq + t + 1) * dim];
            for (a, v) in acc.iter_mut().zip(h) {
                *a += f64::from(*v);
            }
        }
        if count == 0 {
            return Err(r);
        }
        out.extend(acc.iter().map(|a| (a / count as f64) as f32));
    }
    Ok(())
}
