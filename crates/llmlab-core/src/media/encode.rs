//! Generated pixels to the bytes a client asked for (PNG, JPEG or WebP).

use std::io::Cursor;

use image::{ImageFormat, RgbImage as Pixels};

use crate::{Error, OutputFormat, Result};

/// 8-bit RGB pixels, row by row: what an image pipeline makes.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

/// Encode `image` (lossless PNG and WebP; JPEG at quality 90).
pub fn encode_image(image: &RgbImage, format: OutputFormat) -> Result<Vec<u8>> {
    let pixels = Pixels::from_raw(image.width, image.height, image.rgb.clone())
        .ok_or_else(|| Error::internal("a generated image has the wrong number of pixels"))?;
    let mut out = Cursor::new(Vec::new());
    let written = match format {
        OutputFormat::Png => pixels.write_to(&mut out, ImageFormat::Png),
        OutputFormat::Webp => pixels.write_to(&mut out, ImageFormat::WebP),
        OutputFormat::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&pixels),
    };
    written.map_err(|e| Error::internal(format!("cannot encode the image: {e}")))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ImageLimits;
    use crate::media::decode_image;

    #[test]
    fn every_output_format_decodes_back_and_png_is_exact() {
        let image = RgbImage {
            width: 8,
            height: 4,
            rgb: (0..96).map(|i| (i * 2) as u8).collect(),
        };
        let limits = ImageLimits {
            max_bytes: 1 << 20,
            max_pixels: 1 << 20,
            max_images: 1,
            max_side: 64,
        };
        for format in [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp] {
            let bytes = encode_image(&image, format).unwrap();
            let back = decode_image(&bytes, &limits).unwrap();
            assert_eq!((back.width, back.height), (8, 4), "{format:?}");
            if format != OutputFormat::Jpeg {
                assert_eq!(&back.rgb[..], &image.rgb[..], "{format:?} is lossless");
            }
        }
    }
}
