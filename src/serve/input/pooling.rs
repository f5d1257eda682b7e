//! Pooling of a model output into one vector per row (`elx run --pooling`); the masked
//! mean itself is [`crate::task::masked_mean`], shared with training.

use crate::error::{Error, Result};

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
            crate::task::masked_mean(values, mask, rows, seq, hidden, &mut flat).map_err(|r| {
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
}
