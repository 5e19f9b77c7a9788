//! Stop strings matched across token boundaries.
//!
//! Text that could be the beginning of a stop string is held back until it is
//! known either to complete the stop string (then it is dropped together with
//! everything after it) or not to (then it is released). A stop string is
//! therefore never partly shown to the client.

/// Result of scanning new text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopScan {
    /// No stop string yet; this text is safe to emit (may be empty).
    Continue(String),
    /// A stop string was found; emit this text and end generation.
    Stopped(String),
}

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let stops = stops
            .into_iter()
            .map(Into::into)
            .filter(|s: &String| !s.is_empty())
            .collect();
        Self {
            stops,
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopScan {
        if self.stops.is_empty() {
            return StopScan::Continue(text.to_owned());
        }
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let before = self.held[..at].to_owned();
            self.held.clear();
            return StopScan::Stopped(before);
        }
        let keep = self.longest_partial_suffix();
        let release_to = self.held.len() - keep;
        let released = self.held[..release_to].to_owned();
        self.held.drain(..release_to);
        StopScan::Continue(released)
    }

    /// End of generation without a stop string: release what was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest suffix of `held` that is a proper
    /// prefix of some stop string (only char boundaries are considered).
    fn longest_partial_suffix(&self) -> usize {
        let held = self.held.as_str();
        held.char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let suffix = &held[i..];
                self.stops
                    .iter()
                    .any(|s| s.len() > suffix.len() && s.starts_with(suffix))
            })
            .map_or(0, |i| held.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `pieces` and return (emitted text, stopped?).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().copied());
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopScan::Continue(t) => out.push_str(&t),
                StopScan::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_tokens_is_never_emitted() {
        assert_eq!(
            run(&["STOP"], &["hello S", "T", "OP and more"]),
            ("hello ".into(), true)
        );
        assert_eq!(run(&["\n\n"], &["line\n", "\nnext"]), ("line".into(), true));
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        let text = "The answer is 42.<END>ignored";
        for a in 0..=text.len() {
            for b in a..=text.len() {
                let pieces = [&text[..a], &text[a..b], &text[b..]];
                assert_eq!(
                    run(&["<END>"], &pieces),
                    ("The answer is 42.".into(), true),
                    "cuts {a},{b}"
                );
            }
        }
    }

    #[test]
    fn near_misses_are_released() {
        let mut m = StopMatcher::new(["STOP"]);
        assert_eq!(m.push("ST"), StopScan::Continue(String::new()));
        assert_eq!(m.push("ART"), StopScan::Continue("START".into()));
        assert_eq!(run(&["STOP"], &["STO"]), ("STO".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins_and_multibyte_is_safe() {
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".into(), true));
        assert_eq!(run(&["世界"], &["你好世", "界!"]), ("你好".into(), true));
        assert_eq!(run(&["é!"], &["café", " ok"]), ("café ok".into(), false));
    }

    #[test]
    fn no_stops_passes_everything_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }
}
