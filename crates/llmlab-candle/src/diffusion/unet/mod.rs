//! Our own `UNet2DConditionModel` (the Stable Diffusion 1.x/2.x denoiser),
//! read from a diffusers folder's weights under diffusers' names.
//!
//! candle-transformers has one too; ours exists for speed on the CPU (its
//! convolutions, norms and attention are `diffusion::layers`, about twice as
//! fast for these shapes) and to follow the folder's config where candle's
//! presets do not (any group count). `config.rs` reads `unet/config.json`;
//! `resnet.rs` and `transformer.rs` are the two kinds of layer the levels
//! are made of.

mod config;
mod resnet;
mod transformer;

pub(crate) use config::{AdditionConfig, UnetConfig};
pub(crate) use resnet::{ResnetBlock, ResnetShape};

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::diffusion::layers::{Conv2d, GroupNorm};
use transformer::{SpatialTransformer, TransformerShape};

/// One level on the way down: resnets (each followed by a transformer on
/// cross-attention levels), then a strided convolution except at the
/// bottom.
#[derive(Debug)]
struct DownLevel {
    resnets: Vec<ResnetBlock>,
    transformers: Vec<SpatialTransformer>,
    downsample: Option<Conv2d>,
}

/// One level on the way up: each resnet first takes the matching skip from
/// the way down; then a 2x nearest upsample and a convolution except at the
/// top.
#[derive(Debug)]
struct UpLevel {
    resnets: Vec<ResnetBlock>,
    transformers: Vec<SpatialTransformer>,
    upsample: Option<Conv2d>,
}

#[derive(Debug)]
pub(crate) struct Unet {
    time_width: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    time_linear_1: Linear,
    time_linear_2: Linear,
    /// SDXL's added conditioning: its config and `add_embedding`'s layers.
    addition: Option<(AdditionConfig, Linear, Linear)>,
    conv_in: Conv2d,
    down: Vec<DownLevel>,
    mid_first: ResnetBlock,
    mid_transformers: Vec<SpatialTransformer>,
    mid_rest: Vec<ResnetBlock>,
    up: Vec<UpLevel>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    /// The weights' type: F32 on the CPU, F16 on a GPU. Inputs are cast to
    /// it and the prediction back to F32, so the sampler never sees it.
    dtype: DType,
}

