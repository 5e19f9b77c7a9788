//! Encoded image bytes to the RGB pixels a projector reads: PNG, JPEG, GIF
//! (first frame) and WebP, in pure Rust, with the pixel count checked from
//! the header before anything is decoded.

use std::io::Cursor;
use std::sync::Arc;

use image::{imageops::FilterType, ImageFormat, ImageReader};
use sha2::{Digest, Sha256};

use crate::config::ImageLimits;

/// An image ready for a vision model: 8-bit RGB, row by row.
#[derive(Clone, PartialEq, Eq)]
pub struct DecodedImage {
    /// SHA-256 of the pixels and their size, in hex: the same picture sent
    /// twice has the same id, which lets the KV cache recognise it.
    pub id: String,
    pub width: u32,
    pub height: u32,
    pub rgb: Arc<[u8]>,
}

impl std::fmt::Debug for DecodedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DecodedImage({}x{}, {})",
            self.width,
            self.height,
            &self.id[..12.min(self.id.len())]
        )
    }
}

const FORMATS: [ImageFormat; 4] = [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Gif, ImageFormat::WebP];

/// Decode `bytes` under `limits`, scaled down so that its longer side is at
/// most `limits.max_side`. The error says what is wrong, for the client.
pub fn decode_image(bytes: &[u8], limits: &ImageLimits) -> Result<DecodedImage, String> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read the image: {e}"))?;
    let format = reader
        .format()
        .filter(|f| FORMATS.contains(f))
        .ok_or("the image is not PNG, JPEG, GIF or WebP")?;
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| format!("the {} image is damaged: {e}", format_name(format)))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err("the image has no pixels".into());
    }
    if pixels > limits.max_pixels {
        return Err(format!(
            "the image is {width}x{height} pixels, more than the {} allowed",
            limits.max_pixels
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder_limits = image::Limits::default();
    // Room for the largest allowed image at 16 bits per channel with alpha.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    reader.limits(decoder_limits);
    let mut picture = reader
        .decode()
        .map_err(|e| format!("the {} image does not decode: {e}", format_name(format)))?;
    let longer = width.max(height);
    if longer > limits.max_side {
        let scale = f64::from(limits.max_side) / f64::from(longer);
        let fit = |side: u32| ((f64::from(side) * scale).round() as u32).max(1);
        picture = picture.resize_exact(fit(width), fit(height), FilterType::Triangle);
    }
    let rgb = picture.into_rgb8();
    let (width, height) = rgb.dimensions();
    let mut hash = Sha256::new();
    hash.update(width.to_le_bytes());
    hash.update(height.to_le_bytes());
    hash.update(rgb.as_raw());
    Ok(DecodedImage {
        id: hex(&hash.finalize()),
        width,
        height,
        rgb: Arc::from(rgb.into_raw()),
    })
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Gif => "GIF",
        _ => "WebP",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A PNG of `width` x `height` whose pixels depend on `seed`.
    pub(crate) fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
        let picture = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x as u8).wrapping_add(seed), (y as u8).wrapping_mul(3), seed])
        });
        let mut out = Cursor::new(Vec::new());
        picture.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// PNG's CRC-32 (IEEE, reflected), bit by bit: only for test data.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn limits() -> ImageLimits {
        ImageLimits {
            max_bytes: 1 << 20,
            max_pixels: 10_000,
            max_images: 4,
            max_side: 64,
        }
    }

    #[test]
    fn a_png_decodes_to_rgb_with_a_content_id() {
        let image = decode_image(&png(20, 10, 1), &limits()).unwrap();
        assert_eq!((image.width, image.height, image.rgb.len()), (20, 10, 600));
        assert_eq!(image.id.len(), 64);
        assert_eq!(image.id, decode_image(&png(20, 10, 1), &limits()).unwrap().id);
        assert_ne!(image.id, decode_image(&png(20, 10, 2), &limits()).unwrap().id);
    }

    #[test]
    fn jpeg_gif_and_webp_decode_too() {
        let picture = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(16, 8, |x, y| {
            image::Rgb([x as u8 * 16, y as u8 * 32, 99])
        }));
        for format in [ImageFormat::Jpeg, ImageFormat::Gif, ImageFormat::WebP] {
            let mut encoded = Cursor::new(Vec::new());
            picture.write_to(&mut encoded, format).unwrap();
            let image = decode_image(encoded.get_ref(), &limits()).unwrap();
            assert_eq!((image.width, image.height), (16, 8), "{format:?}");
        }
    }

    #[test]
    fn a_huge_declared_size_is_refused_before_decoding() {
        // A PNG header declaring 100000 x 100000 pixels over a few bytes of
        // data: a decompression bomb if anything tried to allocate it.
        let mut bomb = png(1, 1, 0);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        // The IHDR chunk's CRC covers its type and data (bytes 12..29).
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_image(&bomb, &limits()).unwrap_err();
        assert!(err.contains("100000x100000"), "{err}");
    }

    #[test]
    fn large_images_are_scaled_down_to_the_longest_side() {
        let image = decode_image(&png(96, 48, 0), &limits()).unwrap();
        assert_eq!((image.width, image.height), (64, 32));
    }

    #[test]
    fn too_many_pixels_unknown_formats_and_damage_are_refused() {
        let err = decode_image(&png(200, 100, 0), &limits()).unwrap_err();
        assert!(err.contains("200x100") && err.contains("10000"), "{err}");
        let err = decode_image(b"%PDF-1.4 not an image", &limits()).unwrap_err();
        assert!(err.contains("not PNG, JPEG, GIF or WebP"), "{err}");
        let mut cut = png(20, 10, 0);
        cut.truncate(cut.len() / 2);
        let err = decode_image(&cut, &limits()).unwrap_err();
        assert!(err.contains("PNG"), "{err}");
    }
}
