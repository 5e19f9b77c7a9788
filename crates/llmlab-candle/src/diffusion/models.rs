//! The networks of a Stable Diffusion 1.x/2.x diffusers folder, loaded:
//! text encoder and its tokenizer, UNet, VAE and noise schedule.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;

use super::clip_tokenizer::ClipTokenizer;
use super::configs::{self, read_json, NoiseSchedule};
use super::latent_encoder::LatentEncoder;

pub(crate) struct Models {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextTransformer,
    pub unet: UNet2DConditionModel,
    /// 4 for text-to-image models; 9 for inpainting models, which also
    /// read the mask and the masked picture's latents.
    pub unet_in_channels: usize,
    pub vae: AutoEncoderKL,
    /// The VAE's encoder to its latent mean (image-to-image, inpainting).
    pub encoder: LatentEncoder,
    pub latent_channels: usize,
    pub scaling_factor: f64,
    pub downscale: usize,
    pub schedule: NoiseSchedule,
    pub device: Device,
}

/// The files a folder must hold, in the order they are checked (the
/// tokenizer's are checked by `ClipTokenizer::load`: `vocab.json` and
/// `merges.txt`, or a `tokenizer.json`).
const REQUIRED: [&str; 6] = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/model.safetensors",
];

/// Pipelines whose folder layout and networks this loader reads.
const PIPELINES: [&str; 2] = ["StableDiffusionPipeline", "StableDiffusionInpaintPipeline"];

impl Models {
    /// Load a folder; the error names the file at fault (relative to the
    /// folder, never the server's path).
    pub fn load(folder: &Path) -> Result<Self, String> {
        for name in REQUIRED {
            if !folder.join(name).is_file() {
                return Err(format!("the diffusers folder lacks {name}"));
            }
        }
        let index = read_json(&folder.join("model_index.json")).map_err(|e| format!("model_index.json: {e}"))?;
        let pipeline = index.get("_class_name").and_then(|v| v.as_str()).unwrap_or("");
        if !PIPELINES.contains(&pipeline) {
            return Err(format!(
                "model_index.json: {pipeline:?} is not supported yet (supported: {})",
                PIPELINES.join(", ")
            ));
        }
        let config = |name: &str| read_json(&folder.join(name)).map_err(|e| format!("{name}: {e}"));
        let device = Device::Cpu;
        let unet_shape = configs::unet(&config("unet/config.json")?).map_err(|e| format!("unet/config.json: {e}"))?;
        let vae_shape = configs::vae(&config("vae/config.json")?).map_err(|e| format!("vae/config.json: {e}"))?;
        let text_config = configs::text_encoder(&config("text_encoder/config.json")?)
            .map_err(|e| format!("text_encoder/config.json: {e}"))?;
        let schedule = configs::noise_schedule(&config("scheduler/scheduler_config.json")?)
            .map_err(|e| format!("scheduler/scheduler_config.json: {e}"))?;
        let tokenizer = ClipTokenizer::load(&folder.join("tokenizer")).map_err(|e| format!("tokenizer: {e}"))?;
        let weights = |component: &str, file: &str| -> Result<VarBuilder<'static>, String> {
            let path = weights_file(folder, component, file)?;
            let tensors =
                candle_core::safetensors::load(&path, &device).map_err(|e| format!("{component}/{file}: {e}"))?;
            Ok(VarBuilder::from_tensors(tensors, DType::F32, &device))
        };
        // Older transformers save the encoder under `text_model.`, newer
        // ones without it; read either.
        let text_weights = weights("text_encoder", "model")?;
        let text_weights = if text_weights.contains_tensor("text_model.embeddings.token_embedding.weight") {
            text_weights.pp("text_model")
        } else {
            text_weights
        };
        let text_encoder = ClipTextTransformer::new(text_weights, &text_config)
            .map_err(|e| format!("text_encoder/model.safetensors: {e}"))?;
        let latent_channels = vae_shape.config.latent_channels;
        let unet = UNet2DConditionModel::new(
            weights("unet", "diffusion_pytorch_model")?,
            unet_shape.in_channels,
            unet_shape.out_channels,
            false,
            unet_shape.config,
        )
        .map_err(|e| format!("unet/diffusion_pytorch_model.safetensors: {e}"))?;
        let vae_weights = weights("vae", "diffusion_pytorch_model")?;
        let encoder = LatentEncoder::new(&vae_weights, &vae_shape.config)
            .map_err(|e| format!("vae/diffusion_pytorch_model.safetensors: {e}"))?;
        let vae = AutoEncoderKL::new(vae_weights, 3, 3, vae_shape.config)
            .map_err(|e| format!("vae/diffusion_pytorch_model.safetensors: {e}"))?;
        let expected_in = if pipeline == "StableDiffusionInpaintPipeline" {
            2 * latent_channels + 1
        } else {
            latent_channels
        };
        if unet_shape.in_channels != expected_in {
            return Err(format!(
                "unet/config.json: in_channels {} does not fit a {pipeline} (expected {expected_in})",
                unet_shape.in_channels
            ));
        }
        Ok(Self {
            tokenizer,
            text_encoder,
            unet,
            unet_in_channels: unet_shape.in_channels,
            vae,
            encoder,
            latent_channels,
            scaling_factor: vae_shape.scaling_factor,
            downscale: vae_shape.downscale,
            schedule,
            device,
        })
    }
}

/// `component/<file>.safetensors`, or its fp16 variant.
fn weights_file(folder: &Path, component: &str, file: &str) -> Result<PathBuf, String> {
    [format!("{file}.safetensors"), format!("{file}.fp16.safetensors")]
        .iter()
        .map(|name| folder.join(component).join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| format!("the diffusers folder lacks {component}/{file}.safetensors"))
}