impl Unet {
    pub fn load(vb: VarBuilder, config: &UnetConfig) -> Result<Self> {
        let channels = &config.block_out_channels;
        let levels = channels.len();
        let time_width = channels[0];
        let time_embedding = 4 * time_width;
        let resnet = |c_in, c_out| ResnetShape {
            c_in,
            c_out,
            time_embedding: Some(time_embedding),
            groups: config.norm_num_groups,
            eps: config.norm_eps,
        };
        let transformer = |width, level: usize| TransformerShape {
            width,
            context_width: config.cross_attention_dim,
            heads: config.heads[level],
            layers: config.transformer_layers[level],
            groups: config.norm_num_groups,
            linear_projection: config.use_linear_projection,
        };

        let mut down = Vec::with_capacity(levels);
        let mut c_in = channels[0];
        for (level, &c_out) in channels.iter().enumerate() {
            let vb = vb.pp(format!("down_blocks.{level}"));
            let mut resnets = Vec::new();
            let mut transformers = Vec::new();
            for i in 0..config.layers_per_block {
                let from = if i == 0 { c_in } else { c_out };
                resnets.push(ResnetBlock::load(vb.pp(format!("resnets.{i}")), resnet(from, c_out))?);
                if config.cross_attention[level] {
                    transformers.push(SpatialTransformer::load(
                        vb.pp(format!("attentions.{i}")),
                        transformer(c_out, level),
                    )?);
                }
            }
            let downsample = if level + 1 < levels {
                let padding = config.downsample_padding;
                Some(Conv2d::load(vb.pp("downsamplers.0.conv"), c_out, c_out, 3, 2, padding)?)
            } else {
                None
            };
            down.push(DownLevel {
                resnets,
                transformers,
                downsample,
            });
            c_in = c_out;
        }

        let bottom = channels[levels - 1];
        let mid = vb.pp("mid_block");
        let mid_first = ResnetBlock::load(mid.pp("resnets.0"), resnet(bottom, bottom))?;
        let mid_transformers = vec![SpatialTransformer::load(
            mid.pp("attentions.0"),
            transformer(bottom, levels - 1),
        )?];
        let mid_rest = vec![ResnetBlock::load(mid.pp("resnets.1"), resnet(bottom, bottom))?];

        let mut up = Vec::with_capacity(levels);
        let mut previous = bottom;
        for (i, level) in (0..levels).rev().enumerate() {
            let vb = vb.pp(format!("up_blocks.{i}"));
            let c_out = channels[level];
            // The skips this level takes: its own level's outputs, and last
            // the level below's (or conv_in's) input width.
            let below = channels[level.saturating_sub(1)];
            let mut resnets = Vec::new();
            let mut transformers = Vec::new();
            for j in 0..=config.layers_per_block {
                let skip = if j == config.layers_per_block { below } else { c_out };
                let from = if j == 0 { previous } else { c_out };
                resnets.push(ResnetBlock::load(
                    vb.pp(format!("resnets.{j}")),
                    resnet(from + skip, c_out),
                )?);
                if config.cross_attention[level] {
                    transformers.push(SpatialTransformer::load(
                        vb.pp(format!("attentions.{j}")),
                        transformer(c_out, level),
                    )?);
                }
            }
            let upsample = if level > 0 {
                Some(Conv2d::load(vb.pp("upsamplers.0.conv"), c_out, c_out, 3, 1, 1)?)
            } else {
                None
            };
            up.push(UpLevel {
                resnets,
                transformers,
                upsample,
            });
            previous = c_out;
        }

        let addition = match config.addition {
            Some(addition) => Some((
                addition,
                candle_nn::linear(addition.input_width, time_embedding, vb.pp("add_embedding.linear_1"))?,
                candle_nn::linear(time_embedding, time_embedding, vb.pp("add_embedding.linear_2"))?,
            )),
            None => None,
        };
        Ok(Self {
            dtype: vb.dtype(),
            addition,
            time_width,
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
            time_linear_1: candle_nn::linear(time_width, time_embedding, vb.pp("time_embedding.linear_1"))?,
            time_linear_2: candle_nn::linear(time_embedding, time_embedding, vb.pp("time_embedding.linear_2"))?,
            conv_in: Conv2d::load(vb.pp("conv_in"), config.in_channels, channels[0], 3, 1, 1)?,
            down,
            mid_first,
            mid_transformers,
            mid_rest,
            up,
            norm_out: GroupNorm::load(
                vb.pp("conv_norm_out"),
                config.norm_num_groups,
                channels[0],
                config.norm_eps,
            )?,
            conv_out: Conv2d::load(vb.pp("conv_out"), channels[0], config.out_channels, 3, 1, 1)?,
        })
    }

