//! The cheap check before a load: the file exists and its GGUF header and
//! tensor table read. A file that fails here fails every load, so the
//! service does not retry it down the degradation ladder.

use llama_cpp_2::gguf::GgufContext;

use llmlab_core::registry::ModelSpec;
use llmlab_core::{Error, Result};

pub fn check_model_file(spec: &ModelSpec) -> Result<()> {
    if !spec.path.is_file() {
        return Err(Error::unavailable(format!(
            "model file for '{}' not found at {} (run `llmlab pull {}`)",
            spec.id,
            spec.path.display(),
            spec.id
        )));
    }
    GgufContext::from_file(&spec.path).map(drop).ok_or_else(|| {
        Error::unavailable(format!(
            "model file for '{}' at {} is not a readable GGUF file (bad header or tensor table)",
            spec.id,
            spec.path.display()
        ))
    })
}
