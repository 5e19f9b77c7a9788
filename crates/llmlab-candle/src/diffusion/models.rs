//! The networks of a Stable Diffusion 1.x/2.x or SDXL diffusers folder,
//! loaded: text encoder(s) and tokenizer(s), UNet, VAE and noise schedule.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use llmlab_core::registry::ImageArchitecture;
use serde_json::Value;

use super::clip_tokenizer::ClipTokenizer;
use super::configs::{self, read_json, NoiseSchedule};
use super::latent_encoder::LatentEncoder;
use super::text_encoder::{TextEncoder, TextEncoderConfig};
use super::unet::{Unet, UnetConfig};
use super::vae_decoder::VaeDecoder;

/// A tokenizer and the text encoder it feeds.
pub(crate) struct TextTower {
    pub tokenizer: ClipTokenizer,
    pub encoder: TextEncoder,
    pub width: usize,
    /// Width of the pooled (projected) embedding.
    pub pooled_width: usize,
}

pub(crate) struct Models {
    pub text: TextTower,
    /// SDXL's second encoder (OpenCLIP): its second-to-last states sit
    /// beside the first's, and its pooled embedding conditions the UNet.
    pub text_2: Option<TextTower>,
    /// SDXL: an empty negative prompt conditions with zeros, not with the
    /// encoded empty text (`force_zeros_for_empty_prompt`).
    pub zeros_for_empty_negative: bool,
    pub unet: Unet,
    /// 4 for text-to-image models; 9 for inpainting models, which also
    /// read the mask and the masked picture's latents.
    pub unet_in_channels: usize,
    pub vae: VaeDecoder,
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
/// `merges.txt`, or a `tokenizer.json`); `model_index.json`, first, only
/// where the registry names no architecture.
const REQUIRED: [&str; 6] = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/model.safetensors",
];

/// SDXL folders hold these too.
const REQUIRED_XL: [&str; 2] = ["text_encoder_2/config.json", "text_encoder_2/model.safetensors"];

/// Pipelines whose folder layout and networks this loader reads, and
/// whether each is SDXL.
const PIPELINES: [(&str, bool); 5] = [
    ("StableDiffusionPipeline", false),
    ("StableDiffusionInpaintPipeline", false),
    ("StableDiffusionXLPipeline", true),
    ("StableDiffusionXLImg2ImgPipeline", true),
    ("StableDiffusionXLInpaintPipeline", true),
];

impl Models {
    /// Load a folder, read as `architecture` where the registry names one,
    /// else as its `model_index.json` says; the error names the file at
    /// fault (relative to the folder, never the server's path).
    pub fn load(folder: &Path, architecture: Option<ImageArchitecture>) -> Result<Self, String> {
        let required = if architecture.is_some() {
            &REQUIRED[1..]
        } else {
            &REQUIRED[..]
        };
        require(folder, required)?;
        let index = match architecture {
            Some(_) => read_json(&folder.join("model_index.json")).unwrap_or(Value::Null),
            None => read_json(&folder.join("model_index.json")).map_err(|e| format!("model_index.json: {e}"))?,
        };
        let pipeline = index.get("_class_name").and_then(Value::as_str).unwrap_or("");
        let xl = match architecture {
            Some(architecture) => architecture == ImageArchitecture::StableDiffusionXl,
            None => match PIPELINES.iter().find(|(name, _)| *name == pipeline) {
                Some(&(_, xl)) => xl,
                None => {
                    let names: Vec<&str> = PIPELINES.iter().map(|(name, _)| *name).collect();
                    return Err(format!(
                        "model_index.json: {pipeline:?} is not supported yet (supported: {}; \
                         or name the registry's architecture)",
                        names.join(", ")
                    ));
                }
            },
        };
        if xl {
            require(folder, &REQUIRED_XL)?;
        }
        let config = |name: &str| read_json(&folder.join(name)).map_err(|e| format!("{name}: {e}"));
        let device = crate::device::compute_device();
        let unet_config =
            UnetConfig::from_json(&config("unet/config.json")?).map_err(|e| format!("unet/config.json: {e}"))?;
        let vae_shape = configs::vae(&config("vae/config.json")?).map_err(|e| format!("vae/config.json: {e}"))?;
        let schedule = configs::noise_schedule(&config("scheduler/scheduler_config.json")?)
            .map_err(|e| format!("scheduler/scheduler_config.json: {e}"))?;
        // The UNet, nearly all of an image's work, and the VAE decoder in
        // half precision on a GPU (tensor cores; as diffusers is run
        // there); the text encoders and the VAE encoder in F32.
        let unet_dtype = if device.is_cpu() { DType::F32 } else { DType::F16 };
        let weights = |component: &str, file: &str| -> Result<VarBuilder<'static>, String> {
            let path = weights_file(folder, component, file)?;
            let tensors =
                candle_core::safetensors::load(&path, &device).map_err(|e| format!("{component}/{file}: {e}"))?;
            Ok(VarBuilder::from_tensors(tensors, DType::F32, &device))
        };
        let tower = |suffix: &str| -> Result<TextTower, String> {
            let component = format!("text_encoder{suffix}");
            let encoder_config = TextEncoderConfig::from_json(&config(&format!("{component}/config.json"))?)
                .map_err(|e| format!("{component}/config.json: {e}"))?;
            let tokenizer = ClipTokenizer::load(&folder.join(format!("tokenizer{suffix}")))
                .map_err(|e| format!("tokenizer{suffix}: {e}"))?;
            let encoder = TextEncoder::load(weights(&component, "model")?, &encoder_config)
                .map_err(|e| format!("{component}/model.safetensors: {e}"))?;
            Ok(TextTower {
                tokenizer,
                width: encoder_config.width(),
                pooled_width: encoder.pooled_width(),
                encoder,
            })
        };
        let text = tower("")?;
        let text_2 = if xl { Some(tower("_2")?) } else { None };
        check_conditioning(&unet_config, &text, text_2.as_ref())?;

