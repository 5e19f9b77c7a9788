//! What a model's files say of themselves, read without loading the model
//! (for listings such as Ollama's `/api/show`). The backend reads them
//! ([`super::PipelineFactory::describe`]); the service runs that on a
//! blocking thread, since it opens the model's file.

use std::sync::Arc;

use serde::Serialize;

use super::Service;
use crate::{Error, Result};

/// Each field is `None` where the files do not say (or the backend does
/// not read them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModelFacts {
    /// The architecture the file names (`qwen2`, `gemma3`).
    pub architecture: Option<String>,
    /// The size the file gives itself (`0.5B`).
    pub parameter_size: Option<String>,
    /// How the weights are stored (`Q4_K_M`, `F16`).
    pub quantization: Option<String>,
    /// The context the model was trained for (the registry's
    /// `context_size` is what it runs with).
    pub trained_context: Option<u64>,
    /// The chat template it runs with: the registry's, else the file's.
    pub chat_template: Option<String>,
}

impl Service {
    /// The facts of the registry model `id`.
    pub async fn describe(&self, id: &str) -> Result<ModelFacts> {
        let spec = self.registry.require(id)?.clone();
        let factory = Arc::clone(&self.factory);
        tokio::task::spawn_blocking(move || factory.describe(&spec))
            .await
            .map_err(|e| Error::internal(format!("reading the model's facts failed: {e}")))
    }
}
