//! A model's llama settings, taken once where a load starts and handed down
//! from there, so nothing deeper has to ask whether the spec is a llama one.

use llmlab_core::registry::{LlamaSettings, ModelSpec};
use llmlab_core::{Error, Result};

/// The llama.cpp settings of `spec`. The server's factory routes only llama
/// models to this crate, so another backend's spec here is a caller's
/// mistake: an error, not a panic.
pub(crate) fn llama_settings(spec: &ModelSpec) -> Result<&LlamaSettings> {
    spec.backend
        .llama()
        .ok_or_else(|| Error::internal(format!("model '{}' is not a llama model", spec.id)))
}
