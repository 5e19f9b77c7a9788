//! The image parts of a conversation, in the order the model reads them,
//! each with the request field that holds it (errors point there).

use super::{decode_image, parse_image_url, DecodedImage, ImageSource, RemoteImages};
use crate::config::ImageLimits;
use crate::registry::ModelSpec;
use crate::{ChatMessage, ContentPart, Error, MessageContent, Result};

/// One `image_url` part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePart<'a> {
    /// `messages[i].content[j].image_url.url`
    pub param: String,
    pub url: &'a str,
}

/// Every image part of `messages`, first message first.
pub fn image_parts(messages: &[ChatMessage]) -> Vec<ImagePart<'_>> {
    let mut found = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let MessageContent::Parts(parts) = &message.content else {
            continue;
        };
        for (j, part) in parts.iter().enumerate() {
            if let ContentPart::ImageUrl { image_url } = part {
                found.push(ImagePart {
                    param: format!("messages[{i}].content[{j}].image_url.url"),
                    url: &image_url.url,
                });
            }
        }
    }
    found
}

/// Check what can be checked before any byte is fetched or decoded: the
/// model reads images, there are not too many, each URL has a usable shape.
/// Answers the parts whose `http(s)` URLs must be fetched.
pub(crate) fn check_images<'a>(
    messages: &'a [ChatMessage],
    model: &ModelSpec,
    limits: &ImageLimits,
) -> Result<Vec<ImagePart<'a>>> {
    let parts = image_parts(messages);
    let Some(first) = parts.first() else {
        return Ok(Vec::new());
    };
    if !model.accepts_images() {
        return Err(Error::invalid_param(
            first.param.clone(),
            format!(
                "model '{}' does not read images (its registry entry names no mmproj projector); \
                 send text only or pick a vision model",
                model.id
            ),
        ));
    }
    if parts.len() > limits.max_images {
        return Err(Error::invalid_param(
            parts[limits.max_images].param.clone(),
            format!(
                "the request has {} images, more than the {} allowed",
                parts.len(),
                limits.max_images
            ),
        ));
    }
    let mut remote = Vec::new();
    for part in parts {
        match parse_image_url(part.url).map_err(|message| Error::invalid_param(part.param.clone(), message))? {
            ImageSource::Remote(_) => remote.push(part),
            ImageSource::Data { .. } => {}
        }
    }
    Ok(remote)
}

/// Decode every image part (after [`check_images`]), in order, and put
/// each image's id in its part's place, so the messages no longer carry
/// the encoded bytes.
pub(crate) fn decode_images(
    messages: &mut [ChatMessage],
    fetched: &RemoteImages,
    limits: &ImageLimits,
) -> Result<Vec<DecodedImage>> {
    let mut images = Vec::new();
    for (i, message) in messages.iter_mut().enumerate() {
        let MessageContent::Parts(parts) = &mut message.content else {
            continue;
        };
        for (j, part) in parts.iter_mut().enumerate() {
            let ContentPart::ImageUrl { image_url } = part else {
                continue;
            };
            let refuse =
                |message: String| Error::invalid_param(format!("messages[{i}].content[{j}].image_url.url"), message);
            let source = parse_image_url(&image_url.url).map_err(refuse)?;
            let bytes = source.bytes(fetched, limits.max_bytes).map_err(refuse)?;
            let image = decode_image(&bytes, limits).map_err(refuse)?;
            image_url.url = format!("{IMAGE_ID_SCHEME}{}", image.id);
            images.push(image);
        }
    }
    Ok(images)
}

/// What an image part's URL reads once its image is decoded: the image's
/// id, never its bytes.
pub const IMAGE_ID_SCHEME: &str = "llmlab-image:";
