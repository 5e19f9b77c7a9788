//! Image generation requests (text-to-image, image-to-image, inpainting)
//! and their resolved form; what a generation streams is in
//! `image_events.rs`.

use std::sync::Arc;

use crate::config::{self, ImageLimits};
use crate::keep_alive::KeepAlive;
use crate::media::{decode_image, DecodedImage};
use crate::registry::ModelSpec;
use crate::{Error, Result};

use super::image_settings::{ChosenSettings, ImageDefaults, OutputFormat, Scheduler};

/// An image request as a door decoded it: every setting optional, images
/// still encoded. The doors name the fields as OpenAI does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageRequest {
    /// A registry id; empty: the first image model.
    pub model: String,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub n: Option<u32>,
    /// "WxH", e.g. "512x512".
    pub size: Option<String>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f32>,
    pub seed: Option<u64>,
    pub scheduler: Option<String>,
    /// Image-to-image and inpainting: the starting picture (encoded).
    pub image: Option<Vec<u8>>,
    /// Inpainting: transparent pixels mark the area to repaint (OpenAI's
    /// rule); same size as `image`.
    pub mask: Option<Vec<u8>>,
    /// How much of the starting picture is repainted, 0 to 1.
    pub strength: Option<f32>,
    pub output_format: Option<String>,
    /// Previews streamed while the image forms (OpenAI's 0 to 3).
    pub partial_images: Option<u32>,
    pub keep_alive: Option<KeepAlive>,
}

/// A starting picture, for image-to-image and inpainting.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageEdit {
    pub image: DecodedImage,
    /// One byte per pixel, 255 where the model repaints, 0 where the
    /// picture must come back as it went in; `None`: repaint everywhere.
    pub mask: Option<Arc<[u8]>>,
    pub strength: f32,
}

/// An image request with every default filled in and every value checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedImageRequest {
    pub model: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub n: u32,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance_scale: f32,
    /// Drawn at random when the request set none; reported back.
    pub seed: u64,
    pub scheduler: Scheduler,
    pub edit: Option<ImageEdit>,
    pub output_format: OutputFormat,
    /// Previews to stream, spread over the steps.
    pub partial_images: u32,
    pub keep_alive: KeepAlive,
    /// Which of `steps`, `guidance_scale` and `scheduler` the request set;
    /// the others hold the generic defaults until
    /// [`ResolvedImageRequest::adopt_defaults`] puts the model's in.
    pub chosen: ChosenSettings,
}

impl ResolvedImageRequest {
    /// The model's own defaults for every sampling setting the request
    /// left out (the request is resolved before the model is loaded).
    pub fn adopt_defaults(&mut self, defaults: &ImageDefaults) {
        if !self.chosen.steps {
            self.steps = defaults.steps;
        }
        if !self.chosen.guidance_scale {
            self.guidance_scale = defaults.guidance_scale;
        }
        if !self.chosen.scheduler {
            self.scheduler = defaults.scheduler;
        }
    }
}

/// Most previews one request may ask for (as OpenAI).
pub const MAX_PARTIAL_IMAGES: u32 = 3;

/// Most images one request may ask for (they are generated in one batch).
pub const MAX_IMAGES_PER_REQUEST: u32 = 8;
/// Most denoising steps.
pub const MAX_STEPS: u32 = 150;
/// Largest side of a generated image.
pub const MAX_IMAGE_SIDE: u32 = 2048;

