//! A diffusers folder's JSON configs read into candle's model configs.
//! candle builds its Stable Diffusion models from Rust presets; reading the
//! folder's own configs instead lets any SD-1.x/2.x-shaped model load,
//! including the tiny random ones the tests make. What candle cannot build
//! is refused with the key at fault.

use std::path::Path;

use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use candle_transformers::models::stable_diffusion::ddim::DDIMSchedulerConfig;
use candle_transformers::models::stable_diffusion::euler_ancestral_discrete::EulerAncestralDiscreteSchedulerConfig;
use candle_transformers::models::stable_diffusion::schedulers::{BetaSchedule, PredictionType, TimestepSpacing};
use candle_transformers::models::stable_diffusion::unet_2d::{BlockConfig, UNet2DConditionModelConfig};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;
use serde_json::Value;

/// A config problem, said as "file: what".
pub(crate) type ConfigResult<T> = std::result::Result<T, String>;

pub(crate) fn read_json(path: &Path) -> ConfigResult<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {}", e.kind()))?;
    serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))
}

/// Typed reads of one JSON object; a wrong type is an error, a missing key
/// the default when there is one.
struct Fields<'a>(&'a Value);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str, default: Option<usize>) -> ConfigResult<usize> {
        match self.get(key) {
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| format!("{key} is not a whole number")),
            None => default.ok_or_else(|| format!("{key} is missing")),
        }
    }

    fn f64(&self, key: &str, default: f64) -> ConfigResult<f64> {
        self.get(key).map_or(Ok(default), |v| {
            v.as_f64().ok_or_else(|| format!("{key} is not a number"))
        })
    }

    fn bool(&self, key: &str, default: bool) -> ConfigResult<bool> {
        self.get(key).map_or(Ok(default), |v| {
            v.as_bool().ok_or_else(|| format!("{key} is not true or false"))
        })
    }

    fn str<'b>(&'b self, key: &str, default: &'b str) -> ConfigResult<&'b str> {
        self.get(key).map_or(Ok(default), |v| {
            v.as_str().ok_or_else(|| format!("{key} is not a string"))
        })
    }

    fn list<T>(&self, key: &str, item: impl Fn(&Value) -> Option<T>) -> ConfigResult<Vec<T>> {
        let items = self
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{key} is missing or not a list"))?;
        items
            .iter()
            .map(|v| item(v).ok_or_else(|| format!("{key} has an item of the wrong type")))
            .collect()
    }

    /// One number for every block, or a list with one per block.
    fn per_block(&self, key: &str, blocks: usize, default: usize) -> ConfigResult<Vec<usize>> {
        match self.get(key) {
            None => Ok(vec![default; blocks]),
            Some(Value::Array(_)) => {
                let values = self.list(key, |v| v.as_u64().map(|n| n as usize))?;
                if values.len() == blocks {
                    Ok(values)
                } else {
                    Err(format!("{key} has {} values for {blocks} blocks", values.len()))
                }
            }
            Some(_) => Ok(vec![self.usize(key, None)?; blocks]),
        }
    }
}

/// The UNet's config, and its input channels (4, or 9 for inpainting
/// models) and output channels.
pub(crate) struct UnetShape {
    pub config: UNet2DConditionModelConfig,
    pub in_channels: usize,
    pub out_channels: usize,
}

