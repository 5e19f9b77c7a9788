//! A diffusers folder's JSON configs read into candle's model configs
//! (the UNet's and the text encoder's, for our own networks, are in
//! `unet/config.rs` and `text_encoder.rs`).
//! candle builds its Stable Diffusion models from Rust presets; reading the
//! folder's own configs instead lets any SD-1.x/2.x-shaped model load,
//! including the tiny random ones the tests make. What candle cannot build
//! is refused with the key at fault.

use std::path::Path;

use candle_transformers::models::stable_diffusion::ddim::DDIMSchedulerConfig;
use candle_transformers::models::stable_diffusion::euler_ancestral_discrete::EulerAncestralDiscreteSchedulerConfig;
use candle_transformers::models::stable_diffusion::schedulers::{BetaSchedule, PredictionType, TimestepSpacing};
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
pub(crate) struct Fields<'a>(pub &'a Value);

impl Fields<'_> {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub fn usize(&self, key: &str, default: Option<usize>) -> ConfigResult<usize> {
        match self.get(key) {
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| format!("{key} is not a whole number")),
            None => default.ok_or_else(|| format!("{key} is missing")),
        }
    }

    pub fn f64(&self, key: &str, default: f64) -> ConfigResult<f64> {
        self.get(key).map_or(Ok(default), |v| {
            v.as_f64().ok_or_else(|| format!("{key} is not a number"))
        })
    }

    pub fn bool(&self, key: &str, default: bool) -> ConfigResult<bool> {
        self.get(key).map_or(Ok(default), |v| {
            v.as_bool().ok_or_else(|| format!("{key} is not true or false"))
        })
    }

    pub fn str<'b>(&'b self, key: &str, default: &'b str) -> ConfigResult<&'b str> {
        self.get(key).map_or(Ok(default), |v| {
            v.as_str().ok_or_else(|| format!("{key} is not a string"))
        })
    }

    pub fn list<T>(&self, key: &str, item: impl Fn(&Value) -> Option<T>) -> ConfigResult<Vec<T>> {
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
    pub fn per_block(&self, key: &str, blocks: usize, default: usize) -> ConfigResult<Vec<usize>> {
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

/// The VAE's config, latent scaling and how many pixels one latent covers.
pub(crate) struct VaeShape {
    pub config: AutoEncoderKLConfig,
    pub scaling_factor: f64,
    /// Subtracted before scaling (SD3, Flux); 0 for older models.
    pub shift_factor: f64,
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
        shift_factor: c.f64("shift_factor", 0.0)?,
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
