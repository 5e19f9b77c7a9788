//! One small trait per capability. Backends implement them; the service and
//! the transports only ever see these traits.

use tokio_util::sync::CancellationToken;

use crate::{ChatStream, ResolvedChat, ResolvedCompletion, Result};

/// A loaded text-generation model.
///
/// It receives requests the service has validated and resolved (the
/// `Resolved*` types prove it): it neither validates them again nor fills
/// defaults. Both methods enqueue synchronously and return the stream at
/// once; errors found before generation starts (a prompt the template
/// cannot render, one longer than the context) are returned directly,
/// later ones arrive as a [`crate::ChatEvent::Error`]. Cancelling `cancel`,
/// or dropping the stream, ends generation within one decode step.
pub trait ChatPipeline: Send + Sync {
    /// Chat through the model's chat template.
    fn chat(&self, request: ResolvedChat, cancel: CancellationToken) -> Result<ChatStream>;

    /// Plain completion of a raw prompt (no template).
    fn complete(&self, request: ResolvedCompletion, cancel: CancellationToken) -> Result<ChatStream>;

    /// The exact prompt text `chat` would feed the model.
    fn render_prompt(&self, request: &ResolvedChat) -> Result<String>;
}

/// A loaded embedding model. Blocking: the service calls it on a blocking
/// thread.
pub trait EmbeddingPipeline: Send + Sync {
    /// Width of the vectors it makes.
    fn dimensions(&self) -> usize;

    /// The pooled vector of each input (not normalised) and the tokens read
    /// for it. An input longer than the model's window is split into windows
    /// combined by [`crate::embedding::combine_chunks`], or cut to the window
    /// when `truncate` is set; never cut silently.
    fn embed(
        &self,
        inputs: &[crate::embedding::EmbedInput],
        truncate: bool,
    ) -> Result<Vec<crate::embedding::RawEmbedding>>;
}

/// A loaded model of any kind, as the service's cache holds it.
/// A diffusion model: makes images from a prompt, optionally from a
/// starting picture and a mask.
pub trait ImagePipeline: Send + Sync {
    /// Generate `request.n` images (blocking: the service calls it on a
    /// blocking thread). `progress` hears of each finished denoising step,
    /// and of `request.partial_images` previews spread over the steps;
    /// between steps a fired `cancel` stops the generation
    /// with [`crate::Error::cancelled`]. One generation runs at a time per
    /// model; others wait, and past the model's `max_queue` are refused.
    fn generate(
        &self,
        request: &crate::ResolvedImageRequest,
        cancel: &CancellationToken,
        progress: &mut dyn FnMut(crate::ImageProgress),
    ) -> Result<Vec<crate::media::RgbImage>>;

    /// The sampling settings this model uses where a request sets none.
    fn defaults(&self) -> crate::ImageDefaults {
        crate::ImageDefaults::default()
    }
}

#[derive(Clone)]
pub enum LoadedPipeline {
    Chat(std::sync::Arc<dyn ChatPipeline>),
    Embedding(std::sync::Arc<dyn EmbeddingPipeline>),
    Image(std::sync::Arc<dyn ImagePipeline>),
}

impl std::fmt::Debug for LoadedPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Chat(_) => "LoadedPipeline::Chat",
            Self::Embedding(_) => "LoadedPipeline::Embedding",
            Self::Image(_) => "LoadedPipeline::Image",
        })
    }
}
