//! Rectified-flow pipelines: SD3/3.5 (candle's MMDiT on two CLIP encoders
//! and T5) and Flux.1 (candle's Flux on CLIP's pooled text and T5), from a
//! diffusers folder. The transformers' weights are renamed for candle
//! (`rename.rs`); the CLIP towers and the VAE are the ones the UNet
//! family uses; `sampler.rs` runs a generation, `schedule.rs` spaces its
//! steps; `quantized.rs` reads a Flux transformer from a GGUF file. These
//! models inpaint by blending the picture's latents back outside the mask;
//! their inpainting variants (more input channels, such as Flux Fill) are
//! refused by the config checks.

mod quantized;
mod rename;
mod sampler;
mod schedule;
mod t5;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::model::{Config as FluxConfig, Flux};
use candle_transformers::models::flux::WithForward;
use candle_transformers::models::mmdit::model::{Config as MmditConfig, MMDiT};
use serde_json::Value;

use llmlab_core::registry::ImageArchitecture;
use llmlab_core::{ImageDefaults, Scheduler};

use super::architecture::Detected;
use super::components::{Folder, TextTower};
use super::configs::Fields;
use super::vae::Vae;
use schedule::FlowSchedule;
use t5::T5Tower;

pub(crate) use sampler::generate;

/// Tokens of T5 text each family reads (diffusers' defaults).
const SD3_T5_TOKENS: usize = 256;
const FLUX_T5_TOKENS: usize = 512;

/// The denoising network and what it reads beside the latents.
// One per loaded model, never copied: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Transformer {
    /// SD3: guided by running the negative prompt beside the prompt.
    Mmdit(MovableMmdit),
    /// Flux: `guided` models (dev) take the guidance scale as an input
    /// instead; schnell takes none. Full-precision or GGUF-quantized.
    Flux {
        model: Box<dyn WithForward + Send>,
        guided: bool,
    },
}

/// The text side of a flow model.
#[allow(clippy::large_enum_variant)] // one per loaded model, as above
enum TextEncoders {
    /// SD3: CLIP-L and CLIP-G (second-to-last states side by side, pooled
    /// embeddings joined), T5 after them (zeros where the folder has none).
    Sd3 {
        clip_l: TextTower,
        clip_g: TextTower,
        t5: Option<T5Tower>,
    },
    /// Flux: CLIP-L's pooled state and T5's states.
    Flux { clip: TextTower, t5: T5Tower },
}

pub(crate) struct FlowModels {
    text: TextEncoders,
    transformer: Transformer,
    /// What the transformer computes in (candle's MMDiT: F16 only).
    dtype: DType,
    /// Width of the text states the transformer reads.
    context_width: usize,
    vae: Vae,
    schedule: FlowSchedule,
    defaults: ImageDefaults,
    device: Device,
}

