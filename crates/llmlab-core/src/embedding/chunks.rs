//! Inputs longer than a model's window are split into windows, each
//! embedded alone, and the windows' pooled vectors are averaged weighted by
//! their token counts. For mean pooling that is exactly the mean over all
//! the input's tokens as the windows saw them (each token's state only
//! attends within its window); for CLS or last-token pooling it is the
//! token-weighted mean of the windows' summaries.

use super::RawEmbedding;

/// Split `tokens` into consecutive windows of at most `window` tokens; the
/// last window holds the rest. An empty input gives no windows.
pub fn split_into_windows<T>(tokens: &[T], window: usize) -> Vec<&[T]> {
    assert!(window > 0, "a window holds at least one token");
    tokens.chunks(window).collect()
}

/// The token-weighted mean of the windows of one input.
pub fn combine_chunks(chunks: &[RawEmbedding]) -> RawEmbedding {
    let tokens: usize = chunks.iter().map(|c| c.tokens).sum();
    let width = chunks.first().map_or(0, |c| c.vector.len());
    let mut sum = vec![0f64; width];
    for chunk in chunks {
        for (s, x) in sum.iter_mut().zip(&chunk.vector) {
            *s += f64::from(*x) * chunk.tokens as f64;
        }
    }
    let vector = sum.iter().map(|s| (s / tokens.max(1) as f64) as f32).collect();
    RawEmbedding { vector, tokens }
}
