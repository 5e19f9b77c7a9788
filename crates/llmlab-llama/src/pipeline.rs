//! `LlamaChatPipeline`: the `ChatPipeline` of a GGUF model.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use llmlab_core::pipeline::ChatPipeline;
use llmlab_core::registry::ModelSpec;
use llmlab_core::stream::{prompt_opens_reasoning, ProcessorChain};
use llmlab_core::{ChatStream, Error, ResolvedChat, ResolvedCompletion, ResolvedParams, Result};

use crate::engine::Engine;
use crate::job::{Job, ModelInfo, Prompt};
use crate::template::ChatTemplate;

pub struct LlamaChatPipeline {
    spec: ModelSpec,
    info: ModelInfo,
    template: Option<ChatTemplate>,
    engine: Engine,
}

impl std::fmt::Debug for LlamaChatPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaChatPipeline")
            .field("model", &self.spec.id)
            .finish_non_exhaustive()
    }
}

impl LlamaChatPipeline {
    /// Load the model (blocking: call from a blocking task or thread).
    /// The registry's template wins over the one in the GGUF file.
    /// Output formats come from the registry, else from the template text.
    pub fn load(spec: &ModelSpec) -> Result<Self> {
        let (engine, info) = Engine::start(spec)?;
        let template = info
            .chat_template
            .as_deref()
            .map(|source| {
                ChatTemplate::new(source, &info.bos_token, &info.eos_token)
                    .map(|t| t.with_control_texts(Arc::clone(&info.control_texts)))
            })
            .transpose()
            .map_err(|e| Error::unavailable(format!("model '{}': {}", spec.id, e.message)))?;
        tracing::info!(model = %spec.id, reasoning = ?info.reasoning_format, tools = ?info.tool_call_format, "output formats");
        Ok(Self {
            spec: spec.clone(),
            info,
            template,
            engine,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Tokens the context holds.
    pub fn context_size(&self) -> u32 {
        self.info.context_size
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    fn submit(
        &self,
        prompt: Prompt,
        params: ResolvedParams,
        processor: Option<ProcessorChain>,
        cancel: CancellationToken,
    ) -> Result<ChatStream> {
        let (events, stream) = ChatStream::channel();
        let span = tracing::info_span!("generate", model = %self.spec.id);
        tracing::debug!(parent: &span, prompt = %self.info.control_texts.display(prompt.text()), "prompt");
        self.engine.submit(Job {
            prompt,
            params,
            cancel,
            events,
            span,
            enqueued_at: Instant::now(),
            processor,
        })?;
        Ok(stream)
    }
}

/// Requests arrive validated and resolved by the service (see
/// `llmlab_core::ResolvedChat`): nothing here checks or defaults them.
impl ChatPipeline for LlamaChatPipeline {
    fn chat(&self, request: ResolvedChat, cancel: CancellationToken) -> Result<ChatStream> {
        let prompt = self.render_escaped(&request)?;
        // A grammar forces JSON from the first token, so a think block the
        // prompt opened can never be closed: route from content then.
        let starts_in_reasoning = request.params.json_schema.is_none() && prompt_opens_reasoning(&prompt);
        let processor = ProcessorChain::new(
            self.info.reasoning_format,
            self.info.tool_call_format,
            &request.tools,
            starts_in_reasoning,
        );
        let prompt = Prompt::Rendered {
            text: prompt,
            images: request.images,
        };
        self.submit(prompt, request.params, Some(processor), cancel)
    }

    fn complete(&self, request: ResolvedCompletion, cancel: CancellationToken) -> Result<ChatStream> {
        // Plain completion: the raw text is the answer, nothing is routed.
        self.submit(Prompt::Raw(request.prompt), request.params, None, cancel)
    }

    /// The prompt as the model reads it.
    fn render_prompt(&self, request: &ResolvedChat) -> Result<String> {
        Ok(self.info.control_texts.display(&self.render_escaped(request)?))
    }
}

impl LlamaChatPipeline {
    /// The token ids a chat request's prompt becomes (what the engine would
    /// decode; for tests and tooling), -1 for each cell an image takes.
    pub fn prompt_tokens(&self, request: &ResolvedChat) -> Result<Vec<i32>> {
        let text = self.render_escaped(request)?;
        self.engine.tokenize(Prompt::Rendered {
            text,
            images: request.images.clone(),
        })
    }

    /// A projector is loaded: chat messages may hold images.
    pub fn reads_images(&self) -> bool {
        self.info.reads_images
    }

    /// The rendered prompt, client strings escaped (see `control_text`).
    fn render_escaped(&self, request: &ResolvedChat) -> Result<String> {
        // The service refuses images for a model without a projector; this
        // only guards a pipeline built around it.
        if !request.images.is_empty() && !self.info.reads_images {
            return Err(Error::invalid_param(
                "messages",
                format!("model '{}' does not read images", self.spec.id),
            ));
        }
        let template = self.template.as_ref().ok_or_else(|| {
            Error::invalid_param(
                "model",
                format!(
                    "model '{}' has no chat template in its file and the registry names none \
                     (set chat_template or chat_template_file for it, or use plain completion)",
                    self.spec.id
                ),
            )
        })?;
        template.render(&request.messages, &request.tools)
    }
}
