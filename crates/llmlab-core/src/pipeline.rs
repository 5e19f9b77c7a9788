//! One small trait per capability. Backends implement them; the service and
//! the transports only ever see these traits.

use tokio_util::sync::CancellationToken;

use crate::{ChatRequest, ChatStream, CompletionRequest, Result};

/// A loaded text-generation model.
///
/// Both methods validate and enqueue synchronously and return the stream at
/// once; errors found before generation starts are returned directly, later
/// ones arrive as a [`crate::ChatEvent::Error`]. Cancelling `cancel`, or
/// dropping the stream, ends generation within one decode step.
pub trait ChatPipeline: Send + Sync {
    /// Chat through the model's chat template.
    fn chat(&self, request: ChatRequest, cancel: CancellationToken) -> Result<ChatStream>;

    /// Plain completion of a raw prompt (no template).
    fn complete(&self, request: CompletionRequest, cancel: CancellationToken) -> Result<ChatStream>;

    /// The exact prompt text `chat` would feed the model.
    fn render_prompt(&self, request: &ChatRequest) -> Result<String>;
}