impl FlowModels {
    pub fn load(folder: &Folder, detected: &Detected) -> Result<Self, String> {
        folder.require(&[
            "scheduler/scheduler_config.json",
            "transformer/config.json",
            "vae/config.json",
            "text_encoder/config.json",
        ])?;
        let device = folder.device.clone();
        let schedule = FlowSchedule::from_json(&folder.config("scheduler/scheduler_config.json")?)
            .map_err(|e| format!("scheduler/scheduler_config.json: {e}"))?;
        let config = folder.config("transformer/config.json")?;
        let vae = folder.vae(DType::F32)?;
        // T5 in F32 on the CPU; on a GPU in BF16 (F16 overflows in T5).
        let t5_dtype = if device.is_cpu() { DType::F32 } else { DType::BF16 };
        let read = |e: String| format!("transformer/config.json: {e}");
        let (text, transformer, dtype, context_width, defaults) = match detected.architecture {
            ImageArchitecture::StableDiffusion3 => {
                let shape = mmdit_config(&config, vae.latent_channels).map_err(read)?;
                let clip_l = folder.clip_tower("")?;
                let clip_g = folder.clip_tower("_2")?;
                let t5 = if folder.has("text_encoder_3/config.json") {
                    Some(T5Tower::load(folder, "_3", SD3_T5_TOKENS, t5_dtype)?)
                } else {
                    None
                };
                check_sd3_text(&shape, &clip_l, &clip_g, t5.as_ref())?;
                let weights = folder.tensors("transformer", "diffusion_pytorch_model")?;
                let weights = rename::sd3_for_candle(weights, shape.depth)
                    .map_err(|e| format!("transformer/diffusion_pytorch_model.safetensors: {e}"))?;
                // candle's MMDiT embeds its timestep in F16, so the whole
                // network runs in F16.
                let dtype = DType::F16;
                let model = MMDiT::new(&shape, false, VarBuilder::from_tensors(weights, dtype, &device))
                    .map_err(|e| format!("transformer/diffusion_pytorch_model.safetensors: {e}"))?;
                let defaults = ImageDefaults {
                    steps: 28,
                    guidance_scale: 7.0,
                    scheduler: Scheduler::FlowEuler,
                };
                let text = TextEncoders::Sd3 { clip_l, clip_g, t5 };
                (
                    text,
                    Transformer::Mmdit(MovableMmdit(model)),
                    dtype,
                    shape.context_embed_size,
                    defaults,
                )
            }
            ImageArchitecture::Flux => {
                folder.require(&["text_encoder_2/config.json"])?;
                let shape = flux_config(&config, vae.latent_channels).map_err(read)?;
                let clip = folder.clip_tower("")?;
                let t5 = T5Tower::load(folder, "_2", FLUX_T5_TOKENS, t5_dtype)?;
                if clip.pooled_width != shape.vec_in_dim || t5.width != shape.context_in_dim {
                    return Err(format!(
                        "transformer/config.json: pooled_projection_dim {} and joint_attention_dim {} \
                         but the text encoders give {} and {}",
                        shape.vec_in_dim, shape.context_in_dim, clip.pooled_width, t5.width
                    ));
                }
                let (model, dtype) = load_flux(folder, &shape)?;
                let guided = shape.guidance_embed;
                // Flux dev as diffusers runs it; schnell is distilled to
                // a few unguided steps.
                let defaults = ImageDefaults {
                    steps: if guided { 28 } else { 4 },
                    guidance_scale: if guided { 3.5 } else { 0.0 },
                    scheduler: Scheduler::FlowEuler,
                };
                let text = TextEncoders::Flux { clip, t5 };
                (
                    text,
                    Transformer::Flux { model, guided },
                    dtype,
                    shape.context_in_dim,
                    defaults,
                )
            }
            other => return Err(format!("{other:?} is not a rectified-flow model")),
        };
        Ok(Self {
            text,
            transformer,
            dtype,
            context_width,
            vae,
            schedule,
            defaults,
            device,
        })
    }

    pub fn defaults(&self) -> ImageDefaults {
        self.defaults
    }
}

/// Flux's transformer from `transformer/`: a GGUF file there wins (F32
/// activations around quantized weights); else the safetensors, F32 on the
/// CPU, BF16 on a GPU.
fn load_flux(folder: &Folder, shape: &FluxConfig) -> Result<(Box<dyn WithForward + Send>, DType), String> {
    if let Some(path) = quantized::gguf_in(folder.path)? {
        let model = quantized::load_flux(&path, shape, &folder.device)?;
        return Ok((Box::new(model), DType::F32));
    }
    let shown = "transformer/diffusion_pytorch_model.safetensors";
    let weights = folder.tensors("transformer", "diffusion_pytorch_model")?;
    let weights = rename::flux_for_candle(weights, shape.depth, shape.depth_single_blocks)
        .map_err(|e| format!("{shown}: {e}"))?;
    let dtype = if folder.device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    let model = Flux::new(shape, VarBuilder::from_tensors(weights, dtype, &folder.device))
        .map_err(|e| format!("{shown}: {e}"))?;
    Ok((Box::new(model), dtype))
}

