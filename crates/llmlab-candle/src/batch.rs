//! Grouping windows into forward passes. Sequences run packed without
//! padding, so a pass is bounded by its tokens (activation memory) and its
//! sequence count; windows go longest first so the heaviest attention work
//! starts early and equal inputs land in repeatable batches.

/// Most sequences in one forward pass.
pub(crate) const MAX_SEQUENCES: usize = 256;
/// Most tokens in one forward pass: 16 full 512-token windows. Activations
/// take about 12 KiB per token for a 384-wide model.
pub(crate) const MAX_BATCH_TOKENS: usize = 8192;

/// Batches of window indices (into `lengths`), longest windows first. Every
/// index appears in exactly one batch; a window longer than the token bound
/// still gets a batch of its own.
pub(crate) fn plan_batches(lengths: &[usize], max_sequences: usize, max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable: equal lengths keep request order, so results are repeatable.
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    let mut batches: Vec<(Vec<usize>, usize)> = Vec::new();
    for index in order {
        let length = lengths[index];
        match batches.last_mut() {
            Some((batch, tokens)) if batch.len() < max_sequences && *tokens + length <= max_tokens => {
                batch.push(index);
                *tokens += length;
            }
            _ => batches.push((vec![index], length)),
        }
    }
    batches.into_iter().map(|(batch, _)| batch).collect()
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
    fn tokens_bound_a_batch() {
        let lengths = [512, 512, 512, 10, 10];
        let batches = plan_batches(&lengths, 32, 1024);
        assert_eq!(batches, [vec![0, 1], vec![2, 3, 4]]);
        // Longer than the bound alone: still one batch of its own.
        assert_eq!(plan_batches(&[2000, 1], 32, 1024), [vec![0], vec![1]]);
        assert!(plan_batches(&[], 32, 1024).is_empty());
    }
}
