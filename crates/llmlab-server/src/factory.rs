//! The pipeline factory of the `llmlab` binary: maps a model spec to the
//! backend compiled in.

use std::sync::Arc;

use llmlab_core::pipeline::ChatPipeline;
use llmlab_core::registry::{BackendKind, ModelSpec};
use llmlab_core::service::{MemoryEstimate, PipelineFactory};
use llmlab_core::{Error, Result};
use llmlab_llama::LlamaChatPipeline;

#[derive(Debug, Default)]
pub struct BackendFactory;

impl PipelineFactory for BackendFactory {
    fn load_chat(&self, spec: &ModelSpec) -> Result<Arc<dyn ChatPipeline>> {
        match spec.backend {
            BackendKind::Llama => Ok(Arc::new(LlamaChatPipeline::load(spec)?)),
            BackendKind::Candle => Err(Error::unavailable(format!(
                "model '{}': the candle backend cannot serve chat models",
                spec.id
            ))),
        }
    }

    fn preflight(&self, spec: &ModelSpec) -> Result<()> {
        match spec.backend {
            BackendKind::Llama => llmlab_llama::check_model_file(spec),
            BackendKind::Candle => Ok(()),
        }
    }

    fn estimate_memory(&self, spec: &ModelSpec) -> Result<MemoryEstimate> {
        match spec.backend {
            BackendKind::Llama => llmlab_llama::estimate_memory(spec),
            BackendKind::Candle => Ok(MemoryEstimate::ram(
                std::fs::metadata(&spec.path).map_or(0, |m| m.len()),
            )),
        }
    }
}