impl Transformer {
    /// The predicted velocity (F32, shaped as `latents`). `sigma` is the
    /// current noise level; `guidance` Flux dev's guidance input.
    fn velocity(
        &self,
        latents: &Tensor,
        sigma: f64,
        timestep: f64,
        text: &Conditioning,
        guidance: f32,
        dtype: DType,
    ) -> candle_core::Result<Tensor> {
        let batch = latents.dim(0)?;
        let device = latents.device();
        match self {
            Transformer::Mmdit(MovableMmdit(model)) => {
                let t = Tensor::full(timestep as f32, batch, device)?;
                model
                    .forward(
                        &latents.to_dtype(dtype)?,
                        &t,
                        &text.pooled.to_dtype(dtype)?,
                        &text.states.to_dtype(dtype)?,
                        None,
                    )?
                    .to_dtype(DType::F32)
            }
            Transformer::Flux { model, guided } => {
                let (_, channels, height, width) = latents.dims4()?;
                let image = pack(latents)?.to_dtype(dtype)?;
                let image_ids = image_positions(batch, height / 2, width / 2, device)?.to_dtype(dtype)?;
                let states = text.states.to_dtype(dtype)?;
                let text_ids = Tensor::zeros((batch, states.dim(1)?, 3), dtype, device)?;
                let t = Tensor::full(sigma as f32, batch, device)?.to_dtype(dtype)?;
                let guidance = if *guided {
                    Some(Tensor::full(guidance, batch, device)?.to_dtype(dtype)?)
                } else {
                    None
                };
                let velocity = model.forward(
                    &image,
                    &image_ids,
                    &states,
                    &text_ids,
                    &t,
                    &text.pooled.to_dtype(dtype)?,
                    guidance.as_ref(),
                )?;
                unpack(&velocity.to_dtype(DType::F32)?, channels, height, width)
            }
        }
    }
}

/// candle's MMDiT keeps its blocks as `Box<dyn JointBlock>` and its
/// embedders as `nn::Sequential` (boxed `dyn Module`), trait objects
/// declared without `Send`. Every type behind them (the joint blocks,
/// `Linear`, `Activation`) holds only candle tensors, which are `Send` and
/// `Sync`; the model is only ever used under the pipeline's lock, one
/// thread at a time.
struct MovableMmdit(MMDiT);

// SAFETY: see above: the concrete contents are tensors and plain values,
// and access is serialised by the pipeline's mutex.
#[allow(unsafe_code)]
unsafe impl Send for MovableMmdit {}

/// What the transformer reads of the prompt, one row per batch item.
pub(crate) struct Conditioning {
    /// (batch, tokens, context width)
    pub states: Tensor,
    /// (batch, pooled width)
    pub pooled: Tensor,
}

/// Flux reads 2 x 2 latent patches as tokens: (b, c, h, w) to
/// (b, h/2 * w/2, c * 4).
fn pack(latents: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = latents.dims4()?;
    latents
        .reshape((b, c, h / 2, 2, w / 2, 2))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((b, (h / 2) * (w / 2), c * 4))
}

fn unpack(tokens: &Tensor, c: usize, h: usize, w: usize) -> candle_core::Result<Tensor> {
    let b = tokens.dim(0)?;
    tokens
        .reshape((b, h / 2, w / 2, c, 2, 2))?
        .permute((0, 3, 1, 4, 2, 5))?
        .reshape((b, c, h, w))
}

/// Each patch token's position for Flux's rotary embedding: (0, row, col).
fn image_positions(batch: usize, rows: usize, cols: usize, device: &Device) -> candle_core::Result<Tensor> {
    let ids: Vec<f32> = (0..rows)
        .flat_map(|row| (0..cols).flat_map(move |col| [0.0, row as f32, col as f32]))
        .collect();
    Tensor::from_vec(ids, (1, rows * cols, 3), device)?.repeat((batch, 1, 1))
}

fn mmdit_config(json: &Value, latent_channels: usize) -> Result<MmditConfig, String> {
    let c = Fields(json);
    let depth = c.usize("num_layers", None)?;
    let heads = c.usize("num_attention_heads", None)?;
    let head_size = c.usize("attention_head_dim", Some(64))?;
    // candle's MMDiT has as many heads as layers, as every SD3 release.
    if depth == 0 || heads != depth {
        return Err(format!(
            "num_attention_heads {heads} must equal num_layers {depth} (as in every SD3 release)"
        ));
    }
    let caption = c.usize("caption_projection_dim", Some(head_size * heads))?;
    if caption != head_size * heads {
        return Err(format!(
            "caption_projection_dim {caption} must be attention_head_dim x num_attention_heads"
        ));
    }
    let in_channels = c.usize("in_channels", Some(16))?;
    if in_channels != latent_channels {
        return Err(format!(
            "in_channels {in_channels} does not fit the VAE's {latent_channels} latent channels"
        ));
    }
    Ok(MmditConfig {
        patch_size: c.usize("patch_size", Some(2))?,
        in_channels,
        out_channels: c.usize("out_channels", Some(in_channels))?,
        depth,
        head_size,
        adm_in_channels: c.usize("pooled_projection_dim", None)?,
        pos_embed_max_size: c.usize("pos_embed_max_size", Some(96))?,
        context_embed_size: c.usize("joint_attention_dim", None)?,
        frequency_embedding_size: 256,
    })
}