    /// The predicted noise (or velocity) for `latents` (batch, channels, h,
    /// w) at `timestep`, attending to `context` (batch, tokens, width);
    /// SDXL models also take `added` conditions.
    pub fn forward(
        &self,
        latents: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditions>,
    ) -> Result<Tensor> {
        let batch = latents.dim(0)?;
        let device = latents.device();
        let latents = &latents.to_dtype(self.dtype)?;
        let context = &context.to_dtype(self.dtype)?;
        let sinusoid = self.sinusoid(&[timestep], self.time_width, batch, device)?;
        let mut time = self
            .time_linear_2
            .forward(&candle_nn::ops::silu(&self.time_linear_1.forward(&sinusoid)?)?)?;
        match (&self.addition, added) {
            (Some((addition, linear_1, linear_2)), Some(added)) => {
                let sizes = self.sinusoid(&added.size_ids, addition.time_width, batch, device)?;
                let input = Tensor::cat(&[&added.pooled_text.to_dtype(self.dtype)?, &sizes], 1)?;
                let extra = linear_2.forward(&candle_nn::ops::silu(&linear_1.forward(&input)?)?)?;
                time = (time + extra)?;
            }
            (None, None) => {}
            (Some(_), None) => candle_core::bail!("unet: this SDXL UNet needs the pooled text and size conditions"),
            (None, Some(_)) => candle_core::bail!("unet: this UNet takes no added conditions"),
        }
        // Every resnet takes the embedding through SiLU first: once here.
        let time = candle_nn::ops::silu(&time)?;

        let mut xs = self.conv_in.forward(latents)?;
        let mut skips = vec![xs.clone()];
        for level in &self.down {
            for (i, resnet) in level.resnets.iter().enumerate() {
                xs = resnet.forward(&xs, Some(&time))?;
                if let Some(transformer) = level.transformers.get(i) {
                    xs = transformer.forward(&xs, context)?;
                }
                skips.push(xs.clone());
            }
            if let Some(downsample) = &level.downsample {
                xs = downsample.forward(&xs)?;
                skips.push(xs.clone());
            }
        }

        xs = self.mid_first.forward(&xs, Some(&time))?;
        for (transformer, resnet) in self.mid_transformers.iter().zip(&self.mid_rest) {
            xs = resnet.forward(&transformer.forward(&xs, context)?, Some(&time))?;
        }

        for level in &self.up {
            for (i, resnet) in level.resnets.iter().enumerate() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("unet: skips ran out".into()))?;
                xs = resnet.forward(&Tensor::cat(&[&xs, &skip], 1)?, Some(&time))?;
                if let Some(transformer) = level.transformers.get(i) {
                    xs = transformer.forward(&xs, context)?;
                }
            }
            if let Some(upsample) = &level.upsample {
                // Up to the size of the skip that comes next: twice this
                // one's, or one less where the way down halved an odd size.
                let (_, _, h, w) = skips.last().map_or_else(|| xs.dims4(), Tensor::dims4)?;
                xs = upsample.forward(&xs.upsample_nearest2d(h, w)?)?;
            }
        }
        self.conv_out
            .forward(&self.norm_out.forward_silu(&xs)?)?
            .to_dtype(DType::F32)
    }

    /// diffusers' sinusoidal `Timesteps` of each value, side by side:
    /// `width` features per value, sines then cosines (or the reverse with
    /// `flip_sin_to_cos`), the same row for the whole batch.
    fn sinusoid(&self, values: &[f64], width: usize, batch: usize, device: &Device) -> Result<Tensor> {
        let half = width / 2;
        let mut features = Vec::with_capacity(values.len() * 2 * half);
        for &value in values {
            let angles: Vec<f64> = (0..half)
                .map(|i| value * (-(10000f64.ln()) * i as f64 / (half as f64 - self.freq_shift)).exp())
                .collect();
            let sines = angles.iter().map(|a| a.sin() as f32);
            let cosines = angles.iter().map(|a| a.cos() as f32);
            if self.flip_sin_to_cos {
                features.extend(cosines.chain(sines));
            } else {
                features.extend(sines.chain(cosines));
            }
        }
        let columns = features.len();
        Tensor::from_vec(features, (1, columns), device)?
            .to_dtype(self.dtype)?
            .repeat((batch, 1))
    }
}

/// SDXL's extra conditions for one UNet call.
#[derive(Debug)]
pub(crate) struct AddedConditions {
    /// The second text encoder's pooled, projected embedding (batch, width).
    pub pooled_text: Tensor,
    /// Original height and width, crop top and left, target height and
    /// width, in pixels.
    pub size_ids: [f64; 6],
}

#[cfg(test)]
mod tests {
    use candle_nn::VarMap;
    use candle_transformers::models::stable_diffusion::unet_2d::{
        BlockConfig, UNet2DConditionModel, UNet2DConditionModelConfig,
    };
    use serde_json::json;

    use super::*;
    use crate::diffusion::layers::{as_loaded, assert_close, randomise};

