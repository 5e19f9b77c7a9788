//! 2-D convolutions with the kernel packed once, at load.
//!
//! candle's CPU convolution repacks the whole kernel on every call (for a
//! 1280-channel 3x3 layer, 59 MB read with a stride of nine floats) and
//! scatters its output pixel by pixel: at the small spatial sizes of a
//! UNet's inner levels that costs more than the arithmetic. Here the kernel
//! is packed at load as a (c_out, kh * kw * c_in) matrix in tap-major order,
//! and a stride-1 call runs one of two products:
//! - on AMX tiles, `crate::amx::conv2d` (only in tests for now: see
//!   `Conv2d::load`): the picture's windows
//!   packed straight into bf16 tiles and multiplied in three tile products
//!   (hi*hi + hi*lo + lo*hi), which keeps ~fp32 accuracy (16 of a float's
//!   24 significant bits per operand, sums in fp32);
//! - on every CPU today, `im2col.rs`: the input's shifted windows copied
//!   into the matching (kh * kw * c_in, pixels) matrix band by band and
//!   candle's GEMM, in large, contiguous products.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::im2col;
use crate::amx::{self, Amx, ConvShape, PackedKernel};

/// Three tile products per product (~fp32); one would be plain bf16.
const SPLIT_BF16: bool = true;

#[derive(Clone)]
enum Weights {
    /// AMX tiles (stride 1 on a CPU that has them).
    Tiles {
        amx: Amx,
        kernel: Arc<PackedKernel>,
        bias: Arc<Vec<f32>>,
    },
    /// (c_out, kernel * kernel * c_in), row-major, for im2col products
    /// (stride 1 on other CPUs).
    Im2col { weight: Arc<Vec<f32>>, bias: Arc<Vec<f32>> },
    /// The kernel as stored, (c_out, c_in, kernel, kernel), for candle's own
    /// convolution: the few strided downsamplers, and devices other than the
    /// CPU (candle's CUDA im2col kernel and cuBLAS).
    Candle { weight: Tensor, bias: Tensor },
}

#[derive(Clone)]
pub(crate) struct Conv2d {
    weights: Weights,
    kernel: usize,
    stride: usize,
    padding: usize,
    c_out: usize,
}

