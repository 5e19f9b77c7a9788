//! Routing of a chat model's raw output text into content, reasoning and
//! tool calls.
//!
//! Models mark reasoning and tool calls with plain-text markers (`<think>`,
//! `<tool_call>`, Harmony's special tokens, ...). Text arrives a token at a
//! time and a marker may be cut anywhere, so every processor here is an
//! incremental state machine: it releases text as soon as the text can no
//! longer be part of a marker and holds back only what still might be.
//! Markup that turns out to be malformed is released as plain content, so no
//! text is ever lost to a parse error.

mod bare_json;
mod call_block;
mod call_object;
mod chain;
mod harmony;
mod hermes;
mod json_scan;
mod llama3;
mod markers;
mod mistral;
mod sink;
#[cfg(test)]
mod test_support;
mod think;
mod tool_parser;

use serde::{Deserialize, Serialize};

use crate::ChatEvent;

pub use chain::ProcessorChain;

/// One stage of output processing. Processors only produce `Content`,
/// `Reasoning` and `ToolCall` events.
pub trait StreamProcessor: Send {
    /// Feed the next piece of raw model text; returns the events it completes.
    fn push(&mut self, text: &str) -> Vec<ChatEvent>;
    /// End of generation: flush everything held back.
    fn finish(&mut self) -> Vec<ChatEvent>;
}

/// How a model marks its reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningFormat {
    /// No reasoning markup: everything is content.
    #[default]
    None,
    /// `<think>…</think>` (Qwen3, DeepSeek-R1 and their distills).
    ThinkTags,
    /// gpt-oss channels (`analysis` is reasoning).
    Harmony,
}

/// How a model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolCallFormat {
    /// No dedicated markup; only a bare JSON reply can be a call.
    #[default]
    None,
    /// `<tool_call>{json}</tool_call>` (Hermes, Qwen).
    Hermes,
    /// Optional `<|python_tag|>` then `{"name", "parameters"}` (Llama 3.x).
    Llama3,
    /// `[TOOL_CALLS]` followed by a JSON array or `name[ARGS]{json}`.
    Mistral,
    /// gpt-oss messages addressed `to=functions.NAME`.
    Harmony,
}

/// Guess both formats from a jinja chat template's source text.
pub fn detect_formats(template_source: &str) -> (ReasoningFormat, ToolCallFormat) {
    // Harmony templates also mention other markers in passing, so they win.
    if template_source.contains("<|channel|>") {
        return (ReasoningFormat::Harmony, ToolCallFormat::Harmony);
    }
    let reasoning = if template_source.contains("<think>") {
        ReasoningFormat::ThinkTags
    } else {
        ReasoningFormat::None
    };
    let tools = if template_source.contains("<tool_call>") {
        ToolCallFormat::Hermes
    } else if template_source.contains("[TOOL_CALLS]") {
        ToolCallFormat::Mistral
    } else if template_source.contains("<|python_tag|>") || template_source.contains("ipython") {
        ToolCallFormat::Llama3
    } else {
        ToolCallFormat::None
    };
    (reasoning, tools)
}

/// True when a rendered prompt leaves a think block open, as Qwen3 and
/// DeepSeek-R1-distill templates do: generation then starts inside reasoning.
pub fn prompt_opens_reasoning(rendered_prompt: &str) -> bool {
    rendered_prompt.trim_end().ends_with("<think>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_from_template_markers() {
        use ReasoningFormat as R;
        use ToolCallFormat as T;
        let cases = [
            (
                "{{ '<|start|>assistant<|channel|>final' }} <think>",
                (R::Harmony, T::Harmony),
            ),
            ("{{ '<think>\\n' }} <tool_call>", (R::ThinkTags, T::Hermes)),
            ("[TOOL_CALLS] {{ tools }}", (R::None, T::Mistral)),
            ("{{ '<|python_tag|>' }}", (R::None, T::Llama3)),
            ("{%- if message.role == 'ipython' %}", (R::None, T::Llama3)),
            ("{{ message.content }}", (R::None, T::None)),
        ];
        for (source, expected) in cases {
            assert_eq!(detect_formats(source), expected, "{source}");
        }
    }

    #[test]
    fn detects_prompts_that_open_a_think_block() {
        assert!(prompt_opens_reasoning("<|im_start|>assistant\n<think>\n"));
        assert!(prompt_opens_reasoning("Assistant: <think>"));
        assert!(!prompt_opens_reasoning(
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        ));
        assert!(!prompt_opens_reasoning("<|im_start|>assistant\n"));
    }

    #[test]
    fn formats_serialise_in_snake_case() {
        let text = serde_json::to_string(&(ReasoningFormat::ThinkTags, ToolCallFormat::Llama3)).unwrap();
        assert_eq!(text, r#"["think_tags","llama3"]"#);
        let back: ToolCallFormat = serde_json::from_str(r#""mistral""#).unwrap();
        assert_eq!(back, ToolCallFormat::Mistral);
    }
}