impl ImageRequest {
    /// Check every value and fill defaults (from `config`); decode the
    /// starting picture and mask. Blocking when images are attached.
    pub fn resolve(self, model: &ModelSpec) -> Result<ResolvedImageRequest> {
        if self.prompt.trim().is_empty() {
            return Err(Error::invalid_param("prompt", "'prompt' must not be empty"));
        }
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_IMAGES_PER_REQUEST).contains(&n) {
            return Err(Error::invalid_param(
                "n",
                format!("'n' must be between 1 and {MAX_IMAGES_PER_REQUEST}, got {n}"),
            ));
        }
        let generic = ImageDefaults::default();
        let chosen = ChosenSettings {
            steps: self.steps.is_some(),
            guidance_scale: self.guidance_scale.is_some(),
            scheduler: self.scheduler.is_some(),
        };
        let steps = self.steps.unwrap_or(generic.steps);
        if !(1..=MAX_STEPS).contains(&steps) {
            return Err(Error::invalid_param(
                "steps",
                format!("'steps' must be between 1 and {MAX_STEPS}, got {steps}"),
            ));
        }
        let guidance_scale = self.guidance_scale.unwrap_or(generic.guidance_scale);
        if !(0.0..=30.0).contains(&guidance_scale) {
            return Err(Error::invalid_param(
                "guidance_scale",
                format!("'guidance_scale' must be between 0 and 30, got {guidance_scale}"),
            ));
        }
        let scheduler = match &self.scheduler {
            None => generic.scheduler,
            Some(name) => Scheduler::parse(name).ok_or_else(|| {
                Error::invalid_param(
                    "scheduler",
                    format!(
                        "unknown scheduler '{}'; one of: {}",
                        crate::text::echo(name),
                        Scheduler::NAMES
                    ),
                )
            })?,
        };
        let output_format = match &self.output_format {
            None => OutputFormat::Png,
            Some(name) => OutputFormat::parse(name)
                .ok_or_else(|| Error::invalid_param("output_format", "'output_format' must be png, jpeg or webp"))?,
        };
        let partial_images = self.partial_images.unwrap_or(0);
        if partial_images > MAX_PARTIAL_IMAGES {
            return Err(Error::invalid_param(
                "partial_images",
                format!("'partial_images' must be between 0 and {MAX_PARTIAL_IMAGES}, got {partial_images}"),
            ));
        }
        let edit = self.edit(model)?;
        let (width, height) = match (&self.size, &edit) {
            (Some(size), _) => parse_size(size)?,
            // An edit keeps its picture's size.
            (None, Some(edit)) => (edit.image.width, edit.image.height),
            (None, None) => (config::DEFAULT_IMAGE_SIDE, config::DEFAULT_IMAGE_SIDE),
        };
        if let Some(edit) = &edit {
            if (edit.image.width, edit.image.height) != (width, height) {
                return Err(Error::invalid_param(
                    "size",
                    format!(
                        "the image is {}x{} but 'size' asks for {width}x{height}",
                        edit.image.width, edit.image.height
                    ),
                ));
            }
            check_side("image", width, height)?;
        }
        Ok(ResolvedImageRequest {
            model: model.id.clone(),
            prompt: self.prompt,
            negative_prompt: self.negative_prompt.unwrap_or_default(),
            n,
            width,
            height,
            steps,
            guidance_scale,
            seed: self.seed.unwrap_or_else(random_seed),
            scheduler,
            edit,
            output_format,
            partial_images,
            keep_alive: self.keep_alive.unwrap_or(model.keep_alive),
            chosen,
        })
    }

    fn edit(&self, model: &ModelSpec) -> Result<Option<ImageEdit>> {
        let _ = model;
        let limits = image_input_limits();
        let Some(bytes) = &self.image else {
            if self.mask.is_some() {
                return Err(Error::invalid_param("mask", "a mask needs an 'image' to apply to"));
            }
            if self.strength.is_some() {
                return Err(Error::invalid_param(
                    "strength",
                    "'strength' needs an 'image' to start from",
                ));
            }
            return Ok(None);
        };
        let strength = self.strength.unwrap_or(config::DEFAULT_IMAGE_STRENGTH);
        if !(0.0..=1.0).contains(&strength) {
            return Err(Error::invalid_param(
                "strength",
                format!("'strength' must be between 0 and 1, got {strength}"),
            ));
        }
        if bytes.len() as u64 > limits.max_bytes {
            return Err(Error::invalid_param("image", "the image is larger than allowed"));
        }
        let image = decode_image(bytes, &limits).map_err(|m| Error::invalid_param("image", m))?;
        let mask = match &self.mask {
            None => None,
            Some(bytes) => Some(repaint_mask(bytes, &image, &limits)?),
        };
        Ok(Some(ImageEdit { image, mask, strength }))
    }
}

