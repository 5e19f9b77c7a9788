//! Client-supplied text quoted back in error messages, cut to a sane
//! length: a 10,000-character model id must not come back whole in a
//! message, a header or gRPC metadata.

use std::borrow::Cow;

/// Characters of a client's value an error message repeats.
pub const ECHO_MAX_CHARS: usize = 64;

/// `text` cut to at most `max_chars` characters, on a character boundary,
/// the last of them an ellipsis when something was cut.
pub fn clip(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => Cow::Borrowed(text),
        Some((end, _)) => {
            let keep = text[..end].char_indices().last().map_or(0, |(i, _)| i);
            Cow::Owned(format!("{}…", &text[..keep]))
        }
    }
}

/// A client's value as an error message quotes it (see [`ECHO_MAX_CHARS`]).
pub fn echo(text: &str) -> Cow<'_, str> {
    clip(text, ECHO_MAX_CHARS)
}

/// What a caught panic said, cut to `max_chars`, for logs and operators
/// (never for clients).
pub fn panic_text(payload: &(dyn std::any::Any + Send), max_chars: usize) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    clip(text, max_chars).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "ab…");
        let exact = "x".repeat(ECHO_MAX_CHARS);
        assert_eq!(echo(&exact), exact.as_str());
        let long = "é".repeat(10_000);
        let cut = echo(&long);
        assert_eq!(cut.chars().count(), ECHO_MAX_CHARS);
        assert!(cut.ends_with('…'));
    }
}
