//! Turns token byte pieces into text without ever splitting a character.
//!
//! A token's bytes may end in the middle of a multi-byte UTF-8 character
//! (emoji and CJK text are often split across two or three tokens). The
//! incomplete tail is held back until the next piece completes it. Bytes that
//! can never become valid UTF-8 are replaced by U+FFFD, so a model that emits
//! garbage produces visible replacement characters instead of an error.

#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Append the bytes of one token and return every complete character.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(valid) => {
                    out.push_str(valid);
                    start = self.pending.len();
                    break;
                }
                Err(err) => {
                    let valid_end = start + err.valid_up_to();
                    // Safe: from_utf8 just told us this range is valid.
                    out.push_str(std::str::from_utf8(&self.pending[start..valid_end]).unwrap_or_default());
                    match err.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            start = valid_end;
                            break;
                        }
                        // Invalid bytes: replace them and go on.
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid_end + len;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// End of stream: whatever is still incomplete becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_in_pieces(bytes: &[u8], cuts: &[usize]) -> String {
        let mut stream = Utf8Stream::default();
        let mut out = String::new();
        let mut last = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            out.push_str(&stream.push(&bytes[last..cut]));
            last = cut;
        }
        out.push_str(&stream.finish());
        out
    }

    #[test]
    fn every_split_of_multibyte_text_reassembles_exactly() {
        let text = "héllo 世界 🦀 ok";
        let bytes = text.as_bytes();
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                assert_eq!(feed_in_pieces(bytes, &[a, b]), text, "cuts at {a},{b}");
            }
        }
    }

    #[test]
    fn never_emits_half_a_character() {
        let crab = "🦀".as_bytes();
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.push(&crab[..1]), "");
        assert_eq!(stream.push(&crab[1..3]), "");
        assert_eq!(stream.pending_len(), 3);
        assert_eq!(stream.push(&crab[3..]), "🦀");
        assert_eq!(stream.pending_len(), 0);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(stream.push(b"\xe4\xb8"), "");
        assert_eq!(stream.finish(), "\u{fffd}");
    }
}
