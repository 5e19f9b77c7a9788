//! The VAE both pipeline families share: pictures to the latents a model
//! works in, and back. SD 1.x/2.x and SDXL only scale their latents; SD3
//! and Flux also shift them (`shift_factor`).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use llmlab_core::media::{DecodedImage, RgbImage};
use llmlab_core::ImageEdit;

use super::configs::VaeShape;
use super::latent_encoder::LatentEncoder;
use super::pictures::keep_outside_mask;
use super::vae_decoder::VaeDecoder;

pub(crate) struct Vae {
    decoder: VaeDecoder,
    /// The encoder to its latent mean (image-to-image, inpainting).
    encoder: LatentEncoder,
    scaling_factor: f64,
    shift_factor: f64,
    /// Pixels per latent along each side.
    pub downscale: usize,
    pub latent_channels: usize,
}

impl Vae {
    /// The weights at `vb` (F32); the decoder runs in `decoder_dtype`.
    pub fn load(vb: &VarBuilder<'static>, shape: &VaeShape, decoder_dtype: DType) -> candle_core::Result<Self> {
        Ok(Self {
            encoder: LatentEncoder::new(vb, &shape.config)?,
            decoder: VaeDecoder::load(&vb.clone().set_dtype(decoder_dtype), shape)?,
            scaling_factor: shape.scaling_factor,
            shift_factor: shape.shift_factor,
            downscale: shape.downscale,
            latent_channels: shape.config.latent_channels,
        })
    }

    /// The picture's latents as the model sees them, once for each of the
    /// `batch` images (batch, channels, h, w): the encoder's mean, not a
    /// sample, so that an edit repeats under a seed.
    pub fn encode(&self, image: &DecodedImage, batch: usize, device: &Device) -> candle_core::Result<Tensor> {
        let pixels = pixels_to_tensor(&image.rgb, image.width as usize, image.height as usize, device)?;
        let latents = self.encoder.mean(&pixels)?;
        ((latents - self.shift_factor)? * self.scaling_factor)?.repeat((batch, 1, 1, 1))
    }

    /// The final latents as pictures; an edit with a mask gets its kept
    /// pixels back exactly as they went in.
    pub fn decode_final(&self, latents: &Tensor, edit: Option<&ImageEdit>) -> candle_core::Result<Vec<RgbImage>> {
        let mut images = self.decode(latents)?;
        if let Some((edit, mask)) = edit.and_then(|edit| Some((edit, edit.mask.as_deref()?))) {
            for image in &mut images {
                keep_outside_mask(image, &edit.image, mask);
            }
        }
        Ok(images)
    }

    /// The model's latents back to 8-bit pictures, one per batch item.
    pub fn decode(&self, latents: &Tensor) -> candle_core::Result<Vec<RgbImage>> {
        let unscaled = ((latents / self.scaling_factor)? + self.shift_factor)?;
        let pixels = self.decoder.decode(&unscaled)?;
        let pixels = ((pixels / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
        let pixels = (pixels * 255.0)?.round()?.to_dtype(DType::U8)?;
        let (n, _, height, width) = pixels.dims4()?;
        (0..n)
            .map(|i| {
                let rgb = pixels.get(i)?.permute((1, 2, 0))?.flatten_all()?.to_vec1::<u8>()?;
                Ok(RgbImage {
                    width: width as u32,
                    height: height as u32,
                    rgb,
                })
            })
            .collect()
    }
}

/// Pixels (0..255) to the VAE's input range (-1..1), shape (1, 3, H, W).
fn pixels_to_tensor(rgb: &[u8], width: usize, height: usize, device: &Device) -> candle_core::Result<Tensor> {
    let pixels = Tensor::from_vec(rgb.to_vec(), (height, width, 3), device)?
        .permute((2, 0, 1))?
        .to_dtype(DType::F32)?;
    ((pixels / 127.5)? - 1.0)?.unsqueeze(0)
}
