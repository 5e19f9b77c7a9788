//! gpt-oss "Harmony" messages, reasoning and tool calls in one processor.
//!
//! A message is `<|start|>{role and header}<|channel|>{channel and header}
//! <|message|>{body}` ended by `<|end|>`, `<|call|>` or `<|return|>`. The
//! generation prompt ends with `<|start|>assistant`, so the stream usually
//! begins at `<|channel|>`. The header decides where the body goes: the
//! `analysis` channel is reasoning, a recipient `to=functions.NAME` makes the
//! body a tool call's arguments, everything else is content.

use super::markers::{find_first, safe_len};
use super::sink::EventSink;
use super::StreamProcessor;
use crate::ChatEvent;

const START: &str = "<|start|>";
const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
const END: &str = "<|end|>";
const CALL: &str = "<|call|>";
const RETURN: &str = "<|return|>";
const CONSTRAIN: &str = "<|constrain|>";

/// Markers that matter outside a message.
const OUTSIDE: &[&str] = &[START, CHANNEL, MESSAGE, END, CALL, RETURN];
/// Markers that end a header: `<|message|>` properly, the others because the
/// header was not one after all.
const HEADER_ENDS: &[&str] = &[MESSAGE, START, END, CALL, RETURN];
/// Markers that end a body; a new `<|start|>` or `<|channel|>` also does, for
/// models that skip the end token.
const BODY_ENDS: &[&str] = &[END, CALL, RETURN, START, CHANNEL];
/// A header longer than this is text that merely looked like one.
const MAX_HEADER: usize = 512;

#[derive(Debug, Clone, Copy)]
enum Route {
    Reasoning,
    Content,
    Tool,
}

#[derive(Debug)]
enum State {
    Outside,
    /// Header text so far, including the marker that opened it.
    Header(String),
    Body(Route),
}

#[derive(Debug)]
pub(super) struct HarmonyProcessor {
    /// Tool calls are recognised only when the request declared tools.
    tools: bool,
    state: State,
    buf: String,
    sink: EventSink,
}

impl HarmonyProcessor {
    pub fn new(tools: bool) -> Self {
        Self {
            tools,
            state: State::Outside,
            buf: String::new(),
            sink: EventSink::default(),
        }
    }

    /// Advance as far as the buffer allows; false when more text is needed.
    fn step(&mut self) -> bool {
        match std::mem::replace(&mut self.state, State::Outside) {
            State::Outside => self.step_outside(),
            State::Header(raw) => self.step_header(raw),
            State::Body(route) => self.step_body(route),
        }
    }

    fn step_outside(&mut self) -> bool {
        let Some((at, marker)) = find_first(&self.buf, OUTSIDE) else {
            let safe = safe_len(&self.buf, OUTSIDE);
            self.sink.gap_text(&self.buf[..safe]);
            self.buf.drain(..safe);
            return false;
        };
        self.sink.gap_text(&self.buf[..at]);
        self.sink.close_gap();
        self.buf.drain(..at + marker.len());
        self.state = match marker {
            START | CHANNEL => State::Header(marker.to_owned()),
            // A body without any header: an unknown channel, so content.
            MESSAGE => State::Body(Route::Content),
            // A stray end token ends nothing.
            _ => State::Outside,
        };
        true
    }

    fn step_header(&mut self, mut raw: String) -> bool {
        match find_first(&self.buf, HEADER_ENDS) {
            Some((at, MESSAGE)) if raw.len() + at <= MAX_HEADER => {
                raw.push_str(&self.buf[..at]);
                self.buf.drain(..at + MESSAGE.len());
                let route = self.open_body(&raw);
                self.state = State::Body(route);
                true
            }
            Some((at, _)) => {
                // Not a header after all; the marker is read again outside.
                raw.push_str(&self.buf[..at]);
                self.buf.drain(..at);
                self.sink.gap_text(&raw);
                true
            }
            None => {
                let safe = safe_len(&self.buf, HEADER_ENDS);
                raw.push_str(&self.buf[..safe]);
                self.buf.drain(..safe);
                if raw.len() > MAX_HEADER {
                    self.sink.gap_text(&raw);
                    return true;
                }
                self.state = State::Header(raw);
                false
            }
        }
    }

    fn step_body(&mut self, route: Route) -> bool {
        let Some((at, marker)) = find_first(&self.buf, BODY_ENDS) else {
            let safe = safe_len(&self.buf, BODY_ENDS);
            self.emit(route, safe);
            self.state = State::Body(route);
            return false;
        };
        self.emit(route, at);
        // An end token belongs to this message; a start or channel marker
        // opens the next one and is read again outside.
        if !matches!(marker, START | CHANNEL) {
            self.buf.drain(..marker.len());
        }
        true
    }

    /// Route the first `len` bytes of the buffer as the body's text.
    fn emit(&mut self, route: Route, len: usize) {
        let text = &self.buf[..len];
        match route {
            Route::Reasoning => self.sink.reasoning(text),
            Route::Content => self.sink.content(text),
            Route::Tool => self.sink.call_args(text),
        }
        self.buf.drain(..len);
    }

    fn open_body(&mut self, header: &str) -> Route {
        let header = Header::parse(header);
        match header.recipient {
            Some(recipient) if self.tools => {
                let name = recipient.strip_prefix("functions.").unwrap_or(&recipient);
                self.sink.begin_call(name.to_owned());
                Route::Tool
            }
            _ if header.channel.as_deref() == Some("analysis") => Route::Reasoning,
            _ => Route::Content,
        }
    }
}