        let unet = Unet::load(weights("unet", "diffusion_pytorch_model")?.set_dtype(unet_dtype), &unet_config)
            .map_err(|e| format!("unet/diffusion_pytorch_model.safetensors: {e}"))?;
        let vae_weights = weights("vae", "diffusion_pytorch_model")?;
        let encoder = LatentEncoder::new(&vae_weights, &vae_shape.config)
            .map_err(|e| format!("vae/diffusion_pytorch_model.safetensors: {e}"))?;
        // The VAE decoder in half precision too, but SDXL's, whose
        // activations overflow F16 (diffusers' `force_upcast`).
        let vae_dtype = if xl { DType::F32 } else { unet_dtype };
        let vae = VaeDecoder::load(&vae_weights.clone().set_dtype(vae_dtype), &vae_shape)
            .map_err(|e| format!("vae/diffusion_pytorch_model.safetensors: {e}"))?;
        let latent_channels = vae_shape.config.latent_channels;
        // Inpainting UNets also read the mask and the masked picture's
        // latents. The registry's architecture leaves it to the UNet; a
        // model_index.json says which it is.
        let plain_or_inpainting = [latent_channels, 2 * latent_channels + 1];
        let expected_in = match architecture {
            Some(_) => plain_or_inpainting.into_iter().find(|&n| n == unet_config.in_channels),
            None => Some(plain_or_inpainting[usize::from(pipeline.contains("Inpaint"))]),
        };
        if expected_in != Some(unet_config.in_channels) {
            let expected = expected_in.map_or_else(
                || format!("{} or {}", plain_or_inpainting[0], plain_or_inpainting[1]),
                |n| n.to_string(),
            );
            let model = if pipeline.is_empty() { "this model" } else { pipeline };
            return Err(format!(
                "unet/config.json: in_channels {} does not fit {model} (expected {expected})",
                unet_config.in_channels
            ));
        }
        Ok(Self {
            text,
            text_2,
            zeros_for_empty_negative: xl
                && index
                    .get("force_zeros_for_empty_prompt")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            unet,
            unet_in_channels: unet_config.in_channels,
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

fn require(folder: &Path, names: &[&str]) -> Result<(), String> {
    match names.iter().find(|name| !folder.join(name).is_file()) {
        Some(name) => Err(format!("the diffusers folder lacks {name}")),
        None => Ok(()),
    }
}

/// The text encoders' widths must be what the UNet reads: a mismatch would
/// only show as a shape error in the first generation.
fn check_conditioning(unet: &UnetConfig, text: &TextTower, text_2: Option<&TextTower>) -> Result<(), String> {
    let context = text.width + text_2.map_or(0, |t| t.width);
    if unet.cross_attention_dim != context {
        return Err(format!(
            "unet/config.json: cross_attention_dim {} but the text encoders give {context}",
            unet.cross_attention_dim
        ));
    }
    match (&unet.addition, text_2) {
        (Some(addition), Some(text_2)) if addition.text_width() != text_2.pooled_width => Err(format!(
            "unet/config.json: projection_class_embeddings_input_dim {} expects a pooled text of {}, text_encoder_2 gives {}",
            addition.input_width,
            addition.text_width(),
            text_2.pooled_width
        )),
        (Some(_), Some(_)) | (None, None) => Ok(()),
        (Some(_), None) => Err("unet/config.json: addition_embed_type needs an SDXL pipeline (text_encoder_2)".into()),
        (None, Some(_)) => Err("unet/config.json: an SDXL pipeline needs addition_embed_type text_time".into()),
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
