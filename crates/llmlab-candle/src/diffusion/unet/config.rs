//! `unet/config.json` read into what our UNet is built from; what it does
//! not build is refused with the key at fault.

use serde_json::Value;

use crate::diffusion::configs::{ConfigResult, Fields};

#[derive(Debug, Clone)]
pub(crate) struct UnetConfig {
    /// 4 for text-to-image models; 9 for inpainting models (latents, mask
    /// and the masked picture's latents).
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    /// Per level: whether it has transformers (CrossAttnDownBlock2D).
    pub cross_attention: Vec<bool>,
    /// Attention heads per level.
    pub heads: Vec<usize>,
    /// Transformer blocks per spatial transformer, per level.
    pub transformer_layers: Vec<usize>,
    pub layers_per_block: usize,
    pub downsample_padding: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    /// SDXL's extra conditioning (`addition_embed_type: text_time`).
    pub addition: Option<AdditionConfig>,
}

/// SDXL's pooled text embedding and six size numbers, embedded and added
/// to the step's time embedding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdditionConfig {
    /// Sinusoid features per size number (`addition_time_embed_dim`).
    pub time_width: usize,
    /// Pooled text width + 6 x `time_width`
    /// (`projection_class_embeddings_input_dim`).
    pub input_width: usize,
}

impl AdditionConfig {
    /// The pooled text embedding's width this UNet expects.
    pub fn text_width(&self) -> usize {
        self.input_width - 6 * self.time_width
    }
}

impl UnetConfig {
    pub fn from_json(json: &Value) -> ConfigResult<Self> {
        let c = Fields(json);
        let channels = c.list("block_out_channels", |v| v.as_u64().map(|n| n as usize))?;
        let levels = channels.len();
        if levels == 0 || channels.contains(&0) {
            return Err("block_out_channels is empty or holds a zero".into());
        }
        let down = c.list("down_block_types", |v| v.as_str().map(str::to_owned))?;
        let up = c.list("up_block_types", |v| v.as_str().map(str::to_owned))?;
        if down.len() != levels || up.len() != levels {
            return Err(format!(
                "{levels} block_out_channels but {} down and {} up block types",
                down.len(),
                up.len()
            ));
        }
        let mut cross_attention = Vec::with_capacity(levels);
        for (level, kind) in down.iter().enumerate() {
            let cross = match kind.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => return Err(format!("down block type {other} is not supported")),
            };
            // The way up mirrors the way down, level by level.
            let mirror = if cross { "CrossAttnUpBlock2D" } else { "UpBlock2D" };
            if up[levels - 1 - level] != mirror {
                return Err(format!(
                    "up_block_types[{}] must be {mirror} to mirror the down path",
                    levels - 1 - level
                ));
            }
            cross_attention.push(cross);
        }
        // diffusers' `attention_head_dim` is, despite its name, the number
        // of heads (newer configs say `num_attention_heads`).
        let heads_key = if c.get("num_attention_heads").is_some() {
            "num_attention_heads"
        } else {
            "attention_head_dim"
        };
        let heads = c.per_block(heads_key, levels, 8)?;
        for (level, (&h, &width)) in heads.iter().zip(&channels).enumerate() {
            if h == 0 || width % h != 0 {
                return Err(format!(
                    "{heads_key} {h} does not divide level {level}'s {width} channels"
                ));
            }
        }
        for (key, only) in [
            ("mid_block_type", "UNetMidBlock2DCrossAttn"),
            ("act_fn", "silu"),
            ("resnet_time_scale_shift", "default"),
            ("time_embedding_type", "positional"),
        ] {
            let value = c.str(key, only)?;
            if value != only {
                return Err(format!("{key} {value} is not supported (only {only})"));
            }
        }
        for key in ["class_embed_type", "encoder_hid_dim", "time_cond_proj_dim"] {
            if c.get(key).is_some() {
                return Err(format!("{key} is set: this conditioning is not supported"));
            }
        }
        let addition = match c.get("addition_embed_type") {
            None => None,
            Some(_) => match c.str("addition_embed_type", "")? {
                "text_time" => Some(AdditionConfig {
                    time_width: c.usize("addition_time_embed_dim", None)?,
                    input_width: c.usize("projection_class_embeddings_input_dim", None)?,
                }),
                other => return Err(format!("addition_embed_type {other} is not supported (only text_time)")),
            },
        };
        if let Some(addition) = &addition {
            if addition.time_width == 0 || addition.time_width % 2 != 0 {
                return Err("addition_time_embed_dim must be even and at least 2".into());
            }
            if addition.input_width <= 6 * addition.time_width {
                return Err(format!(
                    "projection_class_embeddings_input_dim {} leaves no room for the pooled text beside 6 x {} time features",
                    addition.input_width, addition.time_width
                ));
            }
        }
        for key in ["center_input_sample", "dual_cross_attention", "only_cross_attention"] {
            if c.bool(key, false)? {
                return Err(format!("{key} is not supported"));
            }
        }
        if c.f64("mid_block_scale_factor", 1.0)? != 1.0 {
            return Err("mid_block_scale_factor other than 1 is not supported".into());
        }
        let groups = c.usize("norm_num_groups", Some(32))?;
        if groups == 0 || channels.iter().any(|width| width % groups != 0) {
            return Err(format!("norm_num_groups {groups} does not divide the block channels"));
        }
        Ok(Self {
            in_channels: c.usize("in_channels", Some(4))?,
            out_channels: c.usize("out_channels", Some(4))?,
            transformer_layers: c.per_block("transformer_layers_per_block", levels, 1)?,
            block_out_channels: channels,
            cross_attention,
            heads,
            layers_per_block: c.usize("layers_per_block", Some(2))?.max(1),
            downsample_padding: c.usize("downsample_padding", Some(1))?,
            norm_num_groups: groups,
            norm_eps: c.f64("norm_eps", 1e-5)?,
            cross_attention_dim: c.usize("cross_attention_dim", Some(1280))?,
            use_linear_projection: c.bool("use_linear_projection", false)?,
            flip_sin_to_cos: c.bool("flip_sin_to_cos", true)?,
            freq_shift: c.f64("freq_shift", 0.0)?,
            addition,
        })
    }
}
