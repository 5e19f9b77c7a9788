//! One model as the registry file writes it, before validation. Its own
//! file: the file reader and the environment overrides both work on it.

use serde::Deserialize;

use super::source::SourceEntry;
use super::spec::{BackendKind, ModelKind};
use crate::SamplingParams;

/// A model entry as written: flat, every setting beside `backend:` whichever
/// backend or kind it belongs to. Every optional field falls back to
/// [`crate::config`] when the registry is resolved, and `build.rs`
/// refuses the ones that do not apply to the model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModelEntry {
    pub id: String,
    pub kind: ModelKind,
    pub backend: BackendKind,
    pub path: String,
    pub context_size: Option<u32>,
    pub threads: Option<u32>,
    pub batch_size: Option<u32>,
    pub parallel: Option<u32>,
    pub gpu_layers: Option<u32>,
    /// The one GPU (by index among the GPUs) that holds the whole model;
    /// absent: layers spread over every GPU.
    pub main_gpu: Option<u32>,
    pub chat_template: Option<String>,
    pub chat_template_file: Option<String>,
    pub reasoning_format: Option<crate::stream::ReasoningFormat>,
    pub tool_call_format: Option<crate::stream::ToolCallFormat>,
    pub batch_invariant: Option<bool>,
    /// Vision: the projector GGUF (llama.cpp's mmproj) beside the model.
    pub mmproj: Option<String>,
    /// Vision: the most tokens one image may become (dynamic-resolution
    /// projectors; `None`: the projector's own limit).
    pub image_max_tokens: Option<u32>,
    /// Image models: read the folder as this pipeline (see
    /// [`super::ImageArchitecture`]).
    pub architecture: Option<super::ImageArchitecture>,
    /// Ollama-style duration: "5m", "0" (unload after each request), "-1" (never).
    pub keep_alive: Option<String>,
    #[serde(default)]
    pub pinned: bool,
    #[serde(default)]
    pub preload: bool,
    pub max_queue: Option<u32>,
    #[serde(default)]
    pub sampling: SamplingParams,
    #[serde(default)]
    pub guards: crate::guards::GuardSettings,
    #[serde(default)]
    pub breaker: crate::guards::BreakerSettings,
    #[serde(default)]
    pub load_retry: crate::guards::LoadRetrySettings,
    pub pooling: Option<crate::embedding::Pooling>,
    /// `Option` so that `matryoshka: false` on a chat model is refused like
    /// any other embedding setting there.
    pub matryoshka: Option<bool>,
    pub source: Option<SourceEntry>,
    pub description: Option<String>,
}
