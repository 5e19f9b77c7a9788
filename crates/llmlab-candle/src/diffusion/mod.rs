//! Stable Diffusion (1.x and 2.x-shaped UNets with a CLIP text encoder) on
//! candle, from a diffusers folder: text-to-image, image-to-image and
//! inpainting behind core's `ImagePipeline`.
//!
//! `models.rs` loads a folder (its configs through `configs.rs`, its CLIP
//! tokenizer through `clip_tokenizer.rs`, its text encoder, UNet and VAE
//! decoder as our own `text_encoder.rs`, `unet/` and `vae_decoder.rs`,
//! built from the fast CPU `layers/`);
//! `sampler.rs` runs one generation; `noise.rs` makes the seeded starting
//! noise. One generation
//! runs at a time per model (a lock); callers past `max_queue` waiting
//! are refused.

mod clip_tokenizer;
mod configs;
mod latent_encoder;
mod layers;
mod models;
mod noise;
mod sampler;
mod text_encoder;
mod unet;
mod vae_decoder;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use llmlab_core::media::RgbImage;
use llmlab_core::pipeline::ImagePipeline;
use llmlab_core::registry::ModelSpec;
use llmlab_core::{Error, ErrorKind, ImageProgress, ResolvedImageRequest, Result};

use models::Models;

pub struct DiffusionPipeline {
    id: String,
    models: Mutex<Models>,
    /// Generations waiting for the lock.
    waiting: AtomicUsize,
    max_queue: usize,
}

impl std::fmt::Debug for DiffusionPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffusionPipeline")
            .field("model", &self.id)
            .finish_non_exhaustive()
    }
}

impl DiffusionPipeline {
    /// Load the diffusers folder at `spec.path` (blocking).
    pub fn load(spec: &ModelSpec) -> Result<Self> {
        let started = std::time::Instant::now();
        let architecture = spec.backend.candle().and_then(|settings| settings.architecture);
        let models = Models::load(&spec.path, architecture).map_err(|why| {
            tracing::warn!(model = %spec.id, path = %spec.path.display(), %why, "image model does not load");
            Error::unavailable(format!("model '{}' does not load: {why}", spec.id))
        })?;
        tracing::info!(model = %spec.id, load_ms = started.elapsed().as_millis() as u64, "image model loaded");
        Ok(Self {
            id: spec.id.clone(),
            models: Mutex::new(models),
            waiting: AtomicUsize::new(0),
            max_queue: spec.max_queue as usize,
        })
    }
}

impl ImagePipeline for DiffusionPipeline {
    fn generate(
        &self,
        request: &ResolvedImageRequest,
        cancel: &CancellationToken,
        progress: &mut dyn FnMut(ImageProgress),
    ) -> Result<Vec<RgbImage>> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::new(
                ErrorKind::Overloaded,
                format!(
                    "model '{}' has {} generations waiting; try again later",
                    self.id, self.max_queue
                ),
            )
            .with_retry_after(1));
        }
        let models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        if cancel.is_cancelled() {
            return Err(Error::cancelled());
        }
        // candle panics on some shapes instead of erring: a panic fails
        // this generation, never the process.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sampler::generate(&models, request, cancel, progress)
        }))
        .unwrap_or_else(|_| Err(Error::internal("image generation failed unexpectedly")))
    }
}
