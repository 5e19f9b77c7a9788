//! Building blocks of our own diffusion networks, written for speed on the
//! CPU where candle's general-purpose versions are slow for these shapes:
//! convolutions with weights packed once at load (`conv.rs`, multiplied
//! on AMX tiles in `crate::amx` or by im2col bands in `im2col.rs`), group norm
//! fused with its SiLU (`group_norm.rs`), and attention computed in bands
//! of queries so that its score matrix stays small (`attention.rs`).

mod attention;
mod conv;
mod group_norm;
mod im2col;

pub(crate) use attention::{attention, causal_attention};
pub(crate) use conv::Conv2d;
pub(crate) use group_norm::GroupNorm;

/// Tests: the variables of `varmap` as a loaded model's weights in
/// `dtype`, converted on `get` as the pipeline's loader does (a `VarMap`
/// builder hands its variables out as they are).
#[cfg(test)]
pub(crate) fn as_loaded(varmap: &candle_nn::VarMap, dtype: candle_core::DType) -> candle_nn::VarBuilder<'static> {
    let tensors = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    candle_nn::VarBuilder::from_tensors(tensors, dtype, &candle_core::Device::Cpu)
}

/// Tests: every variable of `varmap` drawn from N(0, 0.2) (norms start as
/// ones and zeros, which would hide their arithmetic).
#[cfg(test)]
pub(crate) fn randomise(varmap: &candle_nn::VarMap) {
    for var in varmap.all_vars() {
        let random = candle_core::Tensor::randn(0f32, 0.2, var.shape(), var.device()).unwrap();
        var.set(&random).unwrap();
    }
}

/// Tests: `got` is within `relative` of `expected`'s largest magnitude
/// (at least 1) everywhere, and of `expected`'s shape.
#[cfg(test)]
pub(crate) fn assert_close(got: &candle_core::Tensor, expected: &candle_core::Tensor, relative: f32) {
    assert_eq!(got.dims(), expected.dims());
    let scale: f32 = expected.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    let worst = largest_difference(got, expected);
    assert!(worst <= relative * scale.max(1.0), "{worst} of {scale}");
}

/// Tests: the largest absolute difference between two tensors of one shape.
#[cfg(test)]
pub(crate) fn largest_difference(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}
