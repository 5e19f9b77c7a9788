//! The pipeline factory of the `llmlab` binary: maps a model spec (kind and
//! backend) to the backend compiled in. The only module that imports the
//! backend crates: commands and doors reach models through the core service.

use std::sync::Arc;

use llmlab_candle::{BertEmbeddingPipeline, DiffusionPipeline};
use llmlab_core::guards::LoadAttempt;
use llmlab_core::pipeline::LoadedPipeline;
use llmlab_core::registry::{BackendKind, ModelKind, ModelSpec};
use llmlab_core::service::{MemoryEstimate, ModelFacts, PipelineFactory};
use llmlab_core::{Error, Result};
use llmlab_llama::{LlamaChatPipeline, LlamaEmbeddingPipeline};

#[derive(Debug, Default)]
pub struct BackendFactory;

impl BackendFactory {
    /// Bytes of memory free now on the GPUs the backends can use (`None`:
    /// no GPU): what other processes hold is not ours to budget.
    pub fn gpu_memory_free() -> Option<u64> {
        llmlab_llama::gpu_memory_free()
    }
}

impl PipelineFactory for BackendFactory {
    fn load(&self, spec: &ModelSpec) -> Result<LoadedPipeline> {
        match (spec.kind, spec.backend.kind()) {
            (ModelKind::Chat, BackendKind::Llama) => Ok(LoadedPipeline::Chat(Arc::new(LlamaChatPipeline::load(spec)?))),
            (ModelKind::Embedding, BackendKind::Llama) => {
                Ok(LoadedPipeline::Embedding(Arc::new(LlamaEmbeddingPipeline::load(spec)?)))
            }
            (ModelKind::Embedding, BackendKind::Candle) => {
                Ok(LoadedPipeline::Embedding(Arc::new(BertEmbeddingPipeline::load(spec)?)))
            }
            (ModelKind::Image, BackendKind::Candle) => {
                Ok(LoadedPipeline::Image(Arc::new(DiffusionPipeline::load(spec)?)))
            }
            (kind, backend) => Err(Error::unavailable(format!(
                "model '{}': the {backend:?} backend cannot serve {} models",
                spec.id,
                kind.as_str()
            ))),
        }
    }

    fn preflight(&self, spec: &ModelSpec) -> Result<()> {
        match spec.backend.kind() {
            BackendKind::Llama => llmlab_llama::check_model_file(spec),
            BackendKind::Candle if spec.path.is_dir() => Ok(()),
            BackendKind::Candle => {
                tracing::warn!(model = %spec.id, path = %spec.path.display(), "model folder not found");
                Err(Error::unavailable(format!(
                    "the model folder of '{}' is missing on the server (run `llmlab pull {}`)",
                    spec.id, spec.id
                )))
            }
        }
    }

    fn estimate_memory(&self, spec: &ModelSpec) -> Result<MemoryEstimate> {
        match spec.backend.kind() {
            BackendKind::Llama => llmlab_llama::estimate_memory(spec),
            // Weights are read into memory once, plus activations for a
            // batch; an image model's on the GPU when candle has one.
            BackendKind::Candle if spec.kind == ModelKind::Image && llmlab_candle::images_on_gpu() => {
                Ok(MemoryEstimate {
                    ram: CANDLE_MARGIN_BYTES,
                    vram: folder_bytes(&spec.path) + IMAGE_ACTIVATION_BYTES,
                })
            }
            BackendKind::Candle => Ok(MemoryEstimate::ram(folder_bytes(&spec.path) + CANDLE_MARGIN_BYTES)),
        }
    }

    fn describe(&self, spec: &ModelSpec) -> ModelFacts {
        match spec.backend.kind() {
            BackendKind::Llama => llmlab_llama::describe(spec),
            BackendKind::Candle => ModelFacts::default(),
        }
    }

    fn degrade(&self, configured: &ModelSpec, step: usize) -> Option<LoadAttempt> {
        match configured.backend.kind() {
            BackendKind::Llama => llmlab_llama::degrade(configured, step),
            // Nothing of a BERT encoder's memory is a setting to give up:
            // a retry loads the configuration again, after the back-off.
            BackendKind::Candle => Some(LoadAttempt::as_configured(configured)),
        }
    }
}

/// Activations of one batch of a small encoder, with room to spare.
const CANDLE_MARGIN_BYTES: u64 = 256 * 1024 * 1024;
/// A diffusion network's activations on a GPU at 1024x1024 (attention runs
/// in bands of at most 64 MiB of scores), with room to spare.
const IMAGE_ACTIVATION_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Bytes of the files in a model folder and its sub-folders (a diffusers
/// folder keeps each network in its own), or of the file itself.
fn folder_bytes(path: &std::path::Path) -> u64 {
    match std::fs::read_dir(path) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|entry| match entry.file_type() {
                Ok(kind) if kind.is_dir() => folder_bytes(&entry.path()),
                Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
                _ => 0,
            })
            .sum(),
        Err(_) => std::fs::metadata(path).map_or(0, |m| m.len()),
    }
}

#[cfg(test)]
mod tests {
    use llmlab_core::guards::LoadAttempt;
    use llmlab_core::registry::Registry;
    use llmlab_core::service::PipelineFactory;

    use super::BackendFactory;

    #[test]
    fn llama_models_retry_down_their_ladder_and_candle_models_as_configured() {
        let text = "models:\n  - {id: chat, kind: chat, backend: llama, path: c.gguf}\n  \
                    - {id: mini, kind: embedding, backend: candle, path: mini}\n";
        let registry = Registry::parse(text, "t.yaml".as_ref(), "/m".as_ref(), |_| None).unwrap();
        let factory = BackendFactory;
        let chat = registry.require("chat").unwrap();
        let retry = factory.degrade(chat, 1).unwrap();
        assert_eq!(retry.degraded.as_deref(), Some("context 2048"));
        assert_eq!(retry.spec.backend.llama().unwrap().context_size, 2048);
        let mini = registry.require("mini").unwrap();
        assert_eq!(factory.degrade(mini, 3), Some(LoadAttempt::as_configured(mini)));
    }
}
