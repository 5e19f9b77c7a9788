//! Grouping windows into batches. Windows are sorted longest first so each
//! batch pads to a length close to all of its members (little work wasted
//! on padding), and a batch is bounded both in sequences and in padded
//! tokens, because attention memory grows with the square of the length.

/// Most sequences in one forward pass.
pub(crate) const MAX_SEQUENCES: usize = 32;
/// Most padded tokens (sequences × longest) in one forward pass: 16 full
/// 512-token windows, or 32 of up to 256.
pub(crate) const MAX_PADDED_TOKENS: usize = 8192;

/// Batches of window indices (into `lengths`), longest windows first. Every
/// index appears in exactly one batch; a window longer than the token bound
/// still gets a batch of its own.
pub(crate) fn plan_batches(lengths: &[usize], max_sequences: usize, max_padded_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable: equal lengths keep request order, so results are repeatable.
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for index in order {
        let fits = batches.last().is_some_and(|batch| {
            // The batch's first window is its longest: it sets the padding.
            let longest = lengths[batch[0]];
            batch.len() < max_sequences && (batch.len() + 1) * longest <= max_padded_tokens
        });
        match batches.last_mut() {
            Some(batch) if fits => batch.push(index),
            _ => batches.push(vec![index]),
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_longest_first_and_cover_every_window_once() {
        let lengths = [3, 9, 5, 9, 1];
        let batches = plan_batches(&lengths, 2, 100);
        assert_eq!(batches, [vec![1, 3], vec![2, 0], vec![4]]);
    }

    #[test]
    fn padded_tokens_bound_a_batch() {
        let lengths = [512, 512, 512, 10, 10];
        let batches = plan_batches(&lengths, 32, 1024);
        assert_eq!(batches, [vec![0, 1], vec![2, 3], vec![4]]);
        // Longer than the bound alone: still one batch of its own.
        assert_eq!(plan_batches(&[2000, 1], 32, 1024), [vec![0], vec![1]]);
        assert!(plan_batches(&[], 32, 1024).is_empty());
    }
}
