//! Finding where a JSON value ends while its text is still arriving.
//!
//! Tool-call arguments are streamed to the client as raw JSON text, so we
//! never parse them into a value; we only need to know where the value ends.
//! That takes tracking strings, escapes and bracket nesting, nothing more.

use super::sink::EventSink;

/// What a scanner made of the text it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scan {
    /// All of the text belongs to the value, which goes on.
    More,
    /// The value ends after this many bytes of the text.
    End(usize),
    /// The byte at this offset cannot continue the value.
    Invalid(usize),
}

pub(super) fn is_json_blank(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether a JSON value may start with this byte.
pub(super) fn is_value_start(byte: u8) -> bool {
    matches!(byte, b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Kind {
    #[default]
    Unstarted,
    /// Object or array.
    Nested,
    Str,
    /// Number, `true`, `false` or `null`.
    Scalar,
}

/// Finds the end of one JSON value that starts at the first byte fed (the
/// caller skips whitespace before it). Structural characters are ASCII, so
/// scanning bytes never splits a character at a reported offset.
#[derive(Debug, Default)]
pub(super) struct ValueScanner {
    kind: Kind,
    /// Closing brackets still expected, innermost last.
    closers: Vec<u8>,
    in_string: bool,
    escaped: bool,
}

impl ValueScanner {
    pub fn feed(&mut self, text: &str) -> Scan {
        for (at, byte) in text.bytes().enumerate() {
            match self.kind {
                Kind::Unstarted => match byte {
                    b'{' | b'[' => {
                        self.kind = Kind::Nested;
                        self.closers.push(if byte == b'{' { b'}' } else { b']' });
                    }
                    b'"' => {
                        self.kind = Kind::Str;
                        self.in_string = true;
                    }
                    _ if is_value_start(byte) => self.kind = Kind::Scalar,
                    _ => return Scan::Invalid(at),
                },
                Kind::Scalar => {
                    if !(byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'-' | b'.')) {
                        return Scan::End(at);
                    }
                }
                Kind::Str => {
                    if self.string_byte(byte) {
                        return Scan::End(at + 1);
                    }
                }
                Kind::Nested if self.in_string => {
                    self.string_byte(byte);
                }
                Kind::Nested => match byte {
                    b'"' => self.in_string = true,
                    b'{' => self.closers.push(b'}'),
                    b'[' => self.closers.push(b']'),
                    b'}' | b']' => {
                        if self.closers.pop() != Some(byte) {
                            return Scan::Invalid(at);
                        }
                        if self.closers.is_empty() {
                            return Scan::End(at + 1);
                        }
                    }
                    _ => {}
                },
            }
        }
        Scan::More
    }

    /// One byte inside a string; true when it is the closing quote.
    fn string_byte(&mut self, byte: u8) -> bool {
        if self.escaped {
            self.escaped = false;
        } else if byte == b'\\' {
            self.escaped = true;
        } else if byte == b'"' {
            self.in_string = false;
            return true;
        }
        false
    }

    pub fn is_nested(&self) -> bool {
        self.kind == Kind::Nested
    }

    /// A scalar is complete when the text simply ends; anything else is cut.
    pub fn complete_at_eof(&self) -> bool {
        self.kind == Kind::Scalar
    }
}

/// An `arguments` value being read. Once the call has begun (`live`), an
/// object or array streams its raw text straight out; strings and other
/// scalars are held and converted when complete.
#[derive(Debug)]
pub(super) struct ArgsValue {
    scanner: ValueScanner,
    live: bool,
    held: String,
}

impl ArgsValue {
    pub fn new(live: bool) -> Self {
        Self {
            scanner: ValueScanner::default(),
            live,
            held: String::new(),
        }
    }

    pub fn feed(&mut self, text: &str, sink: &mut EventSink) -> Scan {
        let scan = self.scanner.feed(text);
        // Text before an error still goes out, so the arguments of a broken
        // call do not depend on how the text happened to be chunked.
        let used = match scan {
            Scan::More => text.len(),
            Scan::End(n) | Scan::Invalid(n) => n,
        };
        if self.live && self.scanner.is_nested() {
            sink.call_args(&text[..used]);
        } else {
            self.held.push_str(&text[..used]);
        }
        scan
    }

    pub fn complete_at_eof(&self) -> bool {
        self.scanner.complete_at_eof()
    }

    /// The held text as call arguments: a JSON string is decoded (some models
    /// send the arguments object encoded as a string), `null` means no
    /// arguments. Empty when everything was streamed already.
    pub fn take_arguments(&mut self) -> String {
        let held = std::mem::take(&mut self.held);
        if held == "null" {
            "{}".to_owned()
        } else if held.starts_with('"') {
            serde_json::from_str::<String>(&held).unwrap_or(held)
        } else {
            held
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(text: &str) -> Scan {
        ValueScanner::default().feed(text)
    }

    #[test]
    fn finds_the_end_of_values() {
        let nested = r#"{"a": "}", "b": [1, {"c": "\"]"}]} tail"#;
        assert_eq!(scan_all(nested), Scan::End(nested.len() - " tail".len()));
        assert_eq!(scan_all(r#""say \"hi\"", next"#), Scan::End(12));
        assert_eq!(scan_all("12.5e3}"), Scan::End(6));
        assert_eq!(scan_all("true,"), Scan::End(4));
        assert_eq!(scan_all(r#"{"a": [1, 2}"#), Scan::Invalid(11));
        assert_eq!(scan_all("x"), Scan::Invalid(0));
        assert_eq!(scan_all(r#"{"a": "b"#), Scan::More);
    }

    #[test]
    fn chunks_do_not_change_the_end() {
        let text = r#"{"k": "v\\", "u": "é\"}"} rest"#;
        let whole = match scan_all(text) {
            Scan::End(n) => n,
            other => panic!("{other:?}"),
        };
        for cut in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
            let mut scanner = ValueScanner::default();
            let end = match scanner.feed(&text[..cut]) {
                Scan::More => match scanner.feed(&text[cut..]) {
                    Scan::End(n) => cut + n,
                    other => panic!("{other:?}"),
                },
                Scan::End(n) => n,
                Scan::Invalid(_) => panic!("invalid at cut {cut}"),
            };
            assert_eq!(end, whole, "cut at {cut}");
        }
    }

    #[test]
    fn string_arguments_are_decoded() {
        let mut sink = EventSink::default();
        let mut value = ArgsValue::new(true);
        let encoded = r#""{\"city\": \"Paris\"}""#;
        assert_eq!(value.feed(encoded, &mut sink), Scan::End(encoded.len()));
        assert_eq!(value.take_arguments(), r#"{"city": "Paris"}"#);
        assert!(sink.take().is_empty());
    }
}
