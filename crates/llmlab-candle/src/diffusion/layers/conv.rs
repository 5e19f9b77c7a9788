//! 2-D convolutions as one matrix product per band of output rows.
//!
//! candle's CPU convolution repacks the whole kernel on every call (for a
//! 1280-channel 3x3 layer, 59 MB read with a stride of nine floats) and
//! scatters its output pixel by pixel: at the small spatial sizes of a
//! UNet's inner levels that costs more than the arithmetic. Here the kernel
//! is packed once, at load, as a (c_out, kh * kw * c_in) matrix in tap-major
//! order; a call copies the input's shifted windows into the matching
//! (kh * kw * c_in, pixels) matrix (im2col) and multiplies, so candle's GEMM
//! does all of the work in large, contiguous products.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Most elements an im2col band may hold (4 MiB of f32). A VAE decoder
/// layer at 1024x1024 would otherwise need gigabytes at once; and a band
/// this small stays in the caches and under the allocator's mmap threshold,
/// so its buffer is reused instead of faulted in afresh: at 64 MiB bands
/// the SD 1.5 VAE decoder spent a sixth of its time in page faults and
/// copies, and a 256x256 image took 2.3 s longer.
const MAX_BAND_ELEMENTS: usize = 1 << 20;
/// Fewest output pixels a band holds (unless the image has fewer): GEMMs
/// narrower than this lose more to packing and edges than small bands save.
/// The UNet's inner levels (16x16 and below at 256x256) stay one product.
const MIN_BAND_PIXELS: usize = 512;

#[derive(Debug, Clone)]
pub(crate) struct Conv2d {
    /// (c_out, kernel * kernel * c_in); for strided layers and on devices
    /// other than the CPU, the kernel as stored, (c_out, c_in, kernel,
    /// kernel), for candle's own convolution.
    weight: Tensor,
    /// (1, c_out, 1, 1)
    bias: Option<Tensor>,
    kernel: usize,
    stride: usize,
    padding: usize,
    c_out: usize,
}

impl Conv2d {
    /// The diffusers layer at `vb`: `weight` (c_out, c_in, k, k) and `bias`.
    pub fn load(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let stored = vb.get((c_out, c_in, kernel, kernel), "weight")?;
        let bias = vb.get(c_out, "bias")?.reshape((1, c_out, 1, 1))?;
        // Packed for the CPU's im2col path; other devices have convolutions
        // of their own (candle's CUDA im2col kernel and cuBLAS).
        let weight = if stride == 1 && stored.device().is_cpu() {
            stored
                .permute((0, 2, 3, 1))?
                .contiguous()?
                .reshape((c_out, kernel * kernel * c_in))?
        } else {
            // Only the UNet's and VAE's few downsamplers stride; candle's
            // convolution serves them.
            stored
        };
        Ok(Self {
            weight,
            bias: Some(bias),
            kernel,
            stride,
            padding,
            c_out,
        })
    }

    fn im2col_product(&self, xs: &Tensor) -> Result<Tensor> {
        let (batch, c_in, height, width) = xs.dims4()?;
        let k = self.kernel;
        let out_h = height + 2 * self.padding + 1 - k;
        let out_w = width + 2 * self.padding + 1 - k;
        let padded = if self.padding > 0 {
            xs.pad_with_zeros(2, self.padding, self.padding)?
                .pad_with_zeros(3, self.padding, self.padding)?
        } else {
            xs.clone()
        };
        let weight = self.weight.broadcast_left(batch)?;
        let per_row = batch * k * k * c_in * out_w;
        let fewest_rows = MIN_BAND_PIXELS.div_ceil(out_w.max(1));
        let band = (MAX_BAND_ELEMENTS / per_row.max(1)).max(fewest_rows).clamp(1, out_h);
        let mut bands = Vec::with_capacity(out_h.div_ceil(band));
        let mut row = 0;
        while row < out_h {
            let rows = band.min(out_h - row);
            let columns = if k == 1 {
                padded
                    .narrow(2, row, rows)?
                    .contiguous()?
                    .reshape((batch, c_in, rows * out_w))?
            } else {
                let mut taps = Vec::with_capacity(k * k);
                for dy in 0..k {
                    for dx in 0..k {
                        taps.push(padded.narrow(2, row + dy, rows)?.narrow(3, dx, out_w)?.contiguous()?);
                    }
                }
                Tensor::stack(&taps, 1)?.reshape((batch, k * k * c_in, rows * out_w))?
            };
            bands.push(weight.matmul(&columns)?.reshape((batch, self.c_out, rows, out_w))?);
            row += rows;
        }
        if bands.len() == 1 {
            Ok(bands.remove(0))
        } else {
            Tensor::cat(&bands, 2)
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let out = if self.weight.rank() == 2 {
            self.im2col_product(xs)?
        } else {
            xs.conv2d(&self.weight, self.padding, self.stride, 1, 1)?
        };
        match &self.bias {
            Some(bias) => out.broadcast_add(bias),
            None => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::diffusion::layers::largest_difference;

    fn layer(c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize) -> (Conv2d, Tensor, Tensor) {
        let device = Device::Cpu;
        let weight = Tensor::randn(0f32, 0.1, (c_out, c_in, kernel, kernel), &device).unwrap();
        let bias = Tensor::randn(0f32, 0.1, c_out, &device).unwrap();
        let tensors = [
            ("weight".to_string(), weight.clone()),
            ("bias".to_string(), bias.clone()),
        ];
        let vb = VarBuilder::from_tensors(tensors.into_iter().collect(), DType::F32, &device);
        (
            Conv2d::load(vb, c_in, c_out, kernel, stride, padding).unwrap(),
            weight,
            bias,
        )
    }

    #[test]
    fn matches_candles_convolution_for_every_kernel_and_stride() {
        for (c_in, c_out, kernel, stride, padding, size) in [
            (3, 5, 3, 1, 1, 9),
            (4, 6, 1, 1, 0, 7),
            (6, 4, 3, 2, 1, 8),
            (2, 3, 3, 1, 0, 6),
        ] {
            let (conv, weight, bias) = layer(c_in, c_out, kernel, stride, padding);
            let xs = Tensor::randn(0f32, 1.0, (2, c_in, size, size + 1), &Device::Cpu).unwrap();
            let ours = conv.forward(&xs).unwrap();
            let theirs = xs
                .conv2d(&weight, padding, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, c_out, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(
                largest_difference(&ours, &theirs) < 1e-4,
                "kernel {kernel} stride {stride}"
            );
        }
    }

    #[test]
    fn bands_of_rows_give_the_same_result_as_one_product() {
        // So wide that one row of im2col columns (27 x 2^17 elements) is
        // over the limit and holds enough pixels: one row per band, 24 bands.
        let (conv, weight, bias) = layer(3, 2, 3, 1, 1);
        let xs = Tensor::randn(0f32, 1.0, (1, 3, 24, 1 << 17), &Device::Cpu).unwrap();
        let ours = conv.forward(&xs).unwrap();
        let theirs = xs
            .conv2d(&weight, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, 2, 1, 1)).unwrap())
            .unwrap();
        assert!(largest_difference(&ours, &theirs) < 1e-4);
    }
}
