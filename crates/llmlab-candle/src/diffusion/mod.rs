//! Image generation on candle from a diffusers folder: text-to-image,
//! image-to-image and inpainting behind core's `ImagePipeline`, for two
//! families of models.
//!
//! `architecture.rs` decides what a folder is; `components.rs` reads what
//! every family shares (configs through `configs.rs`, CLIP towers from
//! `clip_tokenizer.rs` and our own `text_encoder.rs`, the VAE of
//! `vae.rs`). The UNet family (SD 1.x/2.x, SDXL): `models.rs` loads our
//! own `unet/` built from the fast CPU `layers/`, `sampler.rs` runs it.
//! The rectified-flow family (SD3, Flux): `flow/`. `pictures.rs` holds
//! what both samplers do around their loops; `noise.rs` makes the seeded
//! starting noise. One generation runs at a time per model (a lock);
//! callers past `max_queue` waiting are refused.

mod architecture;
mod clip_tokenizer;
mod components;
mod configs;
mod flow;
mod latent_encoder;
mod layers;
mod models;
mod noise;
mod pictures;
mod sampler;
mod text_encoder;
mod unet;
mod vae;
mod vae_decoder;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use llmlab_core::media::RgbImage;
use llmlab_core::pipeline::ImagePipeline;
use llmlab_core::registry::{ImageArchitecture, ModelSpec};
use llmlab_core::{Error, ErrorKind, ImageDefaults, ImageProgress, ResolvedImageRequest, Result};

use components::Folder;
use flow::FlowModels;
use models::Models;

/// A loaded model of either family.
#[allow(clippy::large_enum_variant)] // one per loaded model, never copied
enum Networks {
    Unet(Models),
    Flow(FlowModels),
}

impl Networks {
    fn load(path: &std::path::Path, named: Option<ImageArchitecture>) -> std::result::Result<Self, String> {
        let folder = Folder {
            path,
            device: crate::device::compute_device(),
        };
        let detected = architecture::detect(&folder, named)?;
        match detected.architecture {
            ImageArchitecture::StableDiffusion | ImageArchitecture::StableDiffusionXl => {
                Models::load(&folder, &detected).map(Networks::Unet)
            }
            ImageArchitecture::StableDiffusion3 | ImageArchitecture::Flux => {
                FlowModels::load(&folder, &detected).map(Networks::Flow)
            }
        }
    }
}

pub struct DiffusionPipeline {
    id: String,
    models: Mutex<Networks>,
    defaults: ImageDefaults,
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
        let models = Networks::load(&spec.path, architecture).map_err(|why| {
            tracing::warn!(model = %spec.id, path = %spec.path.display(), %why, "image model does not load");
            Error::unavailable(format!("model '{}' does not load: {why}", spec.id))
        })?;
        tracing::info!(model = %spec.id, load_ms = started.elapsed().as_millis() as u64, "image model loaded");
        let defaults = match &models {
            Networks::Unet(_) => ImageDefaults::default(),
            Networks::Flow(flow) => flow.defaults(),
        };
        Ok(Self {
            id: spec.id.clone(),
            models: Mutex::new(models),
            defaults,
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
        let _flushing = crate::denormals::flush_while_computing();
        // candle panics on some shapes instead of erring: a panic fails
        // this generation, never the process.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &*models {
            Networks::Unet(unet) => sampler::generate(unet, request, cancel, progress),
            Networks::Flow(flow) => flow::generate(flow, request, cancel, progress),
        }))
        .unwrap_or_else(|_| Err(Error::internal("image generation failed unexpectedly")))
    }

    fn defaults(&self) -> ImageDefaults {
        self.defaults
    }
}
