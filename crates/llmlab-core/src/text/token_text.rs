//! Token bytes in, client-safe text out: UTF-8 reassembly followed by stop
//! string matching, in that order, so a stop string made of multi-byte
//! characters split across tokens is still found.

use super::{StopMatcher, StopScan, Utf8Stream};

#[derive(Debug, Default)]
pub struct TokenTextAssembler {
    utf8: Utf8Stream,
    stops: StopMatcher,
}

impl TokenTextAssembler {
    pub fn new(stops: &[String]) -> Self {
        Self {
            utf8: Utf8Stream::default(),
            stops: StopMatcher::new(stops.iter().cloned()),
        }
    }

    /// Feed the bytes of one token.
    pub fn push(&mut self, bytes: &[u8]) -> StopScan {
        let text = self.utf8.push(bytes);
        self.stops.push(&text)
    }

    /// Generation ended for another reason: release everything held back.
    pub fn finish(&mut self) -> String {
        let tail = self.utf8.finish();
        match self.stops.push(&tail) {
            StopScan::Continue(text) => text + &self.stops.finish(),
            StopScan::Stopped(text) => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_stop_string_split_inside_characters() {
        // "世界" is split in the middle of both characters across tokens.
        let bytes = "你好世界!".as_bytes();
        let tokens = [&bytes[..4], &bytes[4..8], &bytes[8..11], &bytes[11..]];
        let mut a = TokenTextAssembler::new(&["世界".to_owned()]);
        let mut out = String::new();
        for t in tokens {
            match a.push(t) {
                StopScan::Continue(s) => out.push_str(&s),
                StopScan::Stopped(s) => {
                    out.push_str(&s);
                    assert_eq!(out, "你好");
                    return;
                }
            }
        }
        panic!("stop string not found");
    }

    #[test]
    fn finish_releases_partial_stop_and_incomplete_bytes() {
        let mut a = TokenTextAssembler::new(&["</end>".to_owned()]);
        assert_eq!(a.push(b"ok </e"), StopScan::Continue("ok ".into()));
        assert_eq!(a.push(&"é".as_bytes()[..1]), StopScan::Continue(String::new()));
        assert_eq!(a.finish(), "</e\u{fffd}");
    }
}
