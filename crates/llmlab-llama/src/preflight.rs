//! The cheap check before a load: the file exists and its GGUF header and
//! tensor table read. A file that fails here fails every load, so the
//! service does not retry it down the degradation ladder.

use llama_cpp_2::gguf::GgufContext;

use llmlab_core::registry::ModelSpec;
use llmlab_core::{Error, Result};

/// Server paths go to the log, never into answers: clients learn what is
/// wrong with the model, not where the server keeps its files.
pub fn check_model_file(spec: &ModelSpec) -> Result<()> {
    if !spec.path.is_file() {
        tracing::warn!(model = %spec.id, path = %spec.path.display(), "model file not found");
        return Err(Error::unavailable(format!(
            "the model file of '{}' is missing on the server (run `llmlab pull {}`)",
            spec.id, spec.id
        )));
    }
    GgufContext::from_file(&spec.path).map(drop).ok_or_else(|| {
        tracing::warn!(model = %spec.id, path = %spec.path.display(), "model file is not a readable GGUF file");
        Error::unavailable(format!(
            "the model file of '{}' is not a readable GGUF file (bad header or tensor table)",
            spec.id
        ))
    })?;
    crate::vision::check_projector(spec, crate::settings::llama_settings(spec)?)
}