/// Pictures sent for editing are not scaled: their size is the output's.
fn image_input_limits() -> ImageLimits {
    ImageLimits {
        max_side: MAX_IMAGE_SIDE,
        ..config::image_limits()
    }
}

/// The mask's alpha channel as "repaint here" bytes: transparent pixels
/// (alpha 0) are repainted, as OpenAI defines it; a mask without alpha
/// counts white as "repaint", as diffusers does.
fn repaint_mask(bytes: &[u8], image: &DecodedImage, limits: &ImageLimits) -> Result<Arc<[u8]>> {
    let bad = |why: String| Error::invalid_param("mask", why);
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(format!("the mask does not read: {e}")))
    };
    // The size comes from the header, before any pixel is decoded: a mask
    // must match its (already bounded) picture.
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| bad(format!("the mask does not decode: {e}")))?;
    if (width, height) != (image.width, image.height) {
        return Err(bad(format!(
            "the mask is {width}x{height} but the image is {}x{}",
            image.width, image.height
        )));
    }
    if bytes.len() as u64 > limits.max_bytes {
        return Err(bad("the mask is larger than allowed".into()));
    }
    let decoded = reader()?
        .decode()
        .map_err(|e| bad(format!("the mask does not decode: {e}")))?;
    let mask: Vec<u8> = if decoded.color().has_alpha() {
        decoded
            .to_rgba8()
            .pixels()
            .map(|p| if p[3] == 0 { 255 } else { 0 })
            .collect()
    } else {
        decoded
            .to_luma8()
            .pixels()
            .map(|p| if p[0] >= 128 { 255 } else { 0 })
            .collect()
    };
    Ok(Arc::from(mask))
}

fn parse_size(size: &str) -> Result<(u32, u32)> {
    let parsed = size
        .trim()
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)));
    let Some((width, height)) = parsed else {
        return Err(Error::invalid_param(
            "size",
            format!(
                "'size' must be WIDTHxHEIGHT, e.g. 512x512, got '{}'",
                crate::text::echo(size)
            ),
        ));
    };
    check_side("size", width, height)?;
    Ok((width, height))
}

