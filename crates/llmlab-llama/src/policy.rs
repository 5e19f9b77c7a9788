//! Special-token handling of one model, resolved to token ids once at load.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use llmlab_core::stream::{ReasoningFormat, ToolCallFormat};

/// Harmony's `<|end|>` closes one message (the analysis), not the reply.
const HARMONY_MESSAGE_END: &str = "<|end|>";

#[derive(Debug, Default)]
pub(crate) struct TokenPolicy {
    /// Render control tokens as text, so the stream processor sees them.
    pub render_special: bool,
    continue_after: Vec<LlamaToken>,
}

impl TokenPolicy {
    /// Harmony, Mistral (`[TOOL_CALLS]`, `[ARGS]`) and Llama 3
    /// (`<|python_tag|>`) write their markers as control tokens, which
    /// llama.cpp renders as nothing unless asked: the stream processor must
    /// see them. Harmony's `<|end|>` must also not stop generation before
    /// the final channel.
    pub fn new(model: &LlamaModel, reasoning: ReasoningFormat, tools: ToolCallFormat) -> Self {
        let harmony = reasoning == ReasoningFormat::Harmony || tools == ToolCallFormat::Harmony;
        let render_special = harmony || matches!(tools, ToolCallFormat::Mistral | ToolCallFormat::Llama3);
        let continue_after = if harmony {
            match model
                .vocab()
                .tokenize(HARMONY_MESSAGE_END.as_bytes(), false, true)
                .as_slice()
            {
                [single] => vec![*single],
                _ => Vec::new(),
            }
        } else {
            Vec::new()
        };
        Self {
            render_special,
            continue_after,
        }
    }

    pub fn ends_generation(&self, model: &LlamaModel, token: LlamaToken) -> bool {
        model.vocab().is_eog(token) && !self.continue_after.contains(&token)
    }
}
