//! Linear layers (`y = x Wᵀ + b`) on the fastest matmul this machine has:
//! AMX tiles where the CPU and the OS allow them, candle's matmul (the
//! `gemm` crate) everywhere else. Both give fp32-level results.

use crate::amx::{self, Amx, PackedWeights};
use candle_core::{Device, Tensor};

/// Three bf16 tile products per product keep ~fp32 accuracy (cosine to
/// sentence-transformers above 0.99999); one would be 3x faster but plain
/// bf16, which moves embeddings visibly (see bench/RESULTS.md).
const SPLIT_BF16: bool = true;

/// Which kernel the layers of one loaded model use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MatmulKernel {
    Amx(Amx),
    Candle,
}

impl MatmulKernel {
    /// AMX when usable and not switched off (`LLMLAB_AMX=0`), else candle.
    pub fn detect() -> Self {
        match Amx::allowed() {
            Some(amx) => Self::Amx(amx),
            None => Self::Candle,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Amx(_) => "amx-bf16x3",
            Self::Candle => "candle-gemm",
        }
    }
}

enum Weights {
    Amx {
        amx: Amx,
        packed: PackedWeights,
        bias: Vec<f32>,
    },
    /// `weight` is `[outputs, inputs]`, multiplied transposed as candle's
    /// Linear does.
    Candle { weight: Tensor, bias: Tensor },
}

pub(crate) struct Linear {
    weights: Weights,
    inputs: usize,
}

impl Linear {
    /// A layer from a row-major `outputs` x `inputs` weight and its bias.
    pub fn new(
        kernel: MatmulKernel,
        weight: &[f32],
        bias: Vec<f32>,
        outputs: usize,
        inputs: usize,
    ) -> candle_core::Result<Self> {
        assert_eq!(bias.len(), outputs, "bias is not {outputs} long");
        let weights = match kernel {
            MatmulKernel::Amx(amx) => Weights::Amx {
                amx,
                packed: PackedWeights::new(amx, weight, outputs, inputs),
                bias,
            },
            MatmulKernel::Candle => Weights::Candle {
                weight: Tensor::from_slice(weight, (outputs, inputs), &Device::Cpu)?,
                bias: Tensor::from_vec(bias, outputs, &Device::Cpu)?,
            },
        };
        Ok(Self { weights, inputs })
    }

    /// `x`: `rows` x inputs, row-major; returns rows x outputs.
    #[cfg(test)]
    pub fn forward(&self, x: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
        let mut out = Vec::new();
        self.forward_into(x, rows, &mut out)?;
        Ok(out)
    }

    /// [`Linear::forward`] into `out`, reusing its allocation: a forward
    /// pass then faults in its big buffers once, not once per layer.
    pub fn forward_into(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> candle_core::Result<()> {
        debug_assert_eq!(x.len(), rows * self.inputs);
        match &self.weights {
            Weights::Amx { amx, packed, bias } => amx::linear(*amx, x, rows, packed, bias, SPLIT_BF16, out),
            Weights::Candle { weight, bias } => {
                let x = Tensor::from_slice(x, (rows, self.inputs), &Device::Cpu)?;
                *out = x.matmul(&weight.t()?)?.broadcast_add(bias)?.flatten_all()?.to_vec1()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-scale, scale): no rand dependency needed.
    fn values(count: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    }

    /// Odd sizes on purpose: rows, inputs and outputs that are not
    /// multiples of the 32-wide tiles exercise every padding path.
    #[test]
    fn amx_matches_candle_to_fp32_accuracy() {
        let Some(amx) = Amx::detect() else {
            llmlab_core::config::skip_on_this_machine(
                "this CPU or OS offers no AMX tiles; only candle's matmul runs here",
            );
            return;
        };
        for (rows, inputs, outputs) in [(1, 8, 3), (37, 100, 70), (200, 384, 1152), (65, 1536, 384)] {
            let weight = values(outputs * inputs, 1, 0.1);
            let bias = values(outputs, 2, 1.0);
            let x = values(rows * inputs, 3, 2.0);
            let tiles = Linear::new(MatmulKernel::Amx(amx), &weight, bias.clone(), outputs, inputs).unwrap();
            let reference = Linear::new(MatmulKernel::Candle, &weight, bias, outputs, inputs).unwrap();
            let (got, want) = (tiles.forward(&x, rows).unwrap(), reference.forward(&x, rows).unwrap());
            assert_eq!(got.len(), rows * outputs);
            // Error relative to the size of the terms summed, as fp32 error
            // is: sum over k of |x w|.
            for r in 0..rows {
                for o in 0..outputs {
                    let magnitude: f32 = (0..inputs)
                        .map(|k| (x[r * inputs + k] * weight[o * inputs + k]).abs())
                        .sum();
                    let gap = (got[r * outputs + o] - want[r * outputs + o]).abs();
                    assert!(
                        gap <= 1e-5 * (magnitude + 1.0),
                        "{rows}x{inputs}x{outputs} at ({r}, {o}): {} vs {}",
                        got[r * outputs + o],
                        want[r * outputs + o]
                    );
                }
            }
        }
    }

    /// Tile products treat every row alike, so batching never changes a
    /// result (candle's gemm picks kernels by size and makes no such promise).
    #[test]
    fn on_amx_a_row_does_not_depend_on_its_batch() {
        let Some(amx) = Amx::detect() else {
            llmlab_core::config::skip_on_this_machine("no AMX tiles here");
            return;
        };
        let kernel = MatmulKernel::Amx(amx);
        let (inputs, outputs) = (96, 64);
        let layer = Linear::new(
            kernel,
            &values(outputs * inputs, 4, 0.2),
            values(outputs, 5, 1.0),
            outputs,
            inputs,
        )
        .unwrap();
        let x = values(70 * inputs, 6, 1.0);
        let all = layer.forward(&x, 70).unwrap();
        let alone = layer.forward(&x[69 * inputs..], 1).unwrap();
        assert_eq!(&all[69 * outputs..], &alone[..]);
    }
}
