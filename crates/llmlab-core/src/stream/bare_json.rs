//! A reply that is nothing but a JSON tool call, possibly in a code fence.
//!
//! Small models often ignore their template's tool markup and answer with
//! `{"name": ..., "arguments": {...}}`. When a reply starts with `{`, `[{` or
//! a fence, its text is held back until the JSON value is complete; it is a
//! call only if it parses and names a declared tool (a JSON answer the user
//! asked for must stay content), otherwise everything is released unchanged.

use serde_json::Value;

use super::json_scan::{Scan, ValueScanner};
use super::markers::blank_prefix_len;
use super::sink::EventSink;

const FENCE: &str = "```";
/// Longest fence info string we wait for (`json`, `JSON`, nothing).
const MAX_INFO: usize = 16;

/// How a reply's first characters look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opening {
    Json,
    Text,
    Undecided,
}

/// Classify the start of a reply (`text` begins at its first non-blank).
pub(super) fn opening(text: &str) -> Opening {
    if text.starts_with('{') || text.starts_with(FENCE) {
        return Opening::Json;
    }
    if FENCE.starts_with(text) {
        return Opening::Undecided;
    }
    if let Some(inner) = text.strip_prefix('[') {
        return match inner.trim_start().chars().next() {
            Some('{') => Opening::Json,
            Some(_) => Opening::Text,
            None => Opening::Undecided,
        };
    }
    Opening::Text
}

/// What the reader did with the front of the buffer. Every count includes
/// bytes the reader has recorded in its raw text.
#[derive(Debug, PartialEq)]
pub(super) enum BareStep {
    Consumed(usize),
    NeedMore,
    /// These calls (name, arguments) after this many bytes.
    Calls(usize, Vec<(String, String)>),
    /// Not a call: the raw text is content and the rest is read as text.
    Reject(usize),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Lead,
    FenceInfo,
    ValueLead,
    Value,
    FenceClose,
}

#[derive(Debug, Default)]
pub(super) struct BareJson {
    phase: Phase,
    fenced: bool,
    info: String,
    scanner: ValueScanner,
    /// The JSON value's text.
    value: String,
    /// Everything consumed, for the release as content.
    raw: String,
}

impl BareJson {
    pub fn step(&mut self, buf: &str, tools: &[String]) -> BareStep {
        match self.phase {
            Phase::Lead => {
                let first = buf
                    .find(|c: char| !(c.is_whitespace() || c == ';'))
                    .unwrap_or(buf.len());
                let used = if buf[first..].starts_with(FENCE) {
                    self.fenced = true;
                    self.phase = Phase::FenceInfo;
                    first + FENCE.len()
                } else {
                    self.phase = Phase::Value;
                    first
                };
                self.consume(buf, used)
            }
            Phase::FenceInfo => {
                let (line, ends) = buf.find('\n').map_or((buf, false), |at| (&buf[..at], true));
                self.info.push_str(line);
                let info = self.info.trim();
                let fits = info.is_empty() || info.eq_ignore_ascii_case("json");
                if ends && fits {
                    self.phase = Phase::ValueLead;
                    return self.consume(buf, line.len() + 1);
                }
                if ends || self.info.len() > MAX_INFO || !"json".starts_with(&info.to_ascii_lowercase()) {
                    // Some other code block: content, streamed from here on.
                    return self.reject(buf, line.len());
                }
                self.consume(buf, line.len())
            }
            Phase::ValueLead => {
                let blank = blank_prefix_len(buf);
                match buf[blank..].chars().next() {
                    None => self.consume(buf, blank),
                    Some('{' | '[') => {
                        self.phase = Phase::Value;
                        self.consume(buf, blank)
                    }
                    Some(_) => self.reject(buf, blank),
                }
            }
            Phase::Value => match self.scanner.feed(buf) {
                Scan::More => {
                    self.value.push_str(buf);
                    self.consume(buf, buf.len())
                }
                Scan::End(n) => {
                    self.value.push_str(&buf[..n]);
                    if self.fenced {
                        self.phase = Phase::FenceClose;
                        return self.consume(buf, n);
                    }
                    self.decide(buf, n, tools)
                }
                Scan::Invalid(n) => self.reject(buf, n),
            },
            Phase::FenceClose => {
                let blank = blank_prefix_len(buf);
                let rest = &buf[blank..];
                if rest.starts_with(FENCE) {
                    self.decide(buf, blank + FENCE.len(), tools)
                } else if rest.is_empty() || FENCE.starts_with(rest) {
                    if blank == 0 {
                        return BareStep::NeedMore;
                    }
                    self.consume(buf, blank)
                } else {
                    self.reject(buf, blank)
                }
            }
        }
    }

    /// Generation ended while the reply was held back.
    pub fn finish(mut self, rest: &str, tools: &[String], sink: &mut EventSink) {
        // A complete fenced value whose closing fence never came still counts.
        let closing = rest.trim();
        if self.phase == Phase::FenceClose && FENCE.starts_with(closing) {
            if let Some(calls) = parse_calls(&self.value, tools) {
                emit_calls(calls, sink);
                return;
            }
        }
        self.raw.push_str(rest);
        sink.gap_text(&self.raw);
    }