fn flux_config(json: &Value, latent_channels: usize) -> Result<FluxConfig, String> {
    let c = Fields(json);
    if c.usize("patch_size", Some(1))? != 1 {
        return Err("patch_size must be 1 (Flux packs 2 x 2 latents itself)".into());
    }
    let in_channels = c.usize("in_channels", Some(64))?;
    if in_channels != 4 * latent_channels {
        return Err(format!(
            "in_channels {in_channels} does not fit the VAE's {latent_channels} latent channels \
             (expected {}; Flux Fill and other variants are not supported)",
            4 * latent_channels
        ));
    }
    if c.usize("out_channels", Some(in_channels))? != in_channels {
        return Err("out_channels must equal in_channels".into());
    }
    let heads = c.usize("num_attention_heads", None)?;
    let head_dim = c.usize("attention_head_dim", None)?;
    let axes_dim = c.list("axes_dims_rope", |v| v.as_u64().map(|n| n as usize))?;
    if axes_dim.iter().sum::<usize>() != head_dim || axes_dim.len() != 3 {
        return Err(format!(
            "axes_dims_rope {axes_dim:?} must be three parts adding up to attention_head_dim {head_dim}"
        ));
    }
    Ok(FluxConfig {
        in_channels,
        vec_in_dim: c.usize("pooled_projection_dim", None)?,
        context_in_dim: c.usize("joint_attention_dim", None)?,
        hidden_size: heads * head_dim,
        mlp_ratio: 4.0,
        num_heads: heads,
        depth: c.usize("num_layers", None)?,
        depth_single_blocks: c.usize("num_single_layers", None)?,
        axes_dim,
        theta: 10_000,
        qkv_bias: true,
        guidance_embed: c.bool("guidance_embeds", false)?,
    })
}

/// SD3's text states: both CLIPs' side by side, padded to T5's width.
fn check_sd3_text(
    shape: &MmditConfig,
    clip_l: &TextTower,
    clip_g: &TextTower,
    t5: Option<&T5Tower>,
) -> Result<(), String> {
    let clip_width = clip_l.width + clip_g.width;
    let pooled = clip_l.pooled_width + clip_g.pooled_width;
    if clip_width > shape.context_embed_size || pooled != shape.adm_in_channels {
        return Err(format!(
            "transformer/config.json: joint_attention_dim {} and pooled_projection_dim {} do not fit \
             the CLIP encoders' {clip_width} and {pooled}",
            shape.context_embed_size, shape.adm_in_channels
        ));
    }
    match t5 {
        Some(t5) if t5.width != shape.context_embed_size => Err(format!(
            "transformer/config.json: joint_attention_dim {} but text_encoder_3 gives {}",
            shape.context_embed_size, t5.width
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_and_groups_two_by_two_patches() {
        let device = Device::Cpu;
        let latents = Tensor::arange(0f32, 2.0 * 3.0 * 4.0 * 6.0, &device)
            .unwrap()
            .reshape((2, 3, 4, 6))
            .unwrap();
        let packed = pack(&latents).unwrap();
        assert_eq!(packed.dims(), [2, 6, 12]);
        // The first token: channel 0's top-left patch, then channel 1's...
        let first: Vec<f32> = packed.get(0).unwrap().get(0).unwrap().to_vec1().unwrap();
        assert_eq!(&first[..4], &[0.0, 1.0, 6.0, 7.0]);
        assert_eq!(first[4], 24.0);
        let back = unpack(&packed, 3, 4, 6).unwrap();
        let same = back.eq(&latents).unwrap().min_all().unwrap().to_scalar::<u8>().unwrap();
        assert_eq!(same, 1);
    }

    #[test]
    fn positions_count_rows_and_columns() {
        let ids = image_positions(1, 2, 3, &Device::Cpu).unwrap();
        let rows: Vec<Vec<f32>> = ids.get(0).unwrap().to_vec2().unwrap();
        assert_eq!(rows[4], [0.0, 1.0, 1.0]);
        assert_eq!(rows.len(), 6);
    }
}
