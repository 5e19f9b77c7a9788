//! One generation: text to conditioning, seeded noise, the denoising loop
//! (classifier-free guidance), the VAE back to pixels. Image-to-image
//! starts from the picture's latents noised to the step `strength` picks;
//! inpainting either feeds a 9-channel inpainting UNet the mask and the
//! masked picture, or, with a plain UNet, puts the picture's own latents
//! back outside the mask after every step; either way the pixels outside
//! the mask are the input's, exactly.

use candle_core::Tensor;
use candle_transformers::models::stable_diffusion::schedulers::{Scheduler as Stepper, SchedulerConfig};
use tokio_util::sync::CancellationToken;

use llmlab_core::media::RgbImage;
use llmlab_core::{Error, ImageProgress, ResolvedImageRequest, Result, Scheduler};

use super::components::TextTower;
use super::models::Models;
use super::noise::SeededNoise;
use super::pictures::{blend, first_step, internal, latent_mask, masked_picture, preview, preview_steps};
use super::unet::AddedConditions;

pub(crate) fn generate(
    models: &Models,
    request: &ResolvedImageRequest,
    cancel: &CancellationToken,
    progress: &mut dyn FnMut(ImageProgress),
) -> Result<Vec<RgbImage>> {
    let (width, height) = (request.width as usize, request.height as usize);
    let downscale = models.vae.downscale;
    if !width.is_multiple_of(downscale) || !height.is_multiple_of(downscale) {
        return Err(Error::invalid_param(
            "size",
            format!("this model needs width and height in multiples of {downscale}"),
        ));
    }
    let inpainting_unet = models.unet_in_channels != models.vae.latent_channels;
    let mask = request.edit.as_ref().and_then(|edit| edit.mask.clone());
    if inpainting_unet && mask.is_none() {
        return Err(Error::invalid_param(
            "mask",
            "this is an inpainting model: send an image and a mask (/v1/images/edits)",
        ));
    }
    let n = request.n as usize;
    let shape = (n, models.vae.latent_channels, height / downscale, width / downscale);
    let guided = request.guidance_scale > 1.0;
    let text = conditioning(models, request, guided)?;

    let mut stepper: Box<dyn Stepper> = match request.scheduler {
        Scheduler::Ddim => models.schedule.ddim().build(request.steps as usize),
        Scheduler::EulerAncestral => models.schedule.euler_ancestral().build(request.steps as usize),
        Scheduler::FlowEuler => {
            return Err(Error::invalid_param(
                "scheduler",
                "flow_euler is for rectified-flow models (SD3, Flux); this model takes ddim or euler_a",
            ))
        }
    }
    .map_err(internal)?;
    let timesteps = stepper.timesteps().to_vec();
    let mut seeded = SeededNoise::new(request.seed);
    let count = shape.0 * shape.1 * shape.2 * shape.3;
    let noise = Tensor::from_vec(seeded.normal(count), shape, &models.device).map_err(internal)?;

    let start = request
        .edit
        .as_ref()
        .map_or(0, |edit| first_step(timesteps.len(), edit.strength));
    let picture = match &request.edit {
        Some(edit) => Some(models.vae.encode(&edit.image, n, &models.device).map_err(internal)?),
        None => None,
    };
    let mut latents = match &picture {
        None => (&noise * stepper.init_noise_sigma()).map_err(internal)?,
        Some(picture) if start < timesteps.len() => stepper
            .add_noise(picture, noise.clone(), timesteps[start])
            .map_err(internal)?,
        // Strength 0: nothing is repainted; the picture's VAE round trip.
        Some(picture) => picture.clone(),
    };
    let latent_mask = match &mask {
        Some(mask) => Some(latent_mask(mask, width, height, downscale, &models.device)?),
        None => None,
    };
    // A 9-channel UNet reads the mask and the masked picture beside the
    // latents; a plain one gets the picture put back after each step.
    let inpaint_inputs = match (&latent_mask, &request.edit, inpainting_unet) {
        (Some(mask), Some(edit), true) => {
            let masked = models
                .vae
                .encode(&masked_picture(edit), n, &models.device)
                .map_err(internal)?;
            let mask = mask.repeat((n, 1, 1, 1)).map_err(internal)?;
            let extra = Tensor::cat(&[&mask, &masked], 1).map_err(internal)?;
            Some(if guided {
                Tensor::cat(&[&extra, &extra], 0).map_err(internal)?
            } else {
                extra
            })
        }
        _ => None,
    };

    let total = (timesteps.len() - start) as u32;
    let previews = preview_steps(total, request.partial_images);
    for (done, &t) in timesteps[start..].iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(Error::cancelled());
        }
        let input = if guided {
            Tensor::cat(&[&latents, &latents], 0).map_err(internal)?
        } else {
            latents.clone()
        };
        let mut input = stepper.scale_model_input(input, t).map_err(internal)?;
        if let Some(extra) = &inpaint_inputs {
            input = Tensor::cat(&[&input, extra], 1).map_err(internal)?;
        }
        let predicted = models
            .unet
            .forward(&input, t as f64, &text.states, text.added.as_ref())
            .map_err(internal)?;
        let predicted = if guided {
            let halves = predicted.chunk(2, 0).map_err(internal)?;
            let pull =
                ((&halves[1] - &halves[0]).map_err(internal)? * f64::from(request.guidance_scale)).map_err(internal)?;
            (&halves[0] + pull).map_err(internal)?
        } else {
            predicted
        };
        latents = stepper.step(&predicted, t, &latents).map_err(internal)?;
        if let (Some(mask), Some(picture), false) = (&latent_mask, &picture, inpainting_unet) {
            // Outside the mask: the picture, noised as much as the next step expects.
            let known = match timesteps.get(start + done + 1) {
                Some(&next) => stepper.add_noise(picture, noise.clone(), next).map_err(internal)?,
                None => picture.clone(),
            };
            latents = blend(&latents, &known, mask).map_err(internal)?;
        }
        let step = done as u32 + 1;
        progress(ImageProgress::Step { step, steps: total });
        if let Some(index) = previews.iter().position(|&at| at == step) {
            progress(ImageProgress::Preview {
                index: index as u32,
                images: preview(&latents, downscale)?,
            });
        }
    }
    if cancel.is_cancelled() {
        return Err(Error::cancelled());
    }
    models
        .vae
        .decode_final(&latents, request.edit.as_ref())
        .map_err(internal)
}

