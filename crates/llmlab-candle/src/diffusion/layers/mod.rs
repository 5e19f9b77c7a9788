//! Building blocks of our own diffusion networks, written for speed on the
//! CPU where candle's general-purpose versions are slow for these shapes:
//! convolutions with weights packed once at load (`conv.rs`), group norm
//! fused with its SiLU (`group_norm.rs`), and attention computed in bands
//! of queries so that its score matrix stays small (`attention.rs`).

mod attention;
mod conv;
mod group_norm;

pub(crate) use attention::{attention, causal_attention};
pub(crate) use conv::Conv2d;
pub(crate) use group_norm::GroupNorm;

/// Tests: the largest absolute difference between two tensors of one shape.
#[cfg(test)]
pub(crate) fn largest_difference(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}
