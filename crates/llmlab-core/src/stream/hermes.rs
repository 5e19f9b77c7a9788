//! Hermes / Qwen tool calls: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`.

use super::call_block::{expect_close, finish_rest, BlockStep, CallBlock};
use super::call_object::{CallObject, ObjStep};
use super::sink::EventSink;

pub(super) const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// Reads what follows `<tool_call>`: one call object, then the closing tag.
#[derive(Debug, Default)]
pub(super) struct HermesBlock {
    object: CallObject,
    /// The object is over (or broke after the call began); only the closing
    /// tag may follow.
    closing: bool,
}

impl CallBlock for HermesBlock {
    fn step(&mut self, buf: &str, sink: &mut EventSink) -> BlockStep {
        if self.closing {
            return expect_close(buf, CLOSE);
        }
        match self.object.feed(buf, sink) {
            ObjStep::More => BlockStep::Consumed(buf.len()),
            ObjStep::Done(n) => {
                self.closing = true;
                BlockStep::Consumed(n)
            }
            // Too late to take the call back: end it where the text broke.
            ObjStep::Invalid(n) if self.object.begun() => {
                self.closing = true;
                BlockStep::Consumed(n)
            }
            ObjStep::Invalid(n) => BlockStep::Malformed(n),
        }
    }

    fn committed(&self) -> bool {
        self.object.begun()
    }

    fn finish(&mut self, rest: &str, sink: &mut EventSink) {
        finish_rest(rest, CLOSE, sink);
    }
}

#[cfg(test)]
mod tests {
    use crate::stream::test_support::{call, check, content, reasoning, tools, Item};
    use crate::stream::{ProcessorChain, ReasoningFormat, ToolCallFormat};
    use serde_json::json;

    fn hermes() -> ProcessorChain {
        ProcessorChain::new(
            ReasoningFormat::ThinkTags,
            ToolCallFormat::Hermes,
            &tools(&["get_weather"]),
            false,
        )
    }

    fn weather(city: &str) -> Item {
        call("get_weather", json!({ "city": city }))
    }

    #[test]
    fn a_single_call() {
        check(
            hermes,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            &[weather("Paris")],
        );
    }

    #[test]
    fn two_calls_after_some_content() {
        check(
            hermes,
            "Let me check both cities.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call>\n",
            &[content("Let me check both cities.\n"), weather("Paris"), weather("Zürich")],
        );
    }

    #[test]
    fn qwen3_reasoning_then_a_call() {
        let qwen3 = || {
            ProcessorChain::new(
                ReasoningFormat::ThinkTags,
                ToolCallFormat::Hermes,
                &tools(&["get_weather"]),
                true,
            )
        };
        check(
            qwen3,
            "I need the weather.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            &[reasoning("I need the weather.\n"), weather("Paris")],
        );
    }

    #[test]
    fn arguments_before_the_name_and_as_a_string() {
        check(
            hermes,
            "<tool_call>{\"arguments\": {\"city\": \"Rome\"}, \"name\": \"get_weather\"}</tool_call><tool_call>{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Oslo\\\"}\"}</tool_call>",
            &[weather("Rome"), weather("Oslo")],
        );
    }

    #[test]
    fn malformed_blocks_are_content() {
        for text in [
            "<tool_call>\n{\"name\": get_weather, \"arguments\": {}}\n</tool_call>",
            "<tool_call>\n{\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            "Use <tool_call> tags to call tools.",
            "<tool_call>\n{\"name\": \"get_weather\"",
        ] {
            check(hermes, text, &[content(text)]);
        }
    }

    #[test]
    fn text_after_a_broken_call_is_content() {
        check(
            hermes,
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}</tool_call> done",
            &[weather("Paris"), content(" done")],
        );
    }
}
