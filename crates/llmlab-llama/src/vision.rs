//! A chat model's projector (llama.cpp's mtmd): it turns decoded images
//! into the embeddings the text model reads. Lives on the engine thread
//! beside the context it evaluates into, and is dropped before the model.
//!
//! Only RGB pixels reach mtmd (`MtmdBitmap::from_image_data`): images are
//! decoded by llmlab-core under its limits, and mtmd's own file loader
//! (which reads many formats and may call ffmpeg) is never used. mtmd sees
//! no client text either: each image is tokenized alone with its marker,
//! and the text around it is tokenized by the engine with control text
//! escaped as for every prompt.

use std::ffi::CString;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::gguf::GgufContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::mtmd::{
    MtmdBitmap, MtmdContext, MtmdContextParams, MtmdInputChunkType, MtmdInputChunks, MtmdInputText,
};

use llmlab_core::media::DecodedImage;
use llmlab_core::registry::{LlamaSettings, ModelSpec};
use llmlab_core::{config, Error, Result};

use crate::cells::MediaUnit;

pub(crate) struct Vision {
    ctx: MtmdContext,
    marker: String,
    /// The largest number of embeddings one image becomes.
    largest_image: usize,
}

impl Vision {
    /// Load `settings.mmproj` for `model`, and refuse a configuration that
    /// would abort llama.cpp later.
    pub fn load(model: &LlamaModel, spec: &ModelSpec, settings: &LlamaSettings) -> Result<Option<Self>> {
        let Some(path) = &settings.mmproj else {
            return Ok(None);
        };
        let refuse = |why: String| Error::unavailable(format!("model '{}': {why}", spec.id));
        let marker = format!("<__llmlab_media_{}__>", crate::control_text::process_key());
        let params = MtmdContextParams {
            use_gpu: settings.gpu_layers.is_some_and(|n| n > 0),
            print_timings: false,
            n_threads: i32::try_from(settings.threads).unwrap_or(i32::MAX),
            media_marker: CString::new(marker.clone()).map_err(|e| Error::internal(e.to_string()))?,
            image_max_tokens: settings
                .image_max_tokens
                .map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX)),
            ..MtmdContextParams::default()
        };
        let path_text = path.to_string_lossy();
        let ctx = MtmdContext::init_from_file(&path_text, model, &params).map_err(|e| {
            tracing::warn!(model = %spec.id, path = %path.display(), error = %e, "mtmd refused the projector");
            refuse("llama.cpp could not load its projector (mmproj); the server log says why".into())
        })?;
        if !ctx.support_vision() {
            return Err(refuse("its projector (mmproj) has no vision encoder".into()));
        }
        let mut vision = Self {
            ctx,
            marker,
            largest_image: 0,
        };
        vision.largest_image = vision.probe_largest_image()?;
        // A projector with attention across the whole image needs every
        // embedding of an image in one micro-batch; llama.cpp aborts the
        // process otherwise.
        if vision.ctx.decode_use_non_causal() && vision.largest_image > settings.batch_size as usize {
            return Err(refuse(format!(
                "its projector needs each image in one batch ({} embeddings per image, attended together), \
                 but batch_size is {}: set batch_size to at least {}",
                vision.largest_image, settings.batch_size, vision.largest_image
            )));
        }
        tracing::info!(
            model = %spec.id,
            largest_image = vision.largest_image,
            non_causal = vision.ctx.decode_use_non_causal(),
            mrope = vision.ctx.decode_use_mrope(),
            "vision projector ready"
        );
        Ok(Some(vision))
    }

    /// Embeddings of the largest image a request may bring (a square at
    /// the size core scales images down to): dynamic-resolution projectors
    /// give big images more.
    fn probe_largest_image(&self) -> Result<usize> {
        let side = config::image_limits().max_side.min(4096);
        let gray = vec![128u8; side as usize * side as usize * 3];
        let chunks = self.tokenize_pixels(side, side, &gray, "probe")?;
        Ok((0..chunks.len())
            .filter_map(|i| chunks.get(i))
            .filter(|chunk| chunk.chunk_type() == MtmdInputChunkType::Image)
            .map(|chunk| chunk.n_tokens())
            .max()
            .unwrap_or(0))
    }

    /// The image as mtmd's chunks: its embeddings' slot and the projector's
    /// own marker text around them.
    pub fn tokenize(&self, image: &DecodedImage) -> Result<MtmdInputChunks> {
        self.tokenize_pixels(image.width, image.height, &image.rgb, &image.id)
    }

    fn tokenize_pixels(&self, width: u32, height: u32, rgb: &[u8], id: &str) -> Result<MtmdInputChunks> {
        let mut bitmap = MtmdBitmap::from_image_data(width, height, rgb)
            .map_err(|e| Error::internal(format!("cannot hand an image to the projector: {e}")))?;
        bitmap
            .set_id(id)
            .map_err(|e| Error::internal(format!("bad image id: {e}")))?;
        let text = MtmdInputText {
            text: self.marker.clone(),
            add_special: false,
            parse_special: true,
        };
        self.ctx
            .tokenize(text, &[&bitmap])
            .map_err(|e| Error::internal(format!("the projector could not prepare an image: {e}")))
    }

    /// Evaluate one image into sequence `seq` from position `position`
    /// (its own llama_decode calls, `n_batch` embeddings at a time).
    pub fn evaluate(
        &mut self,
        unit: &MediaUnit,
        llama: &mut LlamaContext<'_>,
        position: i32,
        seq: i32,
        n_batch: i32,
    ) -> Result<()> {
        unit.chunks
            .eval_chunks(&mut self.ctx, llama, position, seq, n_batch, false)
            .map(drop)
            .map_err(|e| Error::internal(format!("evaluating an image failed: {e}")))
    }
}

/// Before any load: the projector file reads as GGUF, and its output width
/// (when it writes one) is the text model's embedding width. mtmd itself
/// refuses a mismatch, but only says why in its log.
pub(crate) fn check_projector(spec: &ModelSpec, settings: &LlamaSettings) -> Result<()> {
    let Some(path) = &settings.mmproj else {
        return Ok(());
    };
    let refuse = |why: String| Error::unavailable(format!("model '{}': {why}", spec.id));
    if !path.is_file() {
        tracing::warn!(model = %spec.id, path = %path.display(), "projector file not found");
        return Err(refuse("its projector file (mmproj) is missing on the server".into()));
    }
    let projector = GgufContext::from_file(path)
        .ok_or_else(|| refuse("its projector file (mmproj) is not a readable GGUF file".into()))?;
    let Some(width) = u32_value(&projector, "clip.vision.projection_dim") else {
        return Ok(());
    };
    let text_model = GgufContext::from_file(&spec.path);
    let text_width = text_model.as_ref().and_then(|gguf| {
        let arch = crate::memory::string(gguf, "general.architecture")?.to_owned();
        u32_value(gguf, &format!("{arch}.embedding_length"))
    });
    match text_width {
        Some(text_width) if text_width != width => Err(refuse(format!(
            "its projector (mmproj) makes embeddings {width} wide, but the model reads {text_width}: \
             the projector belongs to another model"
        ))),
        _ => Ok(()),
    }
}

fn u32_value(gguf: &GgufContext, key: &str) -> Option<u32> {
    crate::memory::number(gguf, key).and_then(|n| u32::try_from(n).ok())
}
