//! The types that travel between a pipeline and its engine thread: what
//! the crate learns about a loaded model, a prompt, and one generation job.
//! Their own file, so that the engine, the batcher, the sequences and the
//! pipeline all import them from here and none from another.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use llmlab_core::media::DecodedImage;
use llmlab_core::stream::{ProcessorChain, ReasoningFormat, ToolCallFormat};
use llmlab_core::{ChatEventSender, ResolvedParams};

use crate::control_text::ControlTexts;

/// What the rest of the crate learns about a model once it is loaded.
#[derive(Debug, Clone)]
pub(crate) struct ModelInfo {
    /// The registry's template, else the one in the GGUF file.
    pub chat_template: Option<String>,
    /// Registry setting, else detected from the template.
    pub reasoning_format: ReasoningFormat,
    pub tool_call_format: ToolCallFormat,
    pub bos_token: String,
    pub eos_token: String,
    /// Tokens one sequence may hold.
    pub context_size: u32,
    /// Control-token texts, escaped in client strings before rendering.
    pub control_texts: Arc<ControlTexts>,
    /// A projector is loaded: the model reads images.
    pub reads_images: bool,
}

/// A prompt and how its text may be read.
pub(crate) enum Prompt {
    /// A client's own text (plain completion): read as written, control
    /// tokens included, as every completion endpoint does.
    Raw(String),
    /// A rendered chat template whose client strings were escaped (see
    /// `control_text`): control tokens only where the template put them,
    /// and a placeholder where each of `images` goes.
    Rendered { text: String, images: Vec<DecodedImage> },
}

impl Prompt {
    /// The request field the prompt was made from (errors name it).
    pub fn request_field(&self) -> &'static str {
        match self {
            Self::Raw(_) => "prompt",
            Self::Rendered { .. } => "messages",
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Self::Raw(text) | Self::Rendered { text, .. } => text,
        }
    }
}

/// One generation request, as the engine thread sees it.
pub(crate) struct Job {
    pub prompt: Prompt,
    /// Validated, with every default resolved by the service.
    pub params: ResolvedParams,
    pub cancel: CancellationToken,
    pub events: ChatEventSender,
    pub span: tracing::Span,
    pub enqueued_at: Instant,
    /// Routes raw text into content, reasoning and tool calls (chat only).
    pub processor: Option<ProcessorChain>,
}
