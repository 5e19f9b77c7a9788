//! Pooling a batch's token states into one vector per sequence. Sequences
//! are packed one after another, so each one's rows are exactly its own
//! tokens.

use llmlab_core::embedding::Pooling;

/// Pool `hidden`, the row-major `[sum of lengths, width]` states of a
/// batch whose sequence `i` holds `lengths[i]` tokens.
pub(crate) fn pool(hidden: &[f32], width: usize, lengths: &[usize], pooling: Pooling) -> Vec<Vec<f32>> {
    debug_assert_eq!(hidden.len(), lengths.iter().sum::<usize>() * width);
    let mut start = 0;
    lengths
        .iter()
        .map(|&length| {
            let rows = &hidden[start * width..(start + length) * width];
            start += length;
            let token = |t: usize| &rows[t * width..(t + 1) * width];
            match pooling {
                Pooling::Mean => {
                    // f64 sums: 512 tokens of f32 would lose digits the
                    // reference (PyTorch) keeps.
                    let mut sum = vec![0f64; width];
                    for row in rows.chunks_exact(width) {
                        for (s, x) in sum.iter_mut().zip(row) {
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

    // Two sequences of width 2: three tokens, then two.
    const HIDDEN: [f32; 10] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0, 0.0, 20.0, 2.0];

    #[test]
    fn mean_averages_each_sequence_own_tokens() {
        let pooled = pool(&HIDDEN, 2, &[3, 2], Pooling::Mean);
        assert_eq!(pooled, [vec![3.0, 4.0], vec![15.0, 1.0]]);
    }

    #[test]
    fn cls_is_the_first_token_and_last_the_last_one() {
        assert_eq!(
            pool(&HIDDEN, 2, &[3, 2], Pooling::Cls),
            [vec![1.0, 2.0], vec![10.0, 0.0]]
        );
        assert_eq!(
            pool(&HIDDEN, 2, &[3, 2], Pooling::Last),
            [vec![5.0, 6.0], vec![20.0, 2.0]]
        );
    }
}
