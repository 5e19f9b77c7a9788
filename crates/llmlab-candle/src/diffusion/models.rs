//! The networks of a Stable Diffusion 1.x/2.x or SDXL diffusers folder,
//! loaded: text encoder(s) and tokenizer(s), UNet, VAE and noise schedule.

use candle_core::{DType, Device};
use llmlab_core::registry::ImageArchitecture;
use serde_json::Value;

use super::architecture::Detected;
use super::components::{Folder, TextTower};
use super::configs::{self, NoiseSchedule};
use super::unet::{Unet, UnetConfig};
use super::vae::Vae;

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
    pub vae: Vae,
    pub schedule: NoiseSchedule,
    pub device: Device,
}

/// The files a folder must hold, in the order they are checked (the
/// tokenizer's are checked by `ClipTokenizer::load`: `vocab.json` and
/// `merges.txt`, or a `tokenizer.json`).
const REQUIRED: [&str; 5] = [
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/model.safetensors",
];

/// SDXL folders hold these too.
const REQUIRED_XL: [&str; 2] = ["text_encoder_2/config.json", "text_encoder_2/model.safetensors"];

impl Models {
    /// Load a folder detected as SD 1.x/2.x or SDXL.
    pub fn load(folder: &Folder, detected: &Detected) -> Result<Self, String> {
        folder.require(&REQUIRED)?;
        let xl = detected.architecture == ImageArchitecture::StableDiffusionXl;
        if xl {
            folder.require(&REQUIRED_XL)?;
        }
        let device = folder.device.clone();
        let unet_config =
            UnetConfig::from_json(&folder.config("unet/config.json")?).map_err(|e| format!("unet/config.json: {e}"))?;
        let schedule = configs::noise_schedule(&folder.config("scheduler/scheduler_config.json")?)
            .map_err(|e| format!("scheduler/scheduler_config.json: {e}"))?;
        // The UNet, nearly all of an image's work, and the VAE decoder in
        // half precision on a GPU (tensor cores; as diffusers is run
        // there); the text encoders and the VAE encoder in F32.
        let unet_dtype = if device.is_cpu() { DType::F32 } else { DType::F16 };
        let text = folder.clip_tower("")?;
        let text_2 = if xl { Some(folder.clip_tower("_2")?) } else { None };
        check_conditioning(&unet_config, &text, text_2.as_ref())?;

        let unet = Unet::load(
            folder.weights("unet", "diffusion_pytorch_model")?.set_dtype(unet_dtype),
            &unet_config,
        )
        .map_err(|e| format!("unet/diffusion_pytorch_model.safetensors: {e}"))?;
        // The VAE decoder in half precision too, but SDXL's, whose
        // activations overflow F16 (diffusers' `force_upcast`).
        let vae = folder.vae(if xl { DType::F32 } else { unet_dtype })?;
        let latent_channels = vae.latent_channels;
        // Inpainting UNets also read the mask and the masked picture's
        // latents. Without an index to say which, the UNet's channels do.
        let plain_or_inpainting = [latent_channels, 2 * latent_channels + 1];
        let expected_in = match detected.inpainting() {
            None => plain_or_inpainting.into_iter().find(|&n| n == unet_config.in_channels),
            Some(inpainting) => Some(plain_or_inpainting[usize::from(inpainting)]),
        };
        if expected_in != Some(unet_config.in_channels) {
            let expected = expected_in.map_or_else(
                || format!("{} or {}", plain_or_inpainting[0], plain_or_inpainting[1]),
                |n| n.to_string(),
            );
            let model = if detected.pipeline.is_empty() {
                "this model"
            } else {
                &detected.pipeline
            };
            return Err(format!(
                "unet/config.json: in_channels {} does not fit {model} (expected {expected})",
                unet_config.in_channels
            ));
        }
        Ok(Self {
            text,
            text_2,
            zeros_for_empty_negative: xl
                && detected
                    .index
                    .get("force_zeros_for_empty_prompt")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            unet,
            unet_in_channels: unet_config.in_channels,
            vae,
            schedule,
            device,
        })
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
