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
            disable_batch_dependent_kernels();
            send_logs_to_tracing(LogOptions::default());
            LlamaBackend::init().map_err(|e| format!("llama.cpp backend failed to initialise: {e}"))
        })
        .as_ref()
        .map_err(|e| llmlab_core::Error::internal(e.clone()))
}

/// ggml's tiled CPU matmul takes over when a batch has enough rows, so a
/// row's numbers would depend on how many other rows share its batch, and a
/// greedy answer could change when another request runs at the same time.
/// The per-row kernels give every row the same result at any batch size.
/// (Read by ggml once, at its first matmul; an explicit setting wins.)
fn disable_batch_dependent_kernels() {
    if llmlab_core::config::batch_invariant() && std::env::var_os("GGML_CPU_TILED_MM").is_none() {
        std::env::set_var("GGML_CPU_TILED_MM", "0");
    }
}