pub(crate) fn unet(json: &Value) -> ConfigResult<UnetShape> {
    let c = Fields(json);
    let channels = c.list("block_out_channels", |v| v.as_u64().map(|n| n as usize))?;
    let blocks = channels.len();
    if blocks == 0 {
        return Err("block_out_channels is empty".into());
    }
    let down = c.list("down_block_types", |v| v.as_str().map(str::to_owned))?;
    let up = c.list("up_block_types", |v| v.as_str().map(str::to_owned))?;
    if down.len() != blocks || up.len() != blocks {
        return Err(format!(
            "{blocks} block_out_channels but {} down and {} up block types",
            down.len(),
            up.len()
        ));
    }
    // diffusers' `attention_head_dim` is, despite its name, the number of
    // heads (newer configs say `num_attention_heads`); candle's
    // `BlockConfig::attention_head_dim` means the same.
    let heads_key = if c.get("num_attention_heads").is_some() {
        "num_attention_heads"
    } else {
        "attention_head_dim"
    };
    let heads = c.per_block(heads_key, blocks, 8)?;
    if heads.contains(&0) {
        return Err(format!("{heads_key} must be at least 1"));
    }
    let layers = c.per_block("transformer_layers_per_block", blocks, 1)?;
    let mut configs = Vec::with_capacity(blocks);
    for (i, kind) in down.iter().enumerate() {
        let cross = match kind.as_str() {
            "CrossAttnDownBlock2D" => true,
            "DownBlock2D" => false,
            other => return Err(format!("down block type {other} is not supported")),
        };
        // candle mirrors the down path on the way up.
        let mirror = if cross { "CrossAttnUpBlock2D" } else { "UpBlock2D" };
        if up[blocks - 1 - i] != mirror {
            return Err(format!(
                "up_block_types[{}] must be {mirror} to mirror the down path",
                blocks - 1 - i
            ));
        }
        configs.push(BlockConfig {
            out_channels: channels[i],
            use_cross_attn: cross.then_some(layers[i]),
            attention_head_dim: heads[i],
        });
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
    for key in [
        "class_embed_type",
        "addition_embed_type",
        "encoder_hid_dim",
        "time_cond_proj_dim",
    ] {
        if c.get(key).is_some() {
            return Err(format!("{key} is set: SDXL-style conditioning is not supported yet"));
        }
    }
    let groups = c.usize("norm_num_groups", Some(32))?;
    if groups != 32 {
        // candle's plain down and up blocks always use 32 groups: another
        // count would load and compute the wrong thing.
        return Err(format!("norm_num_groups {groups} is not supported (candle builds 32)"));
    }
    Ok(UnetShape {
        config: UNet2DConditionModelConfig {
            center_input_sample: c.bool("center_input_sample", false)?,
            flip_sin_to_cos: c.bool("flip_sin_to_cos", true)?,
            freq_shift: c.f64("freq_shift", 0.0)?,
            blocks: configs,
            layers_per_block: c.usize("layers_per_block", Some(2))?,
            downsample_padding: c.usize("downsample_padding", Some(1))?,
            mid_block_scale_factor: c.f64("mid_block_scale_factor", 1.0)?,
            norm_num_groups: groups,
            norm_eps: c.f64("norm_eps", 1e-5)?,
            cross_attention_dim: c.usize("cross_attention_dim", Some(1280))?,
            sliced_attention_size: None,
            use_linear_projection: c.bool("use_linear_projection", false)?,
        },
        in_channels: c.usize("in_channels", Some(4))?,
        out_channels: c.usize("out_channels", Some(4))?,
    })
}

/// The VAE's config, latent scaling and how many pixels one latent covers.
pub(crate) struct VaeShape {
    pub config: AutoEncoderKLConfig,
    pub scaling_factor: f64,
    /// Pixels per latent along each side (8 for every SD model).
    pub downscale: usize,
}

pub(crate) fn vae(json: &Value) -> ConfigResult<VaeShape> {
    let c = Fields(json);
    let channels = c.list("block_out_channels", |v| v.as_u64().map(|n| n as usize))?;
    if channels.is_empty() {
        return Err("block_out_channels is empty".into());
    }
    for (key, only) in [
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ] {
        let kinds = c.list(key, |v| v.as_str().map(str::to_owned))?;
        if kinds.len() != channels.len() || kinds.iter().any(|k| k != only) {
            return Err(format!("{key} must be {} x {only}", channels.len()));
        }
    }
    if c.usize("in_channels", Some(3))? != 3 || c.usize("out_channels", Some(3))? != 3 {
        return Err("only RGB VAEs (3 channels in and out) are supported".into());
    }
    let groups = c.usize("norm_num_groups", Some(32))?;
    if groups == 0 || channels.iter().any(|ch| ch % groups != 0) {
        return Err(format!("norm_num_groups {groups} does not divide the block channels"));
    }
    Ok(VaeShape {
        downscale: 1 << (channels.len() - 1),
        config: AutoEncoderKLConfig {
            block_out_channels: channels,
            layers_per_block: c.usize("layers_per_block", Some(1))?,
            latent_channels: c.usize("latent_channels", Some(4))?,
            norm_num_groups: groups,
            use_quant_conv: c.bool("use_quant_conv", true)?,
            use_post_quant_conv: c.bool("use_post_quant_conv", true)?,
        },
        scaling_factor: c.f64("scaling_factor", 0.18215)?,
    })
}

pub(crate) fn text_encoder(json: &Value) -> ConfigResult<ClipTextConfig> {
    let c = Fields(json);
    let activation = c.str("hidden_act", "quick_gelu")?;
    if activation != "quick_gelu" {
        // SD 2.x's OpenCLIP encoder (gelu) is not supported yet.
        return Err(format!(
            "hidden_act {activation} is not supported (only quick_gelu, as SD 1.x)"
        ));
    }
    let hidden = c.usize("hidden_size", None)?;
    Ok(ClipTextConfig {
        vocab_size: c.usize("vocab_size", None)?,
        embed_dim: hidden,
        activation: Activation::QuickGelu,
        intermediate_size: c.usize("intermediate_size", None)?,
        max_position_embeddings: c.usize("max_position_embeddings", Some(77))?,
        pad_with: None,
        num_hidden_layers: c.usize("num_hidden_layers", None)?,
        num_attention_heads: c.usize("num_attention_heads", None)?,
        projection_dim: c.usize("projection_dim", Some(hidden))?,
    })
}

/// The noise schedule the model was trained with (every candle scheduler
/// is built from it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoiseSchedule {
    beta_start: f64,
    beta_end: f64,
    beta_schedule: BetaSchedule,
    steps_offset: usize,
    prediction_type: PredictionType,
    pub train_timesteps: usize,
    timestep_spacing: TimestepSpacing,
}

