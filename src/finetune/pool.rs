//! Pooling of a transformer's last hidden state into one feature vector per example.

use crate::error::{Error, Result};

/// Mean of the hidden states [batch x seq x dim] over the positions whose attention mask
/// [batch x seq] is non-zero, written into `out` [batch x dim] (cleared first). Summed in f64
/// so the result does not depend on the sequence's padding length beyond f32 rounding.
pub fn mean_pool(
    hidden: &[f32],
    mask: &[i64],
    batch: usize,
    seq: usize,
    dim: usize,
    out: &mut Vec<f32>,
) -> Result<()> {
    if hidden.len() != batch * seq * dim || mask.len() != batch * seq {
        return Err(Error::Usage(format!(
            "mean_pool: {} hidden values and {} mask values for [{batch} x {seq} x {dim}]",
            hidden.len(),
            mask.len()
        )));
    }
    out.clear();
    crate::task::masked_mean(hidden, Some(mask), batch, seq, dim, out)
        .map_err(|b| Error::Usage(format!("mean_pool: example {b} has no unmasked token")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_mean() {
        // Two examples, three positions, two dims; the second has one padding position.
        let h = [
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0, 20.0, 30.0, 40.0, 99.0, 99.0,
        ];
        let m = [1, 1, 1, 1, 1, 0];
        let mut out = Vec::new();
        mean_pool(&h, &m, 2, 3, 2, &mut out).unwrap();
        assert_eq!(out, [3.0, 4.0, 20.0, 30.0]);
        assert!(mean_pool(&h, &[0, 0, 0, 1, 1, 1], 2, 3, 2, &mut out).is_err());
        assert!(mean_pool(&h[..11], &m, 2, 3, 2, &mut out).is_err());
    }
}
