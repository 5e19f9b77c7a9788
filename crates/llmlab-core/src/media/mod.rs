//! Images in chat messages, for vision models: where an image part's bytes
//! come from (`source`), and how they become the RGB pixels a projector
//! reads (`decode`), under [`crate::config::ImageLimits`].
//!
//! Decoding happens here, in pure Rust, once per request, during
//! resolution: a pipeline receives pixels and a content id, never a URL or
//! encoded bytes (llama.cpp's own loader reads many formats and may spawn
//! ffmpeg; untrusted bytes must not reach it).

mod decode;
mod encode;
mod parts;
mod source;

pub use decode::{decode_image, DecodedImage};
pub use encode::{encode_image, RgbImage};
pub(crate) use parts::{check_images, decode_images};
pub use parts::{image_parts, ImagePart, IMAGE_ID_SCHEME};
pub use source::{parse_image_url, ImageFetcher, ImageSource, RemoteImages};