    pub fn into_raw(self) -> String {
        self.raw
    }

    fn consume(&mut self, buf: &str, n: usize) -> BareStep {
        self.raw.push_str(&buf[..n]);
        BareStep::Consumed(n)
    }

    fn reject(&mut self, buf: &str, n: usize) -> BareStep {
        self.raw.push_str(&buf[..n]);
        BareStep::Reject(n)
    }

    fn decide(&mut self, buf: &str, n: usize, tools: &[String]) -> BareStep {
        self.raw.push_str(&buf[..n]);
        match parse_calls(&self.value, tools) {
            Some(calls) => BareStep::Calls(n, calls),
            None => BareStep::Reject(n),
        }
    }
}

pub(super) fn emit_calls(calls: Vec<(String, String)>, sink: &mut EventSink) {
    for (name, arguments) in calls {
        sink.begin_call(name);
        sink.call_args(&arguments);
    }
}

/// The calls in a complete JSON value: one call object or a non-empty array
/// of them, each naming a declared tool; `None` when it is anything else.
fn parse_calls(json: &str, tools: &[String]) -> Option<Vec<(String, String)>> {
    let items = match serde_json::from_str(json).ok()? {
        Value::Array(items) if !items.is_empty() => items,
        object @ Value::Object(_) => vec![object],
        _ => return None,
    };
    items.iter().map(|item| parse_call(item, tools)).collect()
}

fn parse_call(item: &Value, tools: &[String]) -> Option<(String, String)> {
    let name = item.get("name")?.as_str()?;
    if !tools.iter().any(|tool| tool == name) {
        return None;
    }
    let arguments = match item.get("arguments").or_else(|| item.get("parameters")) {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(Value::String(encoded)) => encoded.clone(),
        Some(value) => value.to_string(),
    };
    Some((name.to_owned(), arguments))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::test_support::{call, check, content, reasoning, tools};
    use crate::stream::{ProcessorChain, ReasoningFormat, ToolCallFormat};
    use serde_json::json;

    const DECLARED: &[&str] = &["get_weather", "get_time"];

    fn chain(format: ToolCallFormat) -> impl Fn() -> ProcessorChain {
        move || ProcessorChain::new(ReasoningFormat::ThinkTags, format, &tools(DECLARED), false)
    }

    #[test]
    fn classifies_reply_openings() {
        assert_eq!(opening("{\"a\""), Opening::Json);
        assert_eq!(opening("``"), Opening::Undecided);
        assert_eq!(opening("```json"), Opening::Json);
        assert_eq!(opening("[ "), Opening::Undecided);
        assert_eq!(opening("[ {"), Opening::Json);
        assert_eq!(opening("[TOOL_CALLS]"), Opening::Text);
        assert_eq!(opening("Sure"), Opening::Text);
    }

    #[test]
    fn a_bare_object_naming_a_declared_tool_is_a_call() {
        let weather = call("get_weather", json!({"city": "Paris"}));
        for format in [ToolCallFormat::None, ToolCallFormat::Hermes, ToolCallFormat::Mistral] {
            check(
                chain(format),
                "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
                std::slice::from_ref(&weather),
            );
        }
        check(
            chain(ToolCallFormat::None),
            "\n  {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}\n",
            &[weather],
        );
    }

    #[test]
    fn fenced_json_is_a_call() {
        let expected = [reasoning("Use the tool."), call("get_time", json!({"zone": "CET"}))];
        let fenced =
            "<think>Use the tool.</think>\n```json\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}\n```";
        check(chain(ToolCallFormat::None), fenced, &expected);
        check(
            chain(ToolCallFormat::None),
            &fenced.replace("```json", "```"),
            &expected,
        );
    }

    #[test]
    fn an_array_of_calls_and_string_arguments() {
        check(
            chain(ToolCallFormat::None),
            r#"[{"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}, {"name": "get_time", "arguments": {}}]"#,
            &[
                call("get_weather", json!({"city": "Oslo"})),
                call("get_time", json!({})),
            ],
        );
    }

    #[test]
    fn json_that_is_not_a_declared_call_stays_content() {
        for text in [
            r#"{"name": "launch_rockets", "arguments": {"count": 3}}"#,
            "{\"answer\": 42}\nThat is the JSON you asked for.",
            "```json\n{\"name\": \"unknown\"}\n```",
            "```python\nprint({\"name\": \"get_time\"})\n```",
            "[{\"a\": 1}, 2]",
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"]}",
        ] {
            check(chain(ToolCallFormat::None), text, &[content(text)]);
        }
    }

    #[test]
    fn text_before_the_json_makes_it_content() {
        let text = "Here you go: {\"name\": \"get_weather\", \"arguments\": {}}";
        check(chain(ToolCallFormat::None), text, &[content(text)]);
    }

    #[test]
    fn an_unclosed_fence_still_yields_the_call() {
        check(
            chain(ToolCallFormat::None),
            "```json\n{\"name\": \"get_time\"}\n``",
            &[call("get_time", json!({}))],
        );
    }
}