fn check_side(param: &str, width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 || !width.is_multiple_of(8) || !height.is_multiple_of(8) {
        return Err(Error::invalid_param(
            param,
            format!("width and height must be positive multiples of 8, got {width}x{height}"),
        ));
    }
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(Error::invalid_param(
            param,
            format!("width and height must be at most {MAX_IMAGE_SIDE}, got {width}x{height}"),
        ));
    }
    Ok(())
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::ErrorKind;

    fn model() -> ModelSpec {
        let text = "models:\n  - {id: sd, kind: image, backend: candle, path: sd}\n";
        let registry = Registry::parse(text, std::path::Path::new("r.yaml"), std::path::Path::new("/m"), |_| {
            None
        })
        .unwrap();
        registry.get("sd").unwrap().clone()
    }

    fn request() -> ImageRequest {
        ImageRequest {
            prompt: "a cat".into(),
            ..ImageRequest::default()
        }
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(width, height)
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn defaults_fill_what_the_request_leaves_open() {
        let resolved = request().resolve(&model()).unwrap();
        assert_eq!(
            (resolved.width, resolved.height),
            (config::DEFAULT_IMAGE_SIDE, config::DEFAULT_IMAGE_SIDE)
        );
        assert_eq!((resolved.n, resolved.steps), (1, config::DEFAULT_IMAGE_STEPS));
        assert_eq!(resolved.scheduler, Scheduler::Ddim);
        assert_eq!(resolved.output_format, OutputFormat::Png);
        assert!(resolved.edit.is_none());
        let seeded = ImageRequest {
            seed: Some(9),
            ..request()
        }
        .resolve(&model())
        .unwrap();
        assert_eq!(seeded.seed, 9);
        let edit = ImageRequest {
            image: Some(png(24, 16)),
            ..request()
        }
        .resolve(&model())
        .unwrap();
        assert_eq!((edit.width, edit.height), (24, 16), "an edit keeps its picture's size");
        assert_eq!(edit.edit.unwrap().strength, config::DEFAULT_IMAGE_STRENGTH);
    }

    #[test]
    fn every_bad_value_is_refused_naming_its_field() {
        let cases: Vec<(ImageRequest, &str)> = vec![
            (
                ImageRequest {
                    prompt: " ".into(),
                    ..request()
                },
                "prompt",
            ),
            (
                ImageRequest {
                    n: Some(0),
                    ..request()
                },
                "n",
            ),
            (
                ImageRequest {
                    n: Some(MAX_IMAGES_PER_REQUEST + 1),
                    ..request()
                },
                "n",
            ),
            (
                ImageRequest {
                    size: Some("500x512".into()),
                    ..request()
                },
                "size",
            ),
            (
                ImageRequest {
                    size: Some("4096x512".into()),
                    ..request()
                },
                "size",
            ),
            (
                ImageRequest {
                    size: Some("big".into()),
                    ..request()
                },
                "size",
            ),
            (
                ImageRequest {
                    steps: Some(0),
                    ..request()
                },
                "steps",
            ),
            (
                ImageRequest {
                    guidance_scale: Some(-1.0),
                    ..request()
                },
                "guidance_scale",
            ),
            (
                ImageRequest {
                    scheduler: Some("karras".into()),
                    ..request()
                },
                "scheduler",
            ),
            (
                ImageRequest {
                    output_format: Some("bmp".into()),
                    ..request()
                },
                "output_format",
            ),
            (
                ImageRequest {
                    partial_images: Some(4),
                    ..request()
                },
                "partial_images",
            ),
            (
                ImageRequest {
                    strength: Some(0.5),
                    ..request()
                },
                "strength",
            ),
            (
                ImageRequest {
                    mask: Some(png(8, 8)),
                    ..request()
                },
                "mask",
            ),
            (
                ImageRequest {
                    image: Some(b"not a picture".to_vec()),
                    ..request()
                },
                "image",
            ),
            (
                ImageRequest {
                    image: Some(png(16, 16)),
                    strength: Some(2.0),
                    ..request()
                },
                "strength",
            ),
            (
                ImageRequest {
                    image: Some(png(12, 16)),
                    ..request()
                },
                "image",
            ),
            (
                ImageRequest {
                    image: Some(png(16, 16)),
                    mask: Some(png(8, 8)),
                    ..request()
                },
                "mask",
            ),
            (
                ImageRequest {
                    image: Some(png(16, 16)),
                    size: Some("32x32".into()),
                    ..request()
                },
                "size",
            ),
        ];
        for (bad, field) in cases {
            let err = bad.clone().resolve(&model()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidRequest, "{bad:?}");
            assert_eq!(err.param.as_deref(), Some(field), "{bad:?}: {}", err.message);
        }
    }

    #[test]
    fn a_mask_repaints_its_transparent_pixels() {
        let mut mask = image::RgbaImage::new(2, 1);
        mask.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        mask.put_pixel(1, 0, image::Rgba([0, 0, 0, 255]));
        let mut bytes = std::io::Cursor::new(Vec::new());
        mask.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
        let edit = ImageRequest {
            image: Some(png(2, 1)),
            mask: Some(bytes.into_inner()),
            size: None,
            ..request()
        }
        .edit(&model())
        .unwrap()
        .unwrap();
        assert_eq!(&edit.mask.unwrap()[..], &[255, 0]);
    }
}
