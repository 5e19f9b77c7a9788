//! Incremental reader of one tool-call object,
//! `{"name": "...", "arguments": {...}}` (`"parameters"` is accepted too).
//!
//! The call begins (id and name go out) as soon as the name is known and the
//! arguments value has started; from then on the arguments stream as raw JSON
//! text. Until that point nothing is emitted, so the owner can still turn the
//! whole text into content when the object proves not to be a call.

use super::json_scan::{is_json_blank, is_value_start, ArgsValue, Scan, ValueScanner};
use super::sink::EventSink;

/// What the reader made of the text it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ObjStep {
    /// All of the text was consumed; the object goes on.
    More,
    /// The object ends after this many bytes.
    Done(usize),
    /// The byte at this offset does not fit a call object.
    Invalid(usize),
}

#[derive(Debug, Clone, Copy)]
enum Field {
    Name,
    Args,
    Other,
}

impl Field {
    fn of(key: &str) -> Self {
        match key {
            "name" => Self::Name,
            "arguments" | "parameters" => Self::Args,
            _ => Self::Other,
        }
    }
}

#[derive(Debug)]
enum State {
    Open,
    KeyOrClose,
    Key { raw: String, escaped: bool },
    Colon(Field),
    ValueStart(Field),
    Name(ValueScanner, String),
    Args(ArgsValue),
    Skip(ValueScanner),
    AfterValue,
}

#[derive(Debug)]
pub(super) struct CallObject {
    state: State,
    name: Option<String>,
    /// Arguments that came before the name, already converted.
    early_args: Option<String>,
    args_seen: bool,
    begun: bool,
    /// Everything consumed before the call began, for a fallback to content.
    raw: String,
}

impl Default for CallObject {
    fn default() -> Self {
        Self {
            state: State::Open,
            name: None,
            early_args: None,
            args_seen: false,
            begun: false,
            raw: String::new(),
        }
    }
}

impl CallObject {
    /// True once the call went out; it can no longer become content.
    pub fn begun(&self) -> bool {
        self.begun
    }

    /// The text consumed before the call began (including the text up to an
    /// invalid byte).
    pub fn take_raw(&mut self) -> String {
        std::mem::take(&mut self.raw)
    }

    pub fn feed(&mut self, text: &str, sink: &mut EventSink) -> ObjStep {
        let was_begun = self.begun;
        let step = self.scan(text, sink);
        if !was_begun {
            let used = match step {
                ObjStep::More => text.len(),
                ObjStep::Done(n) | ObjStep::Invalid(n) => n,
            };
            self.raw.push_str(&text[..used]);
        }
        step
    }

