//! One generation: text to conditioning, seeded noise, the denoising loop
//! (classifier-free guidance), the VAE back to pixels. Image-to-image
//! starts from the picture's latents noised to the step `strength` picks;
//! inpainting either feeds a 9-channel inpainting UNet the mask and the
//! masked picture, or, with a plain UNet, puts the picture's own latents
//! back outside the mask after every step; either way the pixels outside
//! the mask are the input's, exactly.

use candle_core::{DType, Tensor};
use candle_transformers::models::stable_diffusion::schedulers::{Scheduler as Stepper, SchedulerConfig};
use tokio_util::sync::CancellationToken;

use llmlab_core::media::{DecodedImage, RgbImage};
use llmlab_core::{Error, ImageEdit, ImageProgress, ResolvedImageRequest, Result, Scheduler};

use super::models::{Models, TextTower};
use super::noise::SeededNoise;
use super::unet::AddedConditions;

fn internal(e: candle_core::Error) -> Error {
    Error::internal(format!("image generation failed: {e}"))
}

pub(crate) fn generate(
    models: &Models,
    request: &ResolvedImageRequest,
    cancel: &CancellationToken,
    progress: &mut dyn FnMut(ImageProgress),
) -> Result<Vec<RgbImage>> {
    let (width, height) = (request.width as usize, request.height as usize);
    let downscale = models.downscale;
    if !width.is_multiple_of(downscale) || !height.is_multiple_of(downscale) {
        return Err(Error::invalid_param(
            "size",
            format!("this model needs width and height in multiples of {downscale}"),
        ));
    }
    let inpainting_unet = models.unet_in_channels != models.latent_channels;
    let mask = request.edit.as_ref().and_then(|edit| edit.mask.clone());
    if inpainting_unet && mask.is_none() {
        return Err(Error::invalid_param(
            "mask",
            "this is an inpainting model: send an image and a mask (/v1/images/edits)",
        ));
    }
    let n = request.n as usize;
    let shape = (n, models.latent_channels, height / downscale, width / downscale);
    let guided = request.guidance_scale > 1.0;
    let text = conditioning(models, request, guided)?;

    let mut stepper: Box<dyn Stepper> = match request.scheduler {
        Scheduler::Ddim => models.schedule.ddim().build(request.steps as usize),
        Scheduler::EulerAncestral => models.schedule.euler_ancestral().build(request.steps as usize),
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
        Some(edit) => Some(encode(models, &edit.image)?.repeat((n, 1, 1, 1)).map_err(internal)?),
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
            let masked = encode_masked(models, edit)?.repeat((n, 1, 1, 1)).map_err(internal)?;
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
    let mut images = decode(models, &latents)?;
    if let (Some(mask), Some(edit)) = (&mask, &request.edit) {
        for image in &mut images {
            keep_outside_mask(image, &edit.image, mask);
        }
    }
    Ok(images)
}

/// After which steps the `wanted` previews go out: spread evenly, never
/// after the last step (the image itself follows it).
fn preview_steps(steps: u32, wanted: u32) -> Vec<u32> {
    let mut at: Vec<u32> = (1..=wanted)
        .map(|i| i * steps / (wanted + 1))
        .filter(|&s| s >= 1 && s < steps)
        .collect();
    at.dedup();
    at
}

/// How SD 1.x's four latent channels look in RGB, roughly: a linear map
/// fitted on decoded images (the factors previewers such as ComfyUI use).
/// A preview costs no VAE pass.
const LATENT_TO_RGB: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// A rough picture of every image of the batch from its latents, at full
/// size (each latent fills its `downscale` x `downscale` block).
fn preview(latents: &Tensor, downscale: usize) -> Result<Vec<RgbImage>> {
    let (n, channels, height, width) = latents.dims4().map_err(internal)?;
    if channels != LATENT_TO_RGB.len() {
        return Ok(Vec::new());
    }
    let values = latents
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(internal)?;
    let plane = height * width;
    Ok((0..n)
        .map(|image| {
            let (out_w, out_h) = (width * downscale, height * downscale);
            let mut rgb = Vec::with_capacity(out_w * out_h * 3);
            for y in 0..out_h {
                for x in 0..out_w {
                    let at = (y / downscale) * width + x / downscale;
                    rgb.extend((0..3).map(|colour| {
                        let value: f32 = (0..channels)
                            .map(|c| values[(image * channels + c) * plane + at] * LATENT_TO_RGB[c][colour])
                            .sum();
                        ((value + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
                    }));
                }
            }
            RgbImage {
                width: out_w as u32,
                height: out_h as u32,
                rgb,
            }
        })
        .collect())
}

/// The first of `steps` steps image-to-image runs: `strength` 1 runs all
/// of them (from pure noise), 0 none (the picture as it is).
fn first_step(steps: usize, strength: f32) -> usize {
    let run = ((steps as f64 * f64::from(strength)).floor() as usize).min(steps);
    steps - run
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

/// Pixels (0..255) to the VAE's input range (-1..1), shape (1, 3, H, W).
fn pixels_to_tensor(rgb: &[u8], width: usize, height: usize, models: &Models) -> Result<Tensor> {
    Tensor::from_vec(rgb.to_vec(), (height, width, 3), &models.device)
        .and_then(|t| t.permute((2, 0, 1)))
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| (t / 127.5)? - 1.0)
        .and_then(|t| t.unsqueeze(0))
        .map_err(internal)
}

fn encode(models: &Models, image: &DecodedImage) -> Result<Tensor> {
    let pixels = pixels_to_tensor(&image.rgb, image.width as usize, image.height as usize, models)?;
    // The mean, not a sample: image-to-image repeats under a seed.
    let latents = models.encoder.mean(&pixels).map_err(internal)?;
    (latents * models.scaling_factor).map_err(internal)
}

/// The picture with the area to repaint blanked (mid grey), encoded: what
/// an inpainting UNet reads beside the mask.
fn encode_masked(models: &Models, edit: &ImageEdit) -> Result<Tensor> {
    let mask = edit.mask.as_deref().unwrap_or(&[]);
    let rgb: Vec<u8> = edit
        .image
        .rgb
        .chunks_exact(3)
        .zip(mask.iter().chain(std::iter::repeat(&0)))
        .flat_map(|(pixel, &repaint)| {
            if repaint > 0 {
                [128, 128, 128]
            } else {
                [pixel[0], pixel[1], pixel[2]]
            }
        })
        .collect();
    let masked = DecodedImage {
        rgb: rgb.into(),
        ..edit.image.clone()
    };
    encode(models, &masked)
}

/// One value per latent: 1 where any of its pixels is repainted.
fn latent_mask(
    mask: &[u8],
    width: usize,
    height: usize,
    downscale: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let (lw, lh) = (width / downscale, height / downscale);
    let mut cells = vec![0f32; lw * lh];
    for (i, &repaint) in mask.iter().enumerate() {
        if repaint > 0 {
            let (x, y) = (i % width, i / width);
            cells[(y / downscale) * lw + x / downscale] = 1.0;
        }
    }
    Tensor::from_vec(cells, (1, 1, lh, lw), device).map_err(internal)
}

fn blend(generated: &Tensor, known: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let keep = (1.0 - mask)?;
    generated.broadcast_mul(mask)? + known.broadcast_mul(&keep)?
}

fn decode(models: &Models, latents: &Tensor) -> Result<Vec<RgbImage>> {
    let pixels = (latents / models.scaling_factor)
        .and_then(|l| models.vae.decode(&l))
        .and_then(|x| ((x / 2.0)? + 0.5)?.clamp(0f32, 1f32))
        .and_then(|x| (x * 255.0)?.round())
        .and_then(|x| x.to_dtype(DType::U8))
        .map_err(internal)?;
    let (n, _, height, width) = pixels.dims4().map_err(internal)?;
    (0..n)
        .map(|i| {
            let rgb = pixels
                .get(i)
                .and_then(|p| p.permute((1, 2, 0)))
                .and_then(|p| p.flatten_all())
                .and_then(|p| p.to_vec1::<u8>())
                .map_err(internal)?;
            Ok(RgbImage {
                width: width as u32,
                height: height as u32,
                rgb,
            })
        })
        .collect()
}

/// Pixels the mask keeps come back exactly as they went in.
fn keep_outside_mask(image: &mut RgbImage, original: &DecodedImage, mask: &[u8]) {
    for (i, &repaint) in mask.iter().enumerate() {
        if repaint == 0 {
            image.rgb[3 * i..3 * i + 3].copy_from_slice(&original.rgb[3 * i..3 * i + 3]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{first_step, preview_steps};

    #[test]
    fn previews_spread_over_the_steps_and_never_follow_the_last() {
        assert_eq!(preview_steps(20, 3), vec![5, 10, 15]);
        assert_eq!(preview_steps(3, 1), vec![1]);
        assert_eq!(preview_steps(2, 3), vec![1]);
        assert_eq!(preview_steps(1, 2), Vec::<u32>::new());
        assert_eq!(preview_steps(10, 0), Vec::<u32>::new());
    }

    #[test]
    fn strength_picks_how_many_steps_run() {
        assert_eq!(first_step(10, 1.0), 0);
        assert_eq!(first_step(10, 0.5), 5);
        assert_eq!(first_step(10, 0.0), 10);
        assert_eq!(first_step(4, 0.8), 1);
    }
}
