//! What both samplers do around the denoising loop: previews from
//! latents, how far an edit goes back, and the mask's pictures and
//! latents (inpainting keeps the pixels outside the mask exactly).

use candle_core::{DType, Tensor};

use llmlab_core::media::{DecodedImage, RgbImage};
use llmlab_core::{Error, ImageEdit, Result};

pub(crate) fn internal(e: candle_core::Error) -> Error {
    Error::internal(format!("image generation failed: {e}"))
}

/// After which steps the `wanted` previews go out: spread evenly, never
/// after the last step (the image itself follows it).
pub(crate) fn preview_steps(steps: u32, wanted: u32) -> Vec<u32> {
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
pub(crate) fn preview(latents: &Tensor, downscale: usize) -> Result<Vec<RgbImage>> {
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
pub(crate) fn first_step(steps: usize, strength: f32) -> usize {
    let run = ((steps as f64 * f64::from(strength)).floor() as usize).min(steps);
    steps - run
}

/// The picture with the area to repaint blanked (mid grey): what an
/// inpainting UNet reads, encoded, beside the mask.
pub(crate) fn masked_picture(edit: &ImageEdit) -> DecodedImage {
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
    DecodedImage {
        rgb: rgb.into(),
        ..edit.image.clone()
    }
}

/// One value per latent: 1 where any of its pixels is repainted.
pub(crate) fn latent_mask(
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

pub(crate) fn blend(generated: &Tensor, known: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let keep = (1.0 - mask)?;
    generated.broadcast_mul(mask)? + known.broadcast_mul(&keep)?
}

/// Pixels the mask keeps come back exactly as they went in.
pub(crate) fn keep_outside_mask(image: &mut RgbImage, original: &DecodedImage, mask: &[u8]) {
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