pub(crate) fn noise_schedule(json: &Value) -> ConfigResult<NoiseSchedule> {
    let c = Fields(json);
    if c.get("trained_betas").is_some() {
        return Err("trained_betas is not supported".into());
    }
    Ok(NoiseSchedule {
        beta_start: c.f64("beta_start", 0.0001)?,
        beta_end: c.f64("beta_end", 0.02)?,
        beta_schedule: match c.str("beta_schedule", "linear")? {
            "scaled_linear" => BetaSchedule::ScaledLinear,
            "linear" => BetaSchedule::Linear,
            "squaredcos_cap_v2" => BetaSchedule::SquaredcosCapV2,
            other => return Err(format!("beta_schedule {other} is not supported")),
        },
        steps_offset: c.usize("steps_offset", Some(0))?,
        prediction_type: match c.str("prediction_type", "epsilon")? {
            "epsilon" => PredictionType::Epsilon,
            "v_prediction" => PredictionType::VPrediction,
            other => return Err(format!("prediction_type {other} is not supported")),
        },
        train_timesteps: c.usize("num_train_timesteps", Some(1000))?.max(1),
        timestep_spacing: match c.str("timestep_spacing", "leading")? {
            "leading" => TimestepSpacing::Leading,
            "linspace" => TimestepSpacing::Linspace,
            "trailing" => TimestepSpacing::Trailing,
            other => return Err(format!("timestep_spacing {other} is not supported")),
        },
    })
}

impl NoiseSchedule {
    pub fn ddim(&self) -> DDIMSchedulerConfig {
        DDIMSchedulerConfig {
            beta_start: self.beta_start,
            beta_end: self.beta_end,
            beta_schedule: self.beta_schedule,
            // Deterministic: the same seed gives the same image.
            eta: 0.0,
            steps_offset: self.steps_offset,
            prediction_type: self.prediction_type,
            train_timesteps: self.train_timesteps,
            timestep_spacing: self.timestep_spacing,
        }
    }

    pub fn euler_ancestral(&self) -> EulerAncestralDiscreteSchedulerConfig {
        EulerAncestralDiscreteSchedulerConfig {
            beta_start: self.beta_start,
            beta_end: self.beta_end,
            beta_schedule: self.beta_schedule,
            steps_offset: self.steps_offset,
            prediction_type: self.prediction_type,
            train_timesteps: self.train_timesteps,
            timestep_spacing: self.timestep_spacing,
        }
    }
}
