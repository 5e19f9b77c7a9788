//! Mistral tool calls, in both generations of the format:
//! `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` and
//! `[TOOL_CALLS]name[ARGS]{...}` (optionally `name[CALL_ID]id[ARGS]{...}`),
//! where each further call repeats the `[TOOL_CALLS]` marker.

use super::call_block::{BlockStep, CallBlock};
use super::call_object::{CallObject, ObjStep};
use super::json_scan::{is_value_start, ArgsValue, Scan};
use super::markers::{blank_prefix_len, find_first, safe_len};
use super::sink::EventSink;

pub(super) const TOOL_CALLS: &str = "[TOOL_CALLS]";
const ARGS: &str = "[ARGS]";
const CALL_ID: &str = "[CALL_ID]";
/// Longest `name[CALL_ID]id` header we wait for before calling it text.
const MAX_HEADER: usize = 256;

#[derive(Debug, Default)]
enum Phase {
    /// Right after the marker: an array, one object or a name follows.
    #[default]
    Lead,
    /// Inside the array, before an element.
    Item,
    Object(CallObject),
    /// Inside the array, after an element.
    Separator,
    Name,
    /// Skipping the call id up to `[ARGS]`.
    CallId,
    /// `None` until the arguments value starts.
    Args(Option<ArgsValue>),
}

#[derive(Debug, Default)]
pub(super) struct MistralBlock {
    phase: Phase,
    in_array: bool,
    /// Calls of this block that were completed.
    calls: usize,
    name: String,
    header_len: usize,
}

impl MistralBlock {
    /// The text broke at `at` (after `Consumed`-style accounting): before any
    /// call this block is content, after one the block simply ends there.
    fn broken(&mut self, at: usize, sink: &mut EventSink) -> BlockStep {
        if self.calls == 0 {
            return BlockStep::Malformed(at);
        }
        // A later element that never became a call: its text is content.
        if let Phase::Object(object) = &mut self.phase {
            if !object.begun() {
                sink.gap_text(&object.take_raw());
            }
        }
        BlockStep::Closed(at)
    }

    fn step_name(&mut self, buf: &str) -> BlockStep {
        let end = buf
            .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .unwrap_or(buf.len());
        self.name.push_str(&buf[..end]);
        self.header_len += end;
        if self.header_len > MAX_HEADER {
            return BlockStep::Malformed(end);
        }
        let rest = &buf[end..];
        if rest.is_empty() {
            return BlockStep::Consumed(end);
        }
        if self.name.is_empty() {
            return BlockStep::Malformed(end);
        }
        let next = if rest.starts_with(ARGS) {
            (Phase::Args(None), ARGS.len())
        } else if rest.starts_with(CALL_ID) {
            (Phase::CallId, CALL_ID.len())
        } else if ARGS.starts_with(rest) || CALL_ID.starts_with(rest) {
            return if end > 0 {
                BlockStep::Consumed(end)
            } else {
                BlockStep::NeedMore
            };
        } else {
            return BlockStep::Malformed(end);
        };
        self.phase = next.0;
        self.header_len += next.1;
        BlockStep::Consumed(end + next.1)
    }

    fn step_call_id(&mut self, buf: &str) -> BlockStep {
        let (used, found) = match find_first(buf, &[ARGS]) {
            Some((at, _)) => (at + ARGS.len(), true),
            None => (safe_len(buf, &[ARGS]), false),
        };
        self.header_len += used;
        if self.header_len > MAX_HEADER {
            return BlockStep::Malformed(used);
        }
        if found {
            self.phase = Phase::Args(None);
        } else if used == 0 {
            return BlockStep::NeedMore;
        }
        BlockStep::Consumed(used)
    }

    /// Whitespace, then the first byte of the arguments value begins the call.
    fn start_args(&mut self, buf: &str, sink: &mut EventSink) -> BlockStep {
        let blank = blank_prefix_len(buf);
        match buf.as_bytes().get(blank) {
            None => BlockStep::Consumed(blank),
            Some(&byte) if is_value_start(byte) => {
                sink.begin_call(std::mem::take(&mut self.name));
                self.phase = Phase::Args(Some(ArgsValue::new(true)));
                BlockStep::Consumed(blank)
            }
            Some(_) => BlockStep::Malformed(blank),
        }
    }
}

