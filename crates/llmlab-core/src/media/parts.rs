//! The image parts of a conversation, in the order the model reads them,
//! each with the request field that holds it (errors point there).

use super::{decode_image, parse_image_url, DecodedImage, ImageSource, RemoteImages};
use crate::config::ImageLimits;
use crate::registry::ModelSpec;
use crate::{ChatMessage, ContentPart, Error, MessageContent, Result};

/// What an image part's URL reads once its image is decoded: the image's
/// id, never its bytes.
pub const IMAGE_ID_SCHEME: &str = "llmlab-image:";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::{ChatRequest, ErrorKind};

    fn model(extra: &str) -> ModelSpec {
        let text = format!("models:\n  - {{id: m, kind: chat, backend: llama, path: m.gguf{extra}}}\n");
        let registry = Registry::parse(
            &text,
            std::path::Path::new("r.yaml"),
            std::path::Path::new("/x"),
            |_| None,
        )
        .unwrap();
        registry.get("m").unwrap().clone()
    }

    fn request(urls: &[String]) -> ChatRequest {
        let mut parts = vec![ContentPart::Text { text: "look".into() }];
        parts.extend(urls.iter().map(|url| ContentPart::ImageUrl {
            image_url: crate::ImageUrl {
                url: url.clone(),
                detail: None,
            },
        }));
        let mut message = ChatMessage::user("");
        message.content = MessageContent::Parts(parts);
        ChatRequest {
            messages: vec![ChatMessage::system("be brief"), message],
            ..ChatRequest::default()
        }
    }

    fn png_url(seed: u8) -> String {
        use base64::Engine as _;
        let png = super::super::decode::tests::png(8, 8, seed);
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        )
    }

    #[test]
    fn images_resolve_to_pixels_and_ids_in_order() {
        let resolved = request(&[png_url(1), png_url(2)])
            .resolve(&model(", mmproj: p.gguf"))
            .unwrap();
        assert_eq!(resolved.images.len(), 2);
        assert_ne!(resolved.images[0].id, resolved.images[1].id);
        let MessageContent::Parts(parts) = &resolved.messages[1].content else {
            panic!()
        };
        let ContentPart::ImageUrl { image_url } = &parts[2] else {
            panic!()
        };
        assert_eq!(image_url.url, format!("{IMAGE_ID_SCHEME}{}", resolved.images[1].id));
    }

    #[test]
    fn a_model_without_a_projector_is_named_and_bad_parts_are_pointed_at() {
        let err = request(&[png_url(1)]).resolve(&model("")).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest);
        assert!(
            err.message.contains("'m'") && err.message.contains("mmproj"),
            "{}",
            err.message
        );
        assert_eq!(err.param.as_deref(), Some("messages[1].content[1].image_url.url"));

        let vision = model(", mmproj: p.gguf");
        let err = request(&[png_url(1), "data:image/png;base64,%%%".into()])
            .resolve(&vision)
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[1].content[2].image_url.url"));
        assert!(err.message.contains("base64"), "{}", err.message);

        let many: Vec<String> = (0..=crate::config::DEFAULT_MAX_IMAGES as u8).map(png_url).collect();
        let err = request(&many).resolve(&vision).unwrap_err();
        assert!(err.message.contains("more than the"), "{}", err.message);

        let remote = request(&["https://example.com/cat.png".into()]);
        assert_eq!(remote.image_urls_to_fetch(&vision).unwrap().len(), 1);
        let err = remote.resolve(&vision).unwrap_err();
        assert!(err.message.contains("--allow-image-urls"), "{}", err.message);
    }
}
