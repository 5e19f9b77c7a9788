//! Group normalisation, optionally followed by SiLU, in one pass per group.
//!
//! candle's `GroupNorm` is eight tensor operations (means, differences,
//! squares, square root, division, scale, shift), each a full pass over the
//! activations with a fresh allocation, and the SiLU that follows almost
//! every norm in a UNet is a ninth. On the CPU this does it as one custom
//! operation, groups in parallel. Elsewhere (a GPU, half precision) each
//! group is normalised as one row of candle's fused layer norm, then scaled
//! and shifted per channel: four kernels instead of about fifteen, and no F32
//! copy of F16 activations in memory.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

#[derive(Debug, Clone)]
pub(crate) struct GroupNorm {
    groups: usize,
    eps: f64,
    /// (channels, 1, 1), in the weights' type, for devices other than the CPU.
    weight: Tensor,
    bias: Tensor,
    scale: Vec<f32>,
    shift: Vec<f32>,
    /// The last unit scale and zero shift the layer norm took (row length,
    /// type and the two rows): a layer sees the same size every step, and
    /// two fills a call are two kernel launches saved.
    unit_rows: Arc<Mutex<Option<UnitRows>>>,
}

/// Ones and zeros of one row length and type, for candle's layer norm.
#[derive(Debug)]
struct UnitRows {
    len: usize,
    dtype: DType,
    ones: Tensor,
    zeros: Tensor,
}

impl GroupNorm {
    /// The diffusers layer at `vb` (`weight` and `bias`, one per channel).
    pub fn load(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(channels, "weight")?;
        let bias = vb.get(channels, "bias")?;
        let scale = weight.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let shift = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("group norm: {channels} channels do not split into {groups} groups");
        }
        Ok(Self {
            groups,
            eps,
            weight: weight.reshape((channels, 1, 1))?,
            bias: bias.reshape((channels, 1, 1))?,
            scale,
            shift,
            unit_rows: Arc::default(),
        })
    }

    /// The norm followed by SiLU.
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(xs, true)
    }

    fn run(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        if !xs.device().is_cpu() || xs.dtype() != DType::F32 {
            return self.run_as_layer_norm(xs, silu);
        }
        xs.contiguous()?.apply_op1_no_bwd(&FusedGroupNorm { norm: self, silu })
    }

    fn unit_rows(&self, row: usize, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut cached = self.unit_rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(rows) = cached.as_ref() {
            if rows.len == row && rows.dtype == xs.dtype() && rows.ones.device().same_device(xs.device()) {
                return Ok((rows.ones.clone(), rows.zeros.clone()));
            }
        }
        let ones = Tensor::ones(row, xs.dtype(), xs.device())?;
        let zeros = ones.zeros_like()?;
        *cached = Some(UnitRows {
            len: row,
            dtype: xs.dtype(),
            ones: ones.clone(),
            zeros: zeros.clone(),
        });
        Ok((ones, zeros))
    }

    /// `xs` (batch, channels, spatial...) with each group a row of
    /// candle's layer norm (which keeps its sums in F32).
    fn run_as_layer_norm(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        let batch = xs.dim(0)?;
        let row = xs.elem_count() / (batch * self.groups);
        let rows = xs.contiguous()?.reshape((batch * self.groups, row))?;
        let (ones, zeros) = self.unit_rows(row, xs)?;
        let normed = candle_nn::ops::layer_norm(&rows, &ones, &zeros, self.eps as f32)?.reshape(xs.shape())?;
        let out = normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?;
        if silu {
            candle_nn::ops::silu(&out)
        } else {
            Ok(out)
        }
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(xs, false)
    }
}

struct FusedGroupNorm<'a> {
    norm: &'a GroupNorm,
    silu: bool,
}

impl CustomOp1 for FusedGroupNorm<'_> {
    fn name(&self) -> &'static str {
        "group-norm-silu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("group norm: f32 activations only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("group norm: activations must be contiguous");
        };
        let dims = layout.dims();
        let channels = *dims
            .get(1)
            .ok_or_else(|| candle_core::Error::Msg("group norm: no channel axis".into()))?;
        let norm = self.norm;
        if channels != norm.scale.len() || channels % norm.groups != 0 {
            candle_core::bail!("group norm: {channels} channels for a norm of {}", norm.scale.len());
        }
        let xs = &all[start..end];
        let spatial: usize = dims[2..].iter().product();
        let per_group = channels / norm.groups * spatial;
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(per_group)
            .zip(xs.par_chunks(per_group))
            .enumerate()
            .for_each(|(index, (out, xs))| {
                // Sums in f64: a group of a VAE layer at 1024x1024 has
                // millions of values.
                let count = xs.len() as f64;
                let mean = xs.iter().map(|&x| f64::from(x)).sum::<f64>() / count;
                let variance = xs.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / count;
                let inverse = 1.0 / (variance + norm.eps).sqrt();
                let first_channel = (index % norm.groups) * (channels / norm.groups);
                for (c, (out, xs)) in out.chunks_mut(spatial).zip(xs.chunks(spatial)).enumerate() {
                    let scale = (inverse * f64::from(norm.scale[first_channel + c])) as f32;
                    let shift = norm.shift[first_channel + c] - mean as f32 * scale;
                    for (o, &x) in out.iter_mut().zip(xs) {
                        let y = x * scale + shift;
                        *o = if self.silu { y / (1.0 + (-y).exp()) } else { y };
                    }
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    #[test]
    fn matches_candles_group_norm_and_silu() {
        let device = Device::Cpu;
        let (channels, groups) = (12, 4);
        let weight = Tensor::randn(1f32, 0.2, channels, &device).unwrap();
        let bias = Tensor::randn(0f32, 0.2, channels, &device).unwrap();
        let tensors = [
            ("weight".to_string(), weight.clone()),
            ("bias".to_string(), bias.clone()),
        ];
        let vb = VarBuilder::from_tensors(tensors.into_iter().collect(), DType::F32, &device);
        let ours = GroupNorm::load(vb, groups, channels, 1e-5).unwrap();
        let theirs = candle_nn::GroupNorm::new(weight, bias, channels, groups, 1e-5).unwrap();
        let xs = (Tensor::randn(3f32, 2.0, (2, channels, 5, 7), &device).unwrap())
            .contiguous()
            .unwrap();
        let plain = (ours.forward(&xs).unwrap() - theirs.forward(&xs).unwrap()).unwrap();
        let expected_silu = candle_nn::ops::silu(&theirs.forward(&xs).unwrap()).unwrap();
        let silu = (ours.forward_silu(&xs).unwrap() - &expected_silu).unwrap();
        // The path of other devices and half precision, here in F32.
        let as_layer_norm = (ours.run_as_layer_norm(&xs, true).unwrap() - &expected_silu).unwrap();
        for difference in [plain, silu, as_layer_norm] {
            let worst: f32 = difference.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(worst < 1e-4, "{worst}");
        }
    }
}
