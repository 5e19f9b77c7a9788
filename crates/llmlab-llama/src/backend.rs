//! The process-wide llama.cpp backend. `LlamaBackend::init()` succeeds only
//! once per process, so it lives in a `OnceLock` shared by every model.

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::{send_logs_to_tracing, LogOptions};

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// The backend, initialised on first use; llama.cpp's own logs go to
/// `tracing` (target `llama_cpp_2`) instead of stderr.
pub(crate) fn backend() -> Result<&'static LlamaBackend, llmlab_core::Error> {
    BACKEND
        .get_or_init(|| {
            send_logs_to_tracing(LogOptions::default());
            LlamaBackend::init().map_err(|e| format!("llama.cpp backend failed to initialise: {e}"))
        })
        .as_ref()
        .map_err(|e| llmlab_core::Error::internal(e.clone()))
}
