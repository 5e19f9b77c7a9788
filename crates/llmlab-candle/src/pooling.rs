//! Pooling a padded batch of token states into one vector per sequence.
//! Only a sequence's own tokens count: padding is right of `length` and is
//! never read.

use llmlab_core::embedding::Pooling;

/// Pool `hidden`, the row-major `[sequences, padded_len, width]` states of
/// a batch whose sequence `i` holds `lengths[i]` real tokens.
pub(crate) fn pool(
    hidden: &[f32],
    padded_len: usize,
    width: usize,
    lengths: &[usize],
    pooling: Pooling,
) -> Vec<Vec<f32>> {
    debug_assert_eq!(hidden.len(), lengths.len() * padded_len * width);
    lengths
        .iter()
        .enumerate()
        .map(|(row, &length)| {
            let token = |t: usize| {
                let start = (row * padded_len + t) * width;
                &hidden[start..start + width]
            };
            match pooling {
                Pooling::Mean => {
                    // f64 sums: 512 tokens of f32 would lose digits the
                    // reference (PyTorch) keeps.
                    let mut sum = vec![0f64; width];
                    for t in 0..length {
                        for (s, x) in sum.iter_mut().zip(token(t)) {
                            *s += f64::from(*x);
                        }
                    }
                    let n = length.max(1) as f64;
                    sum.into_iter().map(|s| (s / n) as f32).collect()
                }
                Pooling::Cls => token(0).to_vec(),
                Pooling::Last => token(length.saturating_sub(1)).to_vec(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two sequences padded to 3 tokens of width 2; the second holds 2 real
    // tokens and one padding token full of junk.
    const HIDDEN: [f32; 12] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0, 0.0, 20.0, 2.0, 999.0, 999.0];

    #[test]
    fn mean_counts_only_real_tokens() {
        let pooled = pool(&HIDDEN, 3, 2, &[3, 2], Pooling::Mean);
        assert_eq!(pooled, [vec![3.0, 4.0], vec![15.0, 1.0]]);
    }

    #[test]
    fn cls_is_the_first_token_and_last_the_last_real_one() {
        assert_eq!(
            pool(&HIDDEN, 3, 2, &[3, 2], Pooling::Cls),
            [vec![1.0, 2.0], vec![10.0, 0.0]]
        );
        assert_eq!(
            pool(&HIDDEN, 3, 2, &[3, 2], Pooling::Last),
            [vec![5.0, 6.0], vec![20.0, 2.0]]
        );
    }
}
