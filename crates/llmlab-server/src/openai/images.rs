//! `/v1/images/generations` and `/v1/images/edits` in OpenAI's shape, for
//! every door that speaks it: the JSON body (or multipart fields) to a core
//! [`ImageRequest`], a result to OpenAI's answer and stream events.
//! llmlab's extensions: `negative_prompt`, `seed`, `steps`,
//! `guidance_scale`, `scheduler`, `strength`, `keep_alive`.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use llmlab_core::keep_alive::KeepAlive;
use llmlab_core::{Error, GeneratedImage, ImageRequest, ImageResult, Result};

/// The settings both routes share, as OpenAI clients send them. Fields
/// OpenAI defines that a local model has no use for (`quality`, `style`,
/// `user`, `background`, `moderation`) are accepted and ignored.
#[derive(Debug, Default, Deserialize)]
pub struct ImagesBody {
    #[serde(default)]
    pub model: String,
    pub prompt: Option<String>,
    pub n: Option<u32>,
    pub size: Option<String>,
    pub response_format: Option<String>,
    pub output_format: Option<String>,
    #[serde(default)]
    pub stream: bool,
    /// With `stream`: previews (0 to 3) sent while the images form.
    pub partial_images: Option<u32>,
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f32>,
    pub scheduler: Option<String>,
    pub strength: Option<f32>,
    pub keep_alive: Option<Value>,
    /// Edits (WebSocket and jobs): the picture and mask as base64 (or data
    /// URLs); HTTP edits send them as multipart files instead.
    pub image: Option<String>,
    pub mask: Option<String>,
}

/// How the answer goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageDelivery {
    pub stream: bool,
}

impl ImagesBody {
    /// The core request, or a 400 naming the field.
    pub fn into_request(self) -> Result<(ImageRequest, ImageDelivery)> {
        match self.response_format.as_deref() {
            None | Some("b64_json") => {}
            Some("url") => {
                return Err(Error::invalid_param(
                    "response_format",
                    "this server does not host image files: ask for 'b64_json'",
                ))
            }
            Some(other) => {
                return Err(Error::invalid_param(
                    "response_format",
                    format!("must be 'b64_json', got '{}'", llmlab_core::text::echo(other)),
                ))
            }
        }
        let image = self
            .image
            .as_deref()
            .map(|text| base64_field(text, "image"))
            .transpose()?;
        let mask = self
            .mask
            .as_deref()
            .map(|text| base64_field(text, "mask"))
            .transpose()?;
        let request = ImageRequest {
            model: self.model,
            prompt: self.prompt.unwrap_or_default(),
            negative_prompt: self.negative_prompt,
            n: self.n,
            size: self.size.filter(|s| s != "auto"),
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            seed: self.seed,
            scheduler: self.scheduler,
            image,
            mask,
            strength: self.strength,
            output_format: self.output_format,
            partial_images: self.partial_images,
            keep_alive: self.keep_alive.as_ref().map(KeepAlive::from_json).transpose()?,
        };
        Ok((request, ImageDelivery { stream: self.stream }))
    }
}

impl ImagesBody {
    /// An `images.edits` request (WebSocket frame, job): as
    /// [`Self::into_request`], and the picture is required.
    pub fn into_edit_request(self) -> Result<(ImageRequest, ImageDelivery)> {
        let (request, delivery) = self.into_request()?;
        if request.image.is_none() {
            return Err(Error::invalid_param("image", "an edit needs an 'image' (base64)"));
        }
        Ok((request, delivery))
    }
}

/// A picture sent as base64 text, bare or as a data URL.
fn base64_field(text: &str, field: &str) -> Result<Vec<u8>> {
    let payload = match text.split_once(";base64,") {
        Some((head, payload)) if head.starts_with("data:") => payload,
        _ => text,
    };
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim().as_bytes())
        .map_err(|e| Error::invalid_param(field, format!("'{field}' is not base64: {e}")))
}

/// Seconds since the epoch, for `created`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn b64(image: &GeneratedImage) -> String {
    base64::engine::general_purpose::STANDARD.encode(&image.bytes)
}

fn size_of(result: &ImageResult) -> String {
    result
        .images
        .first()
        .map_or_else(String::new, |i| format!("{}x{}", i.width, i.height))
}

/// The whole answer (`stream: false`).
pub fn images_json(result: &ImageResult, created: u64) -> Value {
    json!({
        "created": created,
        "data": result.images.iter().map(|image| json!({"b64_json": b64(image)})).collect::<Vec<_>>(),
        "output_format": result.images.first().map_or("png", |i| i.format.as_str()),
        "size": size_of(result),
        "model": result.model,
        "seed": result.seed,
        "steps": result.steps,
        "timings": {"generation_ms": result.generation_ms},
    })
}

/// A progress event of a streamed generation (llmlab's own type: OpenAI
/// streams only partial pictures).
pub fn progress_event(step: u32, steps: u32) -> Value {
    json!({"type": "image_generation.progress", "step": step, "steps": steps})
}

/// A preview of a streamed generation (OpenAI's `partial_image` event).
pub fn partial_event(index: u32, partial_index: u32, image: &GeneratedImage, created: u64) -> Value {
    json!({
        "type": "image_generation.partial_image",
        "b64_json": b64(image),
        "partial_image_index": partial_index,
        "index": index,
        "created_at": created,
        "size": format!("{}x{}", image.width, image.height),
        "output_format": image.format.as_str(),
    })
}

/// The final events of a streamed generation: one `completed` per image.
pub fn completed_events(result: &ImageResult, created: u64) -> Vec<Value> {
    result
        .images
        .iter()
        .enumerate()
        .map(|(index, image)| {
            json!({
                "type": "image_generation.completed",
                "b64_json": b64(image),
                "created_at": created,
                "size": format!("{}x{}", image.width, image.height),
                "output_format": image.format.as_str(),
                "index": index,
                "seed": result.seed,
                "model": result.model,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: Value) -> ImagesBody {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn openai_fields_and_extensions_reach_the_core_request() {
        let (request, delivery) = body(json!({
            "model": "sd", "prompt": "a cat", "n": 2, "size": "64x64", "response_format": "b64_json",
            "output_format": "jpeg", "stream": true, "quality": "hd", "negative_prompt": "dogs",
            "seed": 7, "steps": 3, "guidance_scale": 5.0, "scheduler": "euler_a",
            "image": "data:image/png;base64,AQID", "strength": 0.5
        }))
        .into_request()
        .unwrap();
        assert!(delivery.stream);
        assert_eq!(request.n, Some(2));
        assert_eq!(request.size.as_deref(), Some("64x64"));
        assert_eq!(request.image, Some(vec![1, 2, 3]));
        assert_eq!(request.negative_prompt.as_deref(), Some("dogs"));
        assert_eq!(request.scheduler.as_deref(), Some("euler_a"));
    }

    #[test]
    fn url_answers_and_bad_base64_are_refused_by_field() {
        let err = body(json!({"prompt": "x", "response_format": "url"}))
            .into_request()
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("response_format"));
        let err = body(json!({"prompt": "x", "mask": "@@"})).into_request().unwrap_err();
        assert_eq!(err.param.as_deref(), Some("mask"));
    }
}
