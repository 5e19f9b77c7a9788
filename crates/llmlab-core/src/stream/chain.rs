//! The processors of one request, in order: reasoning first (it decides what
//! is content at all), then tool calls within the content.

use super::harmony::HarmonyProcessor;
use super::think::ThinkTagRouter;
use super::tool_parser::ToolCallParser;
use super::{ReasoningFormat, StreamProcessor, ToolCallFormat};
use crate::{ChatEvent, ToolDefinition};

/// Turns the raw text of one generation into content, reasoning and tool
/// call events.
pub struct ProcessorChain {
    first: Box<dyn StreamProcessor>,
    /// Present only when the request declared tools.
    tools: Option<ToolCallParser>,
    /// Both stages number their calls from 0; the reply numbers them in
    /// order of appearance. Position = index in the reply, value = (stage,
    /// stage's index).
    call_indices: Vec<(u8, u32)>,
}

impl std::fmt::Debug for ProcessorChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorChain")
            .field("tools", &self.tools.is_some())
            .field("calls", &self.call_indices.len())
            .finish_non_exhaustive()
    }
}

impl ProcessorChain {
    /// `starts_in_reasoning` (see `prompt_opens_reasoning`) only matters for
    /// think tags. Harmony covers reasoning and tool calls in one processor,
    /// so either format being Harmony selects it.
    pub fn new(
        reasoning: ReasoningFormat,
        tools_format: ToolCallFormat,
        tools: &[ToolDefinition],
        starts_in_reasoning: bool,
    ) -> Self {
        let has_tools = !tools.is_empty();
        let first: Box<dyn StreamProcessor> =
            if reasoning == ReasoningFormat::Harmony || tools_format == ToolCallFormat::Harmony {
                Box::new(HarmonyProcessor::new(has_tools))
            } else if reasoning == ReasoningFormat::ThinkTags {
                Box::new(ThinkTagRouter::new(starts_in_reasoning))
            } else {
                Box::new(Passthrough)
            };
        // After Harmony only the bare JSON fallback is left to look for.
        let content_format = if tools_format == ToolCallFormat::Harmony {
            ToolCallFormat::None
        } else {
            tools_format
        };
        let tools = has_tools.then(|| ToolCallParser::new(content_format, tools));
        Self {
            first,
            tools,
            call_indices: Vec::new(),
        }
    }

    /// True once at least one tool call was emitted.
    pub fn saw_tool_call(&self) -> bool {
        !self.call_indices.is_empty()
    }

    fn route(&mut self, events: Vec<ChatEvent>, finishing: bool) -> Vec<ChatEvent> {
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let (stage, produced) = match (&mut self.tools, event) {
                (Some(parser), ChatEvent::Content(text)) => (1, parser.push(&text)),
                (_, event) => (0, vec![event]),
            };
            self.append(stage, produced, &mut out);
        }
        if finishing {
            if let Some(parser) = &mut self.tools {
                let produced = parser.finish();
                self.append(1, produced, &mut out);
            }
        }
        out
    }

    /// Renumber tool calls and merge neighbouring text of the same kind.
    fn append(&mut self, stage: u8, events: Vec<ChatEvent>, out: &mut Vec<ChatEvent>) {
        for mut event in events {
            if let ChatEvent::ToolCall(delta) = &mut event {
                delta.index = self.reply_index(stage, delta.index);
            }
            match (out.last_mut(), event) {
                (Some(ChatEvent::Content(last)), ChatEvent::Content(text))
                | (Some(ChatEvent::Reasoning(last)), ChatEvent::Reasoning(text)) => last.push_str(&text),
                (_, event) => out.push(event),
            }
        }
    }

    fn reply_index(&mut self, stage: u8, index: u32) -> u32 {
        let key = (stage, index);
        let position = match self.call_indices.iter().position(|&known| known == key) {
            Some(position) => position,
            None => {
                self.call_indices.push(key);
                self.call_indices.len() - 1
            }
        };
        u32::try_from(position).unwrap_or(u32::MAX)
    }
}

impl StreamProcessor for ProcessorChain {
    fn push(&mut self, text: &str) -> Vec<ChatEvent> {
        let events = self.first.push(text);
        self.route(events, false)
    }

    fn finish(&mut self) -> Vec<ChatEvent> {
        let events = self.first.finish();
        self.route(events, true)
    }
}

/// No reasoning markup: all text is content.
struct Passthrough;

impl StreamProcessor for Passthrough {
    fn push(&mut self, text: &str) -> Vec<ChatEvent> {
        if text.is_empty() {
            Vec::new()
        } else {
            vec![ChatEvent::Content(text.to_owned())]
        }
    }

    fn finish(&mut self) -> Vec<ChatEvent> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use crate::stream::test_support::{call, check, content, reasoning, tools};
    use crate::stream::{ProcessorChain, ReasoningFormat, StreamProcessor, ToolCallFormat};
    use serde_json::json;

    #[test]
    fn harmony_calls_and_bare_json_share_one_numbering() {
        let chain = || {
            ProcessorChain::new(
                ReasoningFormat::Harmony,
                ToolCallFormat::Harmony,
                &tools(&["f", "g"]),
                false,
            )
        };
        check(
            chain,
            "<|channel|>commentary to=functions.f<|message|>{}<|call|><|channel|>final<|message|>{\"name\": \"g\", \"arguments\": {\"x\": 1}}<|return|>",
            &[call("f", json!({})), call("g", json!({"x": 1}))],
        );
    }

    #[test]
    fn think_tags_with_another_tool_format() {
        let chain = || {
            ProcessorChain::new(
                ReasoningFormat::ThinkTags,
                ToolCallFormat::Mistral,
                &tools(&["get_time"]),
                false,
            )
        };
        check(
            chain,
            "<think>Time?</think>[TOOL_CALLS]get_time[ARGS]{}",
            &[reasoning("Time?"), call("get_time", json!({}))],
        );
    }

    #[test]
    fn saw_tool_call_reports_emitted_calls() {
        let mut chain = ProcessorChain::new(ReasoningFormat::None, ToolCallFormat::Hermes, &tools(&["f"]), false);
        chain.push("<tool_call>{\"name\": \"f\", ");
        assert!(!chain.saw_tool_call());
        chain.push("\"arguments\": {");
        assert!(chain.saw_tool_call());
        let plain = || ProcessorChain::new(ReasoningFormat::None, ToolCallFormat::Hermes, &tools(&["f"]), false);
        check(plain, "Just text.", &[content("Just text.")]);
    }
}
