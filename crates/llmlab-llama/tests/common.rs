//! Shared set-up for tests on real GGUF models: the registry of the repo,
//! resolved against the models folder, and one loaded pipeline per model
//! for the whole test binary (loading is slow, and two models decoding at
//! once on a small machine would measure nothing).

#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use llmlab_core::config;
use llmlab_core::pipeline::ChatPipeline;
use llmlab_core::registry::{ModelSpec, Registry};
use llmlab_core::{ChatRequest, ChatStream, CompletionRequest, Result};
use llmlab_llama::LlamaChatPipeline;

pub fn spec(id: &str) -> ModelSpec {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/models.yaml");
    let registry = Registry::load(&file, &config::models_dir()).expect("registry loads");
    let spec = registry.require(id).expect("model in registry").clone();
    assert!(
        spec.path.is_file(),
        "model file {} is missing: run `cargo run -p llmlab-server -- pull {id}` (scripts/test.sh does)",
        spec.path.display()
    );
    spec
}

/// The one loaded instance of `id` in this test binary.
pub fn pipeline(cell: &'static OnceLock<LlamaChatPipeline>, id: &str) -> &'static LlamaChatPipeline {
    cell.get_or_init(|| LlamaChatPipeline::load(&spec(id)).expect("model loads"))
}

/// Tests of one binary share one engine, which runs requests one at a time
/// anyway; taking this lock keeps each test's requests back to back, so
/// tests about the KV cache see their own previous request.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The service's part, for tests that drive a pipeline directly: validate
/// and resolve a request against the pipeline's model, as `Service` does
/// before it hands anything to a pipeline.
pub trait ResolveFirst {
    fn chat_request(&self, request: ChatRequest, cancel: CancellationToken) -> Result<ChatStream>;
    fn complete_request(&self, request: CompletionRequest, cancel: CancellationToken) -> Result<ChatStream>;
    fn render_request(&self, request: &ChatRequest) -> Result<String>;
    fn tokens_of(&self, request: &ChatRequest) -> Result<Vec<i32>>;
}

impl ResolveFirst for LlamaChatPipeline {
    fn chat_request(&self, request: ChatRequest, cancel: CancellationToken) -> Result<ChatStream> {
        self.chat(request.resolve(self.spec())?, cancel)
    }

    fn complete_request(&self, request: CompletionRequest, cancel: CancellationToken) -> Result<ChatStream> {
        self.complete(request.resolve(self.spec())?, cancel)
    }

    fn render_request(&self, request: &ChatRequest) -> Result<String> {
        self.render_prompt(&request.clone().resolve(self.spec())?)
    }

    fn tokens_of(&self, request: &ChatRequest) -> Result<Vec<i32>> {
        self.prompt_tokens(&request.clone().resolve(self.spec())?)
    }
}