impl std::fmt::Debug for Conv2d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = match self.weights {
            Weights::Tiles { .. } => "amx",
            Weights::Im2col { .. } => "im2col",
            Weights::Candle { .. } => "candle",
        };
        f.debug_struct("Conv2d")
            .field("path", &path)
            .field("kernel", &self.kernel)
            .field("stride", &self.stride)
            .field("padding", &self.padding)
            .field("c_out", &self.c_out)
            .finish()
    }
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
        // The tile path (`crate::amx::conv2d`) passes its tests against
        // candle's convolution only where they run on an AMX machine, and it
        // has not been measured on one yet: until it is, every CPU takes the
        // im2col path. Its tests still run wherever AMX is usable.
        Self::load_on(vb, c_in, c_out, kernel, stride, padding, None)
    }

    /// [`Conv2d::load`] with tiles or without (`tiles`: `None`).
    fn load_on(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        tiles: Option<Amx>,
    ) -> Result<Self> {
        let stored = vb.get((c_out, c_in, kernel, kernel), "weight")?;
        let bias = vb.get(c_out, "bias")?;
        let weights = if stride != 1 || !stored.device().is_cpu() {
            // Only the UNet's and VAE's few downsamplers stride.
            Weights::Candle {
                weight: stored,
                bias: bias.reshape((1, c_out, 1, 1))?,
            }
        } else {
            // Both CPU products run in f32 whatever the weights' dtype
            // (candle's f16 GEMM on the CPU is slower and less exact).
            let tap_major = stored
                .to_dtype(DType::F32)?
                .permute((0, 2, 3, 1))?
                .contiguous()?
                .reshape((c_out, kernel * kernel * c_in))?;
            match tiles {
                Some(amx) => Weights::Tiles {
                    amx,
                    kernel: Arc::new(PackedKernel::new(
                        amx,
                        &tap_major.flatten_all()?.to_vec1::<f32>()?,
                        c_out,
                        kernel * kernel * c_in,
                    )),
                    bias: Arc::new(bias.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                },
                None => Weights::Im2col {
                    weight: Arc::new(tap_major.flatten_all()?.to_vec1::<f32>()?),
                    bias: Arc::new(bias.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                },
            }
        };
        Ok(Self {
            weights,
            kernel,
            stride,
            padding,
            c_out,
        })
    }

    /// A stride-1 product on the CPU, by tiles or by im2col.
    fn cpu_product(&self, xs: &Tensor) -> Result<Tensor> {
        let (batch, c_in, height, width) = xs.dims4()?;
        let shape = ConvShape {
            batch,
            c_in,
            height,
            width,
            kernel: self.kernel,
            padding: self.padding,
        };
        let xs = xs.to_dtype(DType::F32)?.contiguous()?;
        let out = {
            let (storage, layout) = xs.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else {
                candle_core::bail!("packed convolutions run on the CPU only")
            };
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("the input was made contiguous above")
            };
            let x = &cpu.as_slice::<f32>()?[start..end];
            match &self.weights {
                Weights::Tiles { amx, kernel, bias } => amx::conv2d(*amx, x, shape, kernel, bias, SPLIT_BF16),
                Weights::Im2col { weight, bias } => im2col::conv2d(x, shape, weight, bias),
                Weights::Candle { .. } => unreachable!("candle's convolution runs in forward"),
            }
        };
        // The product is (c_out, batch * pixels): a picture's own layout
        // when there is one, else its images' channels interleaved.
        let (out_h, out_w) = (shape.out_height(), shape.out_width());
        let out = Tensor::from_vec(out, (self.c_out, batch, out_h, out_w), &Device::Cpu)?;
        if batch == 1 {
            out.reshape((1, self.c_out, out_h, out_w))
        } else {
            out.transpose(0, 1)?.contiguous()
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match &self.weights {
            Weights::Tiles { .. } | Weights::Im2col { .. } => self.cpu_product(xs)?.to_dtype(xs.dtype()),
            Weights::Candle { weight, bias } => xs.conv2d(weight, self.padding, self.stride, 1, 1)?.broadcast_add(bias),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::diffusion::layers::{assert_close, largest_difference};

    /// Each path this machine can run: im2col always, tiles where AMX is.
    fn paths() -> Vec<Option<Amx>> {
        let mut paths = vec![None];
        paths.extend(Amx::detect().map(Some));
        paths
    }

    fn layer(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        tiles: Option<Amx>,
    ) -> (Conv2d, Tensor, Tensor) {
        let device = Device::Cpu;
        let weight = Tensor::randn(0f32, 0.1, (c_out, c_in, kernel, kernel), &device).unwrap();
        let bias = Tensor::randn(0f32, 0.1, c_out, &device).unwrap();
        let tensors = [
            ("weight".to_string(), weight.clone()),
            ("bias".to_string(), bias.clone()),
        ];
        let vb = VarBuilder::from_tensors(tensors.into_iter().collect(), DType::F32, &device);
        (
            Conv2d::load_on(vb, c_in, c_out, kernel, stride, padding, tiles).unwrap(),
            weight,
            bias,
        )
    }

    fn candles(xs: &Tensor, weight: &Tensor, bias: &Tensor, padding: usize, stride: usize) -> Tensor {
        let c_out = bias.dim(0).unwrap();
        xs.conv2d(weight, padding, stride, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, c_out, 1, 1)).unwrap())
            .unwrap()
    }

    #[test]
    fn matches_candles_convolution_for_every_kernel_and_stride() {
        for tiles in paths() {
            for (c_in, c_out, kernel, stride, padding, size) in [
                (3, 5, 3, 1, 1, 9),
                (4, 6, 1, 1, 0, 7),
                (6, 4, 3, 2, 1, 8),
                (2, 3, 3, 1, 0, 6),
            ] {
                let (conv, weight, bias) = layer(c_in, c_out, kernel, stride, padding, tiles);
                let xs = Tensor::randn(0f32, 1.0, (2, c_in, size, size + 1), &Device::Cpu).unwrap();
                let ours = conv.forward(&xs).unwrap();
                let theirs = candles(&xs, &weight, &bias, padding, stride);
                assert_eq!(ours.dims(), theirs.dims());
                assert!(
                    largest_difference(&ours, &theirs) < 1e-4,
                    "kernel {kernel} stride {stride} tiles {}",
                    tiles.is_some()
                );
            }
        }
    }

    /// Sizes that take every edge of the tile path: more output rows than
    /// one block (128), more columns than one block (256) and than one band,
    /// a K longer than one chunk (512) and not a multiple of 32, rows of
    /// pixels that are not multiples of 16, two images.
    #[test]
    fn tiles_match_candle_across_blocks_bands_and_images() {
        let Some(amx) = Amx::detect() else {
            llmlab_core::config::skip_on_this_machine("this CPU or OS offers no AMX tiles");
            return;
        };
        for (c_in, c_out, height, width, batch) in [(70, 150, 23, 21, 2), (64, 40, 70, 66, 1), (300, 33, 5, 3, 3)] {
            let (conv, weight, bias) = layer(c_in, c_out, 3, 1, 1, Some(amx));
            let xs = Tensor::randn(0f32, 1.0, (batch, c_in, height, width), &Device::Cpu).unwrap();
            let ours = conv.forward(&xs).unwrap();
            assert_close(&ours, &candles(&xs, &weight, &bias, 1, 1), 1e-4);
        }
    }

    #[test]
    fn bands_of_rows_give_the_same_result_as_one_product() {
        // So wide that one row of im2col columns (27 x 2^17 elements) is
        // over the limit and holds enough pixels: one row per band, 24 bands.
        for tiles in paths() {
            let (conv, weight, bias) = layer(3, 2, 3, 1, 1, tiles);
            let xs = Tensor::randn(0f32, 1.0, (1, 3, 24, 1 << 17), &Device::Cpu).unwrap();
            let ours = conv.forward(&xs).unwrap();
            assert!(largest_difference(&ours, &candles(&xs, &weight, &bias, 1, 1)) < 1e-4);
        }
    }
}