    fn scan(&mut self, text: &str, sink: &mut EventSink) -> ObjStep {
        let bytes = text.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            let byte = bytes[at];
            let blank = is_json_blank(byte);
            match &mut self.state {
                State::Open | State::KeyOrClose | State::Colon(_) | State::ValueStart(_) | State::AfterValue
                    if blank =>
                {
                    at += 1;
                }
                State::Open if byte == b'{' => {
                    self.state = State::KeyOrClose;
                    at += 1;
                }
                State::KeyOrClose if byte == b'"' => {
                    self.state = State::Key {
                        raw: String::new(),
                        escaped: false,
                    };
                    at += 1;
                }
                State::KeyOrClose | State::AfterValue if byte == b'}' => return self.close(at, sink),
                State::AfterValue if byte == b',' => {
                    self.state = State::KeyOrClose;
                    at += 1;
                }
                State::Colon(field) if byte == b':' => {
                    self.state = State::ValueStart(*field);
                    at += 1;
                }
                State::Key { raw, escaped } => {
                    let rest = &text[at..];
                    match closing_quote(rest, escaped) {
                        Some(end) => {
                            raw.push_str(&rest[..end]);
                            self.state = State::Colon(Field::of(raw));
                            at += end + 1;
                        }
                        None => {
                            raw.push_str(rest);
                            at = text.len();
                        }
                    }
                }
                State::ValueStart(field) => {
                    // The value's first byte is read by the value state itself.
                    let field = *field;
                    if !self.start_value(field, byte, sink) {
                        return ObjStep::Invalid(at);
                    }
                }
                State::Name(scanner, held) => match scanner.feed(&text[at..]) {
                    Scan::More => {
                        held.push_str(&text[at..]);
                        at = text.len();
                    }
                    Scan::End(n) => {
                        held.push_str(&text[at..at + n]);
                        let name = serde_json::from_str::<String>(held).ok();
                        at += n;
                        self.state = State::AfterValue;
                        match name {
                            Some(name) if !name.is_empty() => self.name_done(name, sink),
                            _ => return ObjStep::Invalid(at - 1),
                        }
                    }
                    Scan::Invalid(n) => return ObjStep::Invalid(at + n),
                },
                State::Args(value) => match value.feed(&text[at..], sink) {
                    Scan::More => at = text.len(),
                    Scan::End(n) => {
                        at += n;
                        let arguments = value.take_arguments();
                        self.state = State::AfterValue;
                        self.args_done(arguments, sink);
                    }
                    Scan::Invalid(n) => return ObjStep::Invalid(at + n),
                },
                State::Skip(scanner) => match scanner.feed(&text[at..]) {
                    Scan::More => at = text.len(),
                    Scan::End(n) => {
                        at += n;
                        self.state = State::AfterValue;
                    }
                    Scan::Invalid(n) => return ObjStep::Invalid(at + n),
                },
                State::Open | State::KeyOrClose | State::Colon(_) | State::AfterValue => {
                    return ObjStep::Invalid(at);
                }
            }
        }
        ObjStep::More
    }

    /// Enter the state that reads a value starting with `byte`; false when no
    /// value of that field can start so.
    fn start_value(&mut self, field: Field, byte: u8, sink: &mut EventSink) -> bool {
        self.state = match field {
            Field::Name if byte != b'"' => return false,
            Field::Name => State::Name(ValueScanner::default(), String::new()),
            _ if !is_value_start(byte) => return false,
            Field::Args if !self.args_seen => {
                if let (Some(name), false) = (&self.name, self.begun) {
                    sink.begin_call(name.clone());
                    self.begun = true;
                }
                State::Args(ArgsValue::new(self.begun))
            }
            // Unknown keys and repeated arguments are skipped.
            Field::Args | Field::Other => State::Skip(ValueScanner::default()),
        };
        true
    }

    fn name_done(&mut self, name: String, sink: &mut EventSink) {
        if self.name.is_some() {
            return;
        }
        if let Some(arguments) = self.early_args.take() {
            sink.begin_call(name.clone());
            sink.call_args(&arguments);
            self.begun = true;
        }
        self.name = Some(name);
    }

    fn args_done(&mut self, arguments: String, sink: &mut EventSink) {
        self.args_seen = true;
        if self.begun {
            sink.call_args(&arguments);
        } else {
            self.early_args = Some(arguments);
        }
    }

    /// The closing brace at `at`: a call needs a name; missing arguments mean
    /// an empty object.
    fn close(&mut self, at: usize, sink: &mut EventSink) -> ObjStep {
        let Some(name) = &self.name else {
            return ObjStep::Invalid(at);
        };
        if !self.begun {
            sink.begin_call(name.clone());
            sink.call_args(self.early_args.take().as_deref().unwrap_or("{}"));
            self.begun = true;
        }
        ObjStep::Done(at + 1)
    }
}

/// Offset of the quote that ends a string whose opening quote was already
/// read; `escaped` carries a trailing backslash over to the next piece.
fn closing_quote(text: &str, escaped: &mut bool) -> Option<usize> {
    for (at, byte) in text.bytes().enumerate() {
        if *escaped {
            *escaped = false;
        } else if byte == b'\\' {
            *escaped = true;
        } else if byte == b'"' {
            return Some(at);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChatEvent;

    fn read(text: &str) -> (ObjStep, Vec<ChatEvent>) {
        let mut sink = EventSink::default();
        let step = CallObject::default().feed(text, &mut sink);
        (step, sink.take())
    }

    fn call_of(events: &[ChatEvent]) -> (String, String) {
        let [ChatEvent::ToolCall(delta)] = events else {
            panic!("{events:?}")
        };
        (delta.name.clone().unwrap(), delta.arguments.clone())
    }

    #[test]
    fn reads_name_then_arguments() {
        let text = r#" {"name": "f", "arguments": {"a": [1, "}"]}, "id": 7} tail"#;
        let (step, events) = read(text);
        assert_eq!(step, ObjStep::Done(text.len() - 5));
        assert_eq!(call_of(&events), ("f".into(), r#"{"a": [1, "}"]}"#.into()));
    }

    #[test]
    fn holds_arguments_until_the_name() {
        let (step, events) = read(r#"{"parameters": {"x": 1}, "name": "g"}"#);
        assert!(matches!(step, ObjStep::Done(_)));
        assert_eq!(call_of(&events), ("g".into(), r#"{"x": 1}"#.into()));
    }

    #[test]
    fn missing_arguments_are_an_empty_object() {
        let (_, events) = read(r#"{"name": "h"}"#);
        assert_eq!(call_of(&events), ("h".into(), "{}".into()));
    }

    #[test]
    fn rejects_objects_that_are_not_calls() {
        for text in [
            r#"{"name": h}"#,
            r#"{"arguments": {}}"#,
            "not json",
            r#"{"name": ""}"#,
            r#"{"a" 1}"#,
        ] {
            let (step, events) = read(text);
            assert!(matches!(step, ObjStep::Invalid(_)), "{text}: {step:?}");
            assert!(events.is_empty(), "{text}");
        }
    }
}