impl StreamProcessor for HarmonyProcessor {
    fn push(&mut self, text: &str) -> Vec<ChatEvent> {
        self.buf.push_str(text);
        while !self.buf.is_empty() && self.step() {}
        self.sink.take()
    }

    fn finish(&mut self) -> Vec<ChatEvent> {
        let rest = std::mem::take(&mut self.buf);
        match std::mem::replace(&mut self.state, State::Outside) {
            State::Outside => self.sink.gap_text(&rest),
            State::Header(raw) => self.sink.gap_text(&(raw + &rest)),
            State::Body(route) => {
                self.buf = rest;
                self.emit(route, self.buf.len());
            }
        }
        self.sink.close_gap();
        self.sink.take()
    }
}

/// What a message header says about its body.
#[derive(Debug, Default, PartialEq)]
struct Header {
    channel: Option<String>,
    recipient: Option<String>,
}

impl Header {
    /// `raw` is e.g. `<|start|>assistant to=functions.f<|channel|>commentary json`
    /// or `<|channel|>commentary to=functions.f <|constrain|>json`.
    fn parse(raw: &str) -> Self {
        // Markers are glued to words; spacing them out lets words split cleanly.
        let mut spaced = raw.to_owned();
        for marker in [START, CHANNEL, CONSTRAIN] {
            spaced = spaced.replace(marker, &format!(" {marker} "));
        }
        let words: Vec<&str> = spaced.split_whitespace().collect();
        let channel = words
            .iter()
            .position(|&w| w == CHANNEL)
            .and_then(|at| words.get(at + 1))
            .filter(|w| !w.starts_with("<|") && !w.starts_with("to="))
            .map(|w| (*w).to_owned());
        // `to=assistant` would address us, not a tool.
        let recipient = words
            .iter()
            .filter_map(|w| w.strip_prefix("to="))
            .find(|r| !r.is_empty() && *r != "assistant")
            .map(str::to_owned);
        Self { channel, recipient }
    }
}

#[cfg(test)]
mod tests {
    use super::Header;
    use crate::stream::test_support::{call, check, content, reasoning, tools};
    use crate::stream::{ProcessorChain, ReasoningFormat, ToolCallFormat};
    use serde_json::json;

    fn harmony(declared: &'static [&'static str]) -> impl Fn() -> ProcessorChain {
        move || {
            ProcessorChain::new(
                ReasoningFormat::Harmony,
                ToolCallFormat::Harmony,
                &tools(declared),
                false,
            )
        }
    }

    #[test]
    fn parses_headers() {
        let h = Header::parse("<|start|>assistant to=functions.f<|channel|>commentary json");
        assert_eq!(
            (h.channel.as_deref(), h.recipient.as_deref()),
            (Some("commentary"), Some("functions.f"))
        );
        let h = Header::parse("<|channel|>commentary to=functions.g <|constrain|>json");
        assert_eq!(
            (h.channel.as_deref(), h.recipient.as_deref()),
            (Some("commentary"), Some("functions.g"))
        );
        assert_eq!(
            Header::parse("<|channel|>analysis"),
            Header {
                channel: Some("analysis".into()),
                recipient: None
            }
        );
    }

    #[test]
    fn analysis_is_reasoning_and_final_is_content() {
        check(
            harmony(&[]),
            "<|channel|>analysis<|message|>User asks 2+2. Easy.<|end|><|start|>assistant<|channel|>final<|message|>2+2 = **4**.<|return|>",
            &[reasoning("User asks 2+2. Easy."), content("2+2 = **4**.")],
        );
    }

    #[test]
    fn recipient_after_the_channel_is_a_tool_call() {
        check(
            harmony(&["get_weather"]),
            "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>",
            &[reasoning("Need the weather."), call("get_weather", json!({"city": "Paris"}))],
        );
    }

    #[test]
    fn recipient_before_the_channel_is_a_tool_call() {
        check(
            harmony(&["get_weather"]),
            "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{\"city\":\"Zürich\"}<|call|>",
            &[call("get_weather", json!({"city": "Zürich"}))],
        );
    }

    #[test]
    fn messages_without_start_and_two_calls() {
        check(
            harmony(&["get_weather", "get_time"]),
            "<|channel|>analysis<|message|>Two lookups.<|end|>\n<|channel|>commentary to=functions.get_weather<|message|>{\"city\":\"Paris\"}<|call|><|channel|>commentary to=functions.get_time<|message|>{\"zone\":\"CET\"}<|end|>",
            &[
                reasoning("Two lookups."),
                call("get_weather", json!({"city": "Paris"})),
                call("get_time", json!({"zone": "CET"})),
            ],
        );
    }

    #[test]
    fn commentary_and_unknown_channels_are_content() {
        check(
            harmony(&["f"]),
            "<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant<|channel|>weird<|message|> Odd.<|end|>",
            &[content("Checking. Odd.")],
        );
    }

    #[test]
    fn without_tools_a_recipient_body_is_content() {
        check(
            harmony(&[]),
            "<|channel|>commentary to=functions.f<|message|>{\"a\":1}<|call|>",
            &[content("{\"a\":1}")],
        );
    }

    #[test]
    fn text_outside_messages_and_broken_headers_are_content() {
        check(
            harmony(&[]),
            "Plain answer, no markup.",
            &[content("Plain answer, no markup.")],
        );
        check(
            harmony(&[]),
            "<|start|>assistant<|end|>ok<|channel|>final<|message|>done",
            &[content("<|start|>assistantokdone")],
        );
    }

    #[test]
    fn an_unfinished_body_keeps_its_route() {
        check(
            harmony(&[]),
            "<|channel|>analysis<|message|>cut off <|en",
            &[reasoning("cut off <|en")],
        );
    }
}
