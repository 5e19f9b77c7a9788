//! diffusers' `Transformer2DModel` as the Stable Diffusion UNets use it:
//! group norm, a projection into tokens (1x1 convolution, or a linear layer
//! in SD 2.x and SDXL), `BasicTransformerBlock`s (self-attention,
//! cross-attention to the prompt, GEGLU feed-forward, each after a layer
//! norm and added to its input), and the projection back.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use crate::diffusion::layers::{attention, Conv2d, GroupNorm};

#[derive(Debug)]
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    fn load(vb: VarBuilder, width: usize, context_width: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            to_q: candle_nn::linear_no_bias(width, width, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(context_width, width, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(context_width, width, vb.pp("to_v"))?,
            to_out: candle_nn::linear(width, width, vb.pp("to_out.0"))?,
            heads,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let q = self.to_q.forward(xs)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        self.to_out.forward(&attention(&q, &k, &v, self.heads)?)
    }
}

/// The gated feed-forward: `proj` makes twice the inner width; one half
/// gates the other through GELU.
#[derive(Debug)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn load(vb: VarBuilder, width: usize) -> Result<Self> {
        let inner = 4 * width;
        Ok(Self {
            proj: candle_nn::linear(width, 2 * inner, vb.pp("net.0.proj"))?,
            out: candle_nn::linear(inner, width, vb.pp("net.2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let both = self.proj.forward(xs)?;
        let halves = both.chunk(2, D::Minus1)?;
        self.out.forward(&(&halves[0] * halves[1].gelu_erf()?)?)
    }
}

#[derive(Debug)]
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl TransformerBlock {
    fn load(vb: VarBuilder, width: usize, context_width: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            norm1: candle_nn::layer_norm(width, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::load(vb.pp("attn1"), width, width, heads)?,
            norm2: candle_nn::layer_norm(width, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::load(vb.pp("attn2"), width, context_width, heads)?,
            norm3: candle_nn::layer_norm(width, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::load(vb.pp("ff"), width)?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let normed = self.norm1.forward(xs)?;
        let xs = (self.attn1.forward(&normed, &normed)? + xs)?;
        let xs = (self.attn2.forward(&self.norm2.forward(&xs)?, context)? + xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?)? + xs
    }
}

/// Into and out of tokens: 1x1 convolutions (SD 1.x) or linear layers.
#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

#[derive(Debug)]
pub(crate) struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

/// What a spatial transformer is built with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransformerShape {
    pub width: usize,
    pub context_width: usize,
    pub heads: usize,
    pub layers: usize,
    pub groups: usize,
    pub linear_projection: bool,
}

impl SpatialTransformer {
    pub fn load(vb: VarBuilder, shape: TransformerShape) -> Result<Self> {
        let width = shape.width;
        let projection = |name: &str| -> Result<Projection> {
            if shape.linear_projection {
                Ok(Projection::Linear(candle_nn::linear(width, width, vb.pp(name))?))
            } else {
                Ok(Projection::Conv(Conv2d::load(vb.pp(name), width, width, 1, 1, 0)?))
            }
        };
        let blocks = (0..shape.layers)
            .map(|i| {
                TransformerBlock::load(
                    vb.pp(format!("transformer_blocks.{i}")),
                    width,
                    shape.context_width,
                    shape.heads,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            norm: GroupNorm::load(vb.pp("norm"), shape.groups, width, 1e-6)?,
            proj_in: projection("proj_in")?,
            blocks,
            proj_out: projection("proj_out")?,
        })
    }

    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = xs.dims4()?;
        let to_tokens = |t: Tensor| -> Result<Tensor> {
            t.reshape((batch, channels, height * width))?
                .transpose(1, 2)?
                .contiguous()
        };
        let from_tokens = |t: Tensor| -> Result<Tensor> {
            t.transpose(1, 2)?
                .contiguous()?
                .reshape((batch, channels, height, width))
        };
        let normed = self.norm.forward(xs)?;
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(&normed)?)?,
            Projection::Linear(linear) => linear.forward(&to_tokens(normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&from_tokens(tokens)?)?,
            Projection::Linear(linear) => from_tokens(linear.forward(&tokens)?)?,
        };
        out + xs
    }
}