impl CallBlock for MistralBlock {
    fn step(&mut self, buf: &str, sink: &mut EventSink) -> BlockStep {
        let blank = blank_prefix_len(buf);
        let first = buf.as_bytes().get(blank).copied();
        match &mut self.phase {
            Phase::Lead | Phase::Item | Phase::Separator if first.is_none() => BlockStep::Consumed(blank),
            Phase::Lead if first == Some(b'[') => {
                self.in_array = true;
                self.phase = Phase::Item;
                BlockStep::Consumed(blank + 1)
            }
            Phase::Lead | Phase::Item if first == Some(b'{') => {
                self.phase = Phase::Object(CallObject::default());
                BlockStep::Consumed(blank)
            }
            Phase::Lead => {
                self.phase = Phase::Name;
                BlockStep::Consumed(blank)
            }
            Phase::Separator if first == Some(b',') => {
                self.phase = Phase::Item;
                BlockStep::Consumed(blank + 1)
            }
            Phase::Item | Phase::Separator if first == Some(b']') && self.calls > 0 => BlockStep::Closed(blank + 1),
            Phase::Item | Phase::Separator => self.broken(blank, sink),
            Phase::Object(object) => match object.feed(buf, sink) {
                ObjStep::More => BlockStep::Consumed(buf.len()),
                ObjStep::Done(n) => {
                    self.calls += 1;
                    if !self.in_array {
                        return BlockStep::Closed(n);
                    }
                    self.phase = Phase::Separator;
                    BlockStep::Consumed(n)
                }
                ObjStep::Invalid(n) if object.begun() => {
                    self.calls += 1;
                    BlockStep::Closed(n)
                }
                ObjStep::Invalid(n) => self.broken(n, sink),
            },
            Phase::Name => self.step_name(buf),
            Phase::CallId => self.step_call_id(buf),
            Phase::Args(None) => self.start_args(buf, sink),
            Phase::Args(Some(value)) => match value.feed(buf, sink) {
                Scan::More => BlockStep::Consumed(buf.len()),
                Scan::End(n) | Scan::Invalid(n) => {
                    sink.call_args(&value.take_arguments());
                    self.calls += 1;
                    BlockStep::Closed(n)
                }
            },
        }
    }

    fn committed(&self) -> bool {
        self.calls > 0
            || matches!(&self.phase, Phase::Object(object) if object.begun())
            || matches!(self.phase, Phase::Args(Some(_)))
    }

    fn finish(&mut self, rest: &str, sink: &mut EventSink) {
        // Generation may end right after a scalar argument.
        if let Phase::Args(Some(value)) = &mut self.phase {
            if value.complete_at_eof() {
                sink.call_args(&value.take_arguments());
            }
        }
        super::call_block::finish_rest(rest, "]", sink);
    }
}

#[cfg(test)]
mod tests {
    use crate::stream::test_support::{call, check, content, tools};
    use crate::stream::{ProcessorChain, ReasoningFormat, ToolCallFormat};
    use serde_json::json;

    fn mistral() -> ProcessorChain {
        ProcessorChain::new(
            ReasoningFormat::None,
            ToolCallFormat::Mistral,
            &tools(&["get_weather", "get_time"]),
            false,
        )
    }

    #[test]
    fn a_json_array_of_calls() {
        check(
            mistral,
            "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}]",
            &[call("get_weather", json!({"city": "Paris"})), call("get_time", json!({"zone": "CET"}))],
        );
    }

    #[test]
    fn name_and_args_form() {
        check(
            mistral,
            "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}",
            &[call("get_weather", json!({"city": "Paris"}))],
        );
        check(
            mistral,
            "Checking.[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_time[ARGS]{\"zone\": \"CET\"}",
            &[content("Checking."), call("get_weather", json!({"city": "Paris"})), call("get_time", json!({"zone": "CET"}))],
        );
    }

    #[test]
    fn malformed_markup_is_content() {
        for text in [
            "[TOOL_CALLS] oops, no call",
            "[TOOL_CALLS][]",
            "[TOOL_CALLS]get weather[ARGS]{}",
            "[TOOL_CALLS][{\"x\": 1}]",
        ] {
            check(mistral, text, &[content(text)]);
        }
    }

    #[test]
    fn a_broken_second_element_ends_the_block() {
        check(
            mistral,
            "[TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {}}, {\"nom\": 1}] after",
            &[call("get_time", json!({})), content("{\"nom\": 1}] after")],
        );
    }
}
