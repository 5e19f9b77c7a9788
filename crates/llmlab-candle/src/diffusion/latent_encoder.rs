//! The VAE's encoder, run to the mean of its latent distribution.
//!
//! candle's `AutoEncoderKL::encode` answers a distribution whose only way
//! out is `sample()`, which draws unseeded noise, so image-to-image would
//! never repeat under a seed. This builds the same encoder (the diffusers
//! layout: `encoder.conv_in`, `encoder.down_blocks.N`, `encoder.mid_block`,
//! `encoder.conv_norm_out`, `encoder.conv_out`, then `quant_conv`) from
//! candle's public blocks over the same weights, and keeps the mean (the
//! first half of the moments), as diffusers does for image-to-image with
//! `sample_mode="argmax"`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;

pub(crate) struct LatentEncoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    latent_channels: usize,
}

/// The VAE's epsilon in every norm of the encoder.
const EPS: f64 = 1e-6;

impl LatentEncoder {
    /// `vae` is the VAE's weights (the folder's `vae/` file).
    pub fn new(vae: &VarBuilder<'_>, config: &AutoEncoderKLConfig) -> Result<Self> {
        let encoder = vae.pp("encoder");
        let channels = &config.block_out_channels;
        let padded = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_in = candle_nn::conv2d(3, channels[0], 3, padded, encoder.pp("conv_in"))?;
        let mut down_blocks = Vec::with_capacity(channels.len());
        for (index, &out) in channels.iter().enumerate() {
            let input = if index == 0 { channels[0] } else { channels[index - 1] };
            let block = DownEncoderBlock2DConfig {
                num_layers: config.layers_per_block,
                resnet_eps: EPS,
                resnet_groups: config.norm_num_groups,
                add_downsample: index + 1 < channels.len(),
                downsample_padding: 0,
                ..Default::default()
            };
            down_blocks.push(DownEncoderBlock2D::new(
                encoder.pp("down_blocks").pp(index.to_string()),
                input,
                out,
                block,
            )?);
        }
        let last = *channels.last().expect("configs::vae refuses an empty list");
        let mid = UNetMidBlock2DConfig {
            resnet_eps: EPS,
            output_scale_factor: 1.0,
            attn_num_head_channels: None,
            resnet_groups: Some(config.norm_num_groups),
            ..Default::default()
        };
        let mid_block = UNetMidBlock2D::new(encoder.pp("mid_block"), last, None, mid)?;
        let norm_out = candle_nn::group_norm(config.norm_num_groups, last, EPS, encoder.pp("conv_norm_out"))?;
        let moments = 2 * config.latent_channels;
        let conv_out = candle_nn::conv2d(last, moments, 3, padded, encoder.pp("conv_out"))?;
        let quant_conv = if config.use_quant_conv {
            Some(candle_nn::conv2d(
                moments,
                moments,
                1,
                Conv2dConfig::default(),
                vae.pp("quant_conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block,
            norm_out,
            conv_out,
            quant_conv,
            latent_channels: config.latent_channels,
        })
    }

    /// The latent mean of pixels in -1..1, shape (B, 3, H, W).
    pub fn mean(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(pixels)?;
        for block in &self.down_blocks {
            xs = block.forward(&xs)?;
        }
        let xs = self.mid_block.forward(&xs, None)?;
        let xs = candle_nn::ops::silu(&self.norm_out.forward(&xs)?)?;
        let mut moments = self.conv_out.forward(&xs)?;
        if let Some(quant_conv) = &self.quant_conv {
            moments = quant_conv.forward(&moments)?;
        }
        moments.narrow(1, 0, self.latent_channels)
    }
}
