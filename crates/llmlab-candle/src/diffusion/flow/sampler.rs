//! One rectified-flow generation: the prompt through the family's text
//! encoders, seeded noise, Euler steps along the predicted velocity from
//! the noisiest level to none, the VAE back to pixels. SD3 is guided by
//! the negative prompt run beside the prompt; Flux dev reads the guidance
//! scale as an input and takes no negative prompt. Image-to-image starts
//! from the picture mixed with noise at the level `strength` picks;
//! inpainting puts the picture back outside the mask after every step.

use candle_core::Tensor;
use tokio_util::sync::CancellationToken;

use llmlab_core::media::RgbImage;
use llmlab_core::{Error, ImageProgress, ResolvedImageRequest, Result, Scheduler};

use super::schedule::Ramp;
use super::{Conditioning, FlowModels, TextEncoders, Transformer};
use crate::diffusion::components::TextTower;
use crate::diffusion::noise::SeededNoise;
use crate::diffusion::pictures::{blend, first_step, internal, latent_mask, preview_steps};
use crate::diffusion::text_encoder::Encoded;

pub(crate) fn generate(
    models: &FlowModels,
    request: &ResolvedImageRequest,
    cancel: &CancellationToken,
    progress: &mut dyn FnMut(ImageProgress),
) -> Result<Vec<RgbImage>> {
    if request.scheduler != Scheduler::FlowEuler {
        return Err(Error::invalid_param(
            "scheduler",
            format!(
                "this model samples with flow_euler only, not {}",
                request.scheduler.as_str()
            ),
        ));
    }
    let (width, height) = (request.width as usize, request.height as usize);
    // Both transformers read 2 x 2 latent patches.
    let multiple = models.vae.downscale * 2;
    if !width.is_multiple_of(multiple) || !height.is_multiple_of(multiple) {
        return Err(Error::invalid_param(
            "size",
            format!("this model needs width and height in multiples of {multiple}"),
        ));
    }
    let flux = matches!(models.transformer, Transformer::Flux { .. });
    if flux && !request.negative_prompt.trim().is_empty() {
        return Err(Error::invalid_param(
            "negative_prompt",
            "Flux models take no negative prompt (their guidance is an input of the network)",
        ));
    }
    let n = request.n as usize;
    let (latent_h, latent_w) = (height / models.vae.downscale, width / models.vae.downscale);
    let shape = (n, models.vae.latent_channels, latent_h, latent_w);
    // SD3 doubles its batch for classifier-free guidance; Flux never does.
    let guided = !flux && request.guidance_scale > 1.0;
    let text = conditioning(models, request, guided)?;

    let ramp = if flux { Ramp::OneOverSteps } else { Ramp::TrainingRange };
    let image_tokens = (latent_h / 2) * (latent_w / 2);
    let sigmas = models.schedule.sigmas(request.steps as usize, image_tokens, ramp);
    let steps = sigmas.len() - 1;
    let mut seeded = SeededNoise::new(request.seed);
    let noise =
        Tensor::from_vec(seeded.normal(n * shape.1 * latent_h * latent_w), shape, &models.device).map_err(internal)?;
    let start = request.edit.as_ref().map_or(0, |edit| first_step(steps, edit.strength));
    let picture = match &request.edit {
        Some(edit) => Some(models.vae.encode(&edit.image, n, &models.device).map_err(internal)?),
        None => None,
    };
    // The picture at noise level `sigma`: a straight line between them.
    let noised = |picture: &Tensor, sigma: f64| -> Result<Tensor> {
        ((&noise * sigma).and_then(|noisy| noisy + (picture * (1.0 - sigma))?)).map_err(internal)
    };
    let mut latents = match &picture {
        None => noise.clone(),
        Some(picture) => noised(picture, sigmas[start])?,
    };
    let mask = request.edit.as_ref().and_then(|edit| edit.mask.clone());
    let latent_mask = match &mask {
        Some(mask) => Some(latent_mask(mask, width, height, models.vae.downscale, &models.device)?),
        None => None,
    };

    let total = (steps - start) as u32;
    let previews = preview_steps(total, request.partial_images);
    for (done, index) in (start..steps).enumerate() {
        if cancel.is_cancelled() {
            return Err(Error::cancelled());
        }
        let (sigma, next) = (sigmas[index], sigmas[index + 1]);
        let input = if guided {
            Tensor::cat(&[&latents, &latents], 0).map_err(internal)?
        } else {
            latents.clone()
        };
        let velocity = models
            .transformer
            .velocity(
                &input,
                sigma,
                models.schedule.timestep(sigma),
                &text,
                request.guidance_scale,
                models.dtype,
            )
            .map_err(internal)?;
        let velocity = if guided {
            let halves = velocity.chunk(2, 0).map_err(internal)?;
            let pull =
                ((&halves[1] - &halves[0]).map_err(internal)? * f64::from(request.guidance_scale)).map_err(internal)?;
            (&halves[0] + pull).map_err(internal)?
        } else {
            velocity
        };
        latents = (&latents + (velocity * (next - sigma)).map_err(internal)?).map_err(internal)?;
        if let (Some(mask), Some(picture)) = (&latent_mask, &picture) {
            // Outside the mask: the picture, as noisy as the next step expects.
            let known = noised(picture, next)?;
            latents = blend(&latents, &known, mask).map_err(internal)?;
        }
        let step = done as u32 + 1;
        progress(ImageProgress::Step { step, steps: total });
        if let Some(index) = previews.iter().position(|&at| at == step) {
            // These latents have no cheap colour map: a preview is a VAE pass.
            progress(ImageProgress::Preview {
                index: index as u32,
                images: models.vae.decode(&latents).map_err(internal)?,
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

/// The prompt (and, guided, the negative prompt before it) for every
/// image of the batch.
fn conditioning(models: &FlowModels, request: &ResolvedImageRequest, guided: bool) -> Result<Conditioning> {
    let n = request.n as usize;
    let one = |text: &str| -> Result<Conditioning> {
        let embedded = match &models.text {
            TextEncoders::Sd3 { clip_l, clip_g, t5 } => {
                let (l, g) = (clip(models, clip_l, text)?, clip(models, clip_g, text)?);
                let clip_states = Tensor::cat(&[&l.penultimate, &g.penultimate], 2).map_err(internal)?;
                let padding = models.context_width - clip_states.dim(2).map_err(internal)?;
                let clip_states = clip_states.pad_with_zeros(2, 0, padding).map_err(internal)?;
                let t5_states = match t5 {
                    Some(t5) => t5.encode(text)?,
                    // Without T5, diffusers reads a window of zeros.
                    None => clip_states.zeros_like().map_err(internal)?,
                };
                Conditioning {
                    states: Tensor::cat(&[&clip_states, &t5_states], 1).map_err(internal)?,
                    pooled: Tensor::cat(&[&l.pooled, &g.pooled], 1).map_err(internal)?,
                }
            }
            TextEncoders::Flux { clip: tower, t5 } => Conditioning {
                states: t5.encode(text)?,
                pooled: clip(models, tower, text)?.pooled,
            },
        };
        Ok(Conditioning {
            states: embedded.states.repeat((n, 1, 1)).map_err(internal)?,
            pooled: embedded.pooled.repeat((n, 1)).map_err(internal)?,
        })
    };
    let prompt = one(&request.prompt)?;
    if !guided {
        return Ok(prompt);
    }
    let negative = one(&request.negative_prompt)?;
    Ok(Conditioning {
        states: Tensor::cat(&[&negative.states, &prompt.states], 0).map_err(internal)?,
        pooled: Tensor::cat(&[&negative.pooled, &prompt.pooled], 0).map_err(internal)?,
    })
}

/// One text through a CLIP tower: SD3 reads its second-to-last states
/// and projected pooled state, Flux its (unprojected) pooled state.
fn clip(models: &FlowModels, tower: &TextTower, text: &str) -> Result<Encoded> {
    let ids = tower
        .tokenizer
        .ids(text)
        .map_err(|m| Error::invalid_param("prompt", m))?;
    let ids = Tensor::new(ids.as_slice(), &models.device)
        .and_then(|t| t.unsqueeze(0))
        .map_err(internal)?;
    tower.encoder.encode(&ids, tower.tokenizer.end_id()).map_err(internal)
}