    /// candle's UNet for the same config: the reference ours must match.
    fn candles_config(config: &UnetConfig) -> UNet2DConditionModelConfig {
        UNet2DConditionModelConfig {
            center_input_sample: false,
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
            blocks: (0..config.block_out_channels.len())
                .map(|level| BlockConfig {
                    out_channels: config.block_out_channels[level],
                    use_cross_attn: config.cross_attention[level].then_some(config.transformer_layers[level]),
                    attention_head_dim: config.heads[level],
                })
                .collect(),
            layers_per_block: config.layers_per_block,
            downsample_padding: config.downsample_padding,
            mid_block_scale_factor: 1.0,
            norm_num_groups: config.norm_num_groups,
            norm_eps: config.norm_eps,
            cross_attention_dim: config.cross_attention_dim,
            sliced_attention_size: None,
            use_linear_projection: config.use_linear_projection,
        }
    }

    #[test]
    fn predicts_what_candles_unet_predicts_from_the_same_weights() {
        let device = Device::Cpu;
        for (linear_projection, layers, size) in [(false, 1, 8), (true, 2, 6)] {
            let config = UnetConfig::from_json(&json!({
                "block_out_channels": [32, 64, 64],
                "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                "layers_per_block": layers,
                "attention_head_dim": [2, 4, 4],
                "transformer_layers_per_block": [layers, layers, 1],
                "cross_attention_dim": 24,
                "use_linear_projection": linear_projection,
            }))
            .unwrap();
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
            let theirs = UNet2DConditionModel::new(vb.clone(), 4, 4, false, candles_config(&config)).unwrap();
            // Every weight random before ours packs its copies.
            randomise(&varmap);
            let ours = Unet::load(vb, &config).unwrap();
            let latents = Tensor::randn(0f32, 1.0, (2, 4, size, size), &device).unwrap();
            let context = Tensor::randn(0f32, 1.0, (2, 5, 24), &device).unwrap();
            let expected = theirs.forward(&latents, 321.0, &context).unwrap();
            let got = ours.forward(&latents, 321.0, &context, None).unwrap();
            assert_close(&got, &expected, 1e-4);
        }
    }

    /// The GPU's half-precision UNet, run here on the CPU: F32 in, F32 out,
    /// and close to the F32 network from the same weights.
    #[test]
    fn in_half_precision_it_takes_and_gives_f32_and_stays_close() {
        let device = Device::Cpu;
        let config = UnetConfig::from_json(&json!({
            "block_out_channels": [32, 64],
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "layers_per_block": 1,
            "attention_head_dim": 4,
            "cross_attention_dim": 24,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 16 + 6 * 8,
        }))
        .unwrap();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        // Loading makes the variables; they are made random, then both load.
        Unet::load(vb.clone(), &config).unwrap();
        randomise(&varmap);
        let full = Unet::load(vb, &config).unwrap();
        let half = Unet::load(as_loaded(&varmap, DType::F16), &config).unwrap();
        let latents = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &device).unwrap();
        let context = Tensor::randn(0f32, 1.0, (2, 5, 24), &device).unwrap();
        let added = AddedConditions {
            pooled_text: Tensor::randn(0f32, 1.0, (2, 16), &device).unwrap(),
            size_ids: [64.0, 64.0, 0.0, 0.0, 64.0, 64.0],
        };
        let expected = full.forward(&latents, 321.0, &context, Some(&added)).unwrap();
        let got = half.forward(&latents, 321.0, &context, Some(&added)).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        assert_close(&got, &expected, 2e-2);
    }

    #[test]
    fn an_odd_latent_size_comes_back_at_its_own_size() {
        let config = UnetConfig::from_json(&json!({
            "block_out_channels": [32, 32],
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "layers_per_block": 1,
            "attention_head_dim": 2,
            "cross_attention_dim": 8,
        }))
        .unwrap();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let unet = Unet::load(vb, &config).unwrap();
        let latents = Tensor::zeros((1, 4, 7, 5), DType::F32, &Device::Cpu).unwrap();
        let context = Tensor::zeros((1, 3, 8), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            unet.forward(&latents, 1.0, &context, None).unwrap().dims(),
            [1, 4, 7, 5]
        );
    }
}
