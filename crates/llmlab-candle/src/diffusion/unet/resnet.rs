//! diffusers' `ResnetBlock2D`: norm, SiLU, convolution, twice, with the
//! step's time embedding added in between (UNet) or not (VAE), and a 1x1
//! convolution on the shortcut when the channel count changes.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::diffusion::layers::{Conv2d, GroupNorm};

#[derive(Debug)]
pub(crate) struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

/// What a resnet block is built with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResnetShape {
    pub c_in: usize,
    pub c_out: usize,
    /// Width of the time embedding, or `None` where there is none (VAE).
    pub time_embedding: Option<usize>,
    pub groups: usize,
    pub eps: f64,
}

impl ResnetBlock {
    pub fn load(vb: VarBuilder, shape: ResnetShape) -> Result<Self> {
        let ResnetShape {
            c_in,
            c_out,
            groups,
            eps,
            ..
        } = shape;
        let time_emb_proj = match shape.time_embedding {
            Some(width) => Some(candle_nn::linear(width, c_out, vb.pp("time_emb_proj"))?),
            None => None,
        };
        let shortcut = if c_in == c_out {
            None
        } else {
            Some(Conv2d::load(vb.pp("conv_shortcut"), c_in, c_out, 1, 1, 0)?)
        };
        Ok(Self {
            norm1: GroupNorm::load(vb.pp("norm1"), groups, c_in, eps)?,
            conv1: Conv2d::load(vb.pp("conv1"), c_in, c_out, 3, 1, 1)?,
            time_emb_proj,
            norm2: GroupNorm::load(vb.pp("norm2"), groups, c_out, eps)?,
            conv2: Conv2d::load(vb.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            shortcut,
        })
    }

    /// `time` is the SiLU of the step's embedding (batch, width), shared by
    /// every block of the step.
    pub fn forward(&self, xs: &Tensor, time: Option<&Tensor>) -> Result<Tensor> {
        let mut hidden = self.conv1.forward(&self.norm1.forward_silu(xs)?)?;
        if let (Some(project), Some(time)) = (&self.time_emb_proj, time) {
            hidden = hidden.broadcast_add(&project.forward(time)?.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        let hidden = self.conv2.forward(&self.norm2.forward_silu(&hidden)?)?;
        match &self.shortcut {
            Some(shortcut) => shortcut.forward(xs)? + hidden,
            None => xs + hidden,
        }
    }
}
