//! Log-probabilities of a sampled token and its strongest alternatives,
//! computed from raw logits with a numerically stable log-softmax. Only
//! called when a request asks for them: one pass over the
//! vocabulary per token.

/// (token id, log-probability) of `chosen`, and the `top_n` most likely
/// tokens in descending order.
pub(crate) fn logprobs(logits: &[f32], chosen: usize, top_n: usize) -> (f32, Vec<(usize, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&l| f64::from(l - max).exp()).sum::<f64>().ln() as f32;
    let to_logprob = |logit: f32| logit - max - log_sum;
    let chosen_logprob = logits.get(chosen).copied().map_or(f32::NEG_INFINITY, to_logprob);
    if top_n == 0 {
        return (chosen_logprob, Vec::new());
    }
    // Keep a small sorted list instead of sorting the whole vocabulary.
    let mut top: Vec<(usize, f32)> = Vec::with_capacity(top_n + 1);
    for (id, &logit) in logits.iter().enumerate() {
        if top.len() == top_n && logit <= top[top_n - 1].1 {
            continue;
        }
        let at = top.partition_point(|&(_, l)| l >= logit);
        top.insert(at, (id, logit));
        top.truncate(top_n);
    }
    (
        chosen_logprob,
        top.into_iter().map(|(id, logit)| (id, to_logprob(logit))).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_softmax() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        let (chosen, top) = logprobs(&logits, 2, 2);
        assert!((chosen - (2.0f32.exp() / z).ln()).abs() < 1e-5);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
        assert!((top[0].1 - (3.0f32.exp() / z).ln()).abs() < 1e-5);
        let total: f32 = logits
            .iter()
            .enumerate()
            .map(|(i, _)| logprobs(&logits, i, 0).0.exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let (chosen, top) = logprobs(&[1000.0, 999.0], 0, 5);
        assert!(chosen.is_finite() && chosen < 0.0);
        assert_eq!(top.len(), 2);
    }
}
