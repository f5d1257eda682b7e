//! Pooling of per-token hidden states into one vector per row, in one home for serving
//! (`elx run --pooling`: [`pool`]) and training ([`crate::finetune::seq::SequenceModel`]:
//! [`mean_pool`]); both reduce to [`masked_mean`], so they cannot drift apart.

use crate::error::{Error, Result};

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

/// How per-token hidden states become one vector per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens whose attention mask is 1 (sentence-transformers' default).
    Mean,
    /// The first token's state (BERT's [CLS]).
    Cls,
    /// The output as it is, one flattened row per batch row.
    None,
}

/// Pools a model output of shape `shape` (row-major `values`) into one vector per row.
///
/// * `Mean`/`Cls` need a [rows, seq, hidden] output; `Mean` weights tokens by `mask`
///   ([rows x seq], all ones when `None`); a row whose mask is all zero is an error.
/// * `None` flattens each row of any output.
pub fn pool(
    values: &[f32],
    shape: &[usize],
    mask: Option<&[i64]>,
    pooling: Pooling,
) -> Result<Vec<Vec<f32>>> {
    let total: usize = shape.iter().product();
    if total != values.len() {
        return Err(Error::Usage(format!(
            "model output has {} values but shape {shape:?}",
            values.len()
        )));
    }
    match (pooling, shape) {
        (Pooling::None, [rows, ..]) => {
            let width = total.checked_div(*rows).unwrap_or(0);
            Ok(values
                .chunks(width.max(1))
                .take(*rows)
                .map(<[f32]>::to_vec)
                .collect())
        }
        (Pooling::Cls, &[rows, seq, hidden]) => Ok((0..rows)
            .map(|r| values[r * seq * hidden..r * seq * hidden + hidden].to_vec())
            .collect()),
        (Pooling::Mean, &[rows, seq, hidden]) => {
            if let Some(m) = mask
                && m.len() != rows * seq
            {
                return Err(Error::Usage(format!(
                    "attention mask has {} values but the output is [{rows}, {seq}, {hidden}]",
                    m.len()
                )));
            }
            let mut flat = Vec::with_capacity(rows * hidden);
            masked_mean(values, mask, rows, seq, hidden, &mut flat).map_err(|r| {
                Error::Usage(format!(
                    "row {r} has no token with attention mask 1; cannot mean-pool"
                ))
            })?;
            Ok(flat
                .chunks(hidden.max(1))
                .take(rows)
                .map(<[f32]>::to_vec)
                .collect())
        }
        (p, s) => Err(Error::Usage(format!(
            "pooling {p:?} needs a [batch, seq, hidden] model output, found shape {s:?}; try --pooling none"
        ))),
    }
}

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
    masked_mean(hidden, Some(mask), batch, seq, dim, out)
        .map_err(|b| Error::Usage(format!("mean_pool: example {b} has no unmasked token")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_respects_the_mask() {
        // 2 rows, 3 tokens, 2 features; row 1's last token is padding.
        let v = [
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0, 20.0, 30.0, 40.0, 999.0, 999.0,
        ];
        let mask = [1, 1, 1, 1, 1, 0];
        let p = pool(&v, &[2, 3, 2], Some(&mask), Pooling::Mean).unwrap();
        assert_eq!(p, vec![vec![3.0, 4.0], vec![20.0, 30.0]]);
        let c = pool(&v, &[2, 3, 2], Some(&mask), Pooling::Cls).unwrap();
        assert_eq!(c, vec![vec![1.0, 2.0], vec![10.0, 20.0]]);
        let n = pool(&v, &[2, 6], None, Pooling::None).unwrap();
        assert_eq!(n[1], v[6..].to_vec());
        assert!(pool(&v, &[2, 3, 2], Some(&[0, 0, 0, 1, 1, 1]), Pooling::Mean).is_err());
        assert!(pool(&v, &[2, 6], None, Pooling::Mean).is_err());
    }

    #[test]
    fn mean_pool_checks_sizes_and_empty_rows() {
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
