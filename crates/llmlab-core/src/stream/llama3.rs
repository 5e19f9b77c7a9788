//! Llama 3.x tool calls: `<|python_tag|>{"name": ..., "parameters": {...}}`.
//!
//! Without the tag the reply is a bare JSON call (handled like every other
//! bare reply); further calls follow after `;` or a newline and are read the
//! same way, which is why the block hands over to a fresh reply start.

use super::call_block::{BlockStep, CallBlock};
use super::call_object::{CallObject, ObjStep};
use super::sink::EventSink;

pub(super) const PYTHON_TAG: &str = "<|python_tag|>";

/// Reads the one call object that follows `<|python_tag|>`.
#[derive(Debug, Default)]
pub(super) struct Llama3Block {
    object: CallObject,
}

impl CallBlock for Llama3Block {
    fn step(&mut self, buf: &str, sink: &mut EventSink) -> BlockStep {
        match self.object.feed(buf, sink) {
            ObjStep::More => BlockStep::Consumed(buf.len()),
            ObjStep::Done(n) => BlockStep::Closed(n),
            // Before the call began this is code for the built-in python
            // tool or plain text: content. After, the call just ends.
            ObjStep::Invalid(n) if self.object.begun() => BlockStep::Closed(n),
            ObjStep::Invalid(n) => BlockStep::Malformed(n),
        }
    }

    fn committed(&self) -> bool {
        self.object.begun()
    }

    fn reopens_reply(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use crate::stream::test_support::{call, check, content, tools, Item};
    use crate::stream::{ProcessorChain, ReasoningFormat, ToolCallFormat};
    use serde_json::json;

    fn llama() -> ProcessorChain {
        ProcessorChain::new(
            ReasoningFormat::None,
            ToolCallFormat::Llama3,
            &tools(&["get_weather", "get_time"]),
            false,
        )
    }

    fn weather() -> Item {
        call("get_weather", json!({"city": "Paris"}))
    }

    #[test]
    fn with_the_python_tag() {
        check(
            llama,
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
            &[weather()],
        );
    }

    #[test]
    fn without_the_python_tag() {
        check(
            llama,
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
            &[weather()],
        );
        check(
            llama,
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
            &[weather()],
        );
    }

    #[test]
    fn several_calls_separated_by_semicolons_or_newlines() {
        let time = call("get_time", json!({"zone": "UTC"}));
        check(
            llama,
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}; {\"name\": \"get_time\", \"parameters\": {\"zone\": \"UTC\"}}",
            &[weather(), time.clone()],
        );
        check(
            llama,
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}\n{\"name\": \"get_time\", \"parameters\": {\"zone\": \"UTC\"}};",
            &[weather(), time],
        );
    }

    #[test]
    fn python_code_after_the_tag_is_content() {
        let text = "<|python_tag|>print(2 + 2)";
        check(llama, text, &[content(text)]);
    }

    #[test]
    fn text_after_a_call_is_content() {
        check(
            llama,
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}\nDone.",
            &[weather(), content("\nDone.")],
        );
    }
}