/// Text conditioning for every image: `[negative..., prompt...]` with
/// guidance, the prompt's alone without; SDXL's pooled text and size
/// conditions beside it.
fn conditioning(models: &Models, request: &ResolvedImageRequest, guided: bool) -> Result<Conditioning> {
    let n = request.n as usize;
    let tokens = |tower: &TextTower, text: &str| -> Result<Tensor> {
        let ids = tower
            .tokenizer
            .ids(text)
            .map_err(|m| Error::invalid_param("prompt", m))?;
        Tensor::new(ids.as_slice(), &models.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(internal)
    };
    // (states, pooled) of one text, `n` times.
    let embed = |text: &str| -> Result<(Tensor, Option<Tensor>)> {
        let first = models
            .text
            .encoder
            .encode(&tokens(&models.text, text)?, models.text.tokenizer.end_id())
            .map_err(internal)?;
        let (states, pooled) = match &models.text_2 {
            None => (first.last, None),
            Some(tower) => {
                let second = tower
                    .encoder
                    .encode(&tokens(tower, text)?, tower.tokenizer.end_id())
                    .map_err(internal)?;
                let states = Tensor::cat(&[&first.penultimate, &second.penultimate], 2).map_err(internal)?;
                (states, Some(second.pooled))
            }
        };
        let states = states.repeat((n, 1, 1)).map_err(internal)?;
        let pooled = pooled.map(|p| p.repeat((n, 1))).transpose().map_err(internal)?;
        Ok((states, pooled))
    };
    let (mut states, mut pooled) = embed(&request.prompt)?;
    if guided {
        let (negative_states, negative_pooled) =
            if models.zeros_for_empty_negative && request.negative_prompt.is_empty() {
                let zeros = |t: &Tensor| t.zeros_like().map_err(internal);
                (zeros(&states)?, pooled.as_ref().map(zeros).transpose()?)
            } else {
                embed(&request.negative_prompt)?
            };
        states = Tensor::cat(&[&negative_states, &states], 0).map_err(internal)?;
        pooled = match (negative_pooled, pooled) {
            (Some(negative), Some(positive)) => Some(Tensor::cat(&[&negative, &positive], 0).map_err(internal)?),
            _ => None,
        };
    }
    let (height, width) = (f64::from(request.height), f64::from(request.width));
    Ok(Conditioning {
        states,
        added: pooled.map(|pooled_text| AddedConditions {
            pooled_text,
            // No crop, and the picture's own size as both the original's
            // and the target's (what diffusers sends by default).
            size_ids: [height, width, 0.0, 0.0, height, width],
        }),
    })
}

/// What the UNet attends to and, for SDXL, its added conditions.
struct Conditioning {
    states: Tensor,
    added: Option<AddedConditions>,
}
