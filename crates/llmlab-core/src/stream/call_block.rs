//! What every tool-call block format shares (`hermes`, `llama3`,
//! `mistral`): the reader trait, its step result and the helpers for what
//! follows a call. Its own file, so that the formats and the parser that
//! drives them import it from here and not from each other.

use super::markers::blank_prefix_len;
use super::sink::EventSink;

/// What a block did with the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BlockStep {
    /// Consumed this many bytes (possibly none, after a change of phase).
    Consumed(usize),
    /// Cannot decide about the front of the buffer yet.
    NeedMore,
    /// The block ends after this many bytes; what follows is read as text.
    Closed(usize),
    /// Not a tool call after all, found before anything was emitted: the
    /// block's text up to this many bytes is content, the rest is read as text.
    Malformed(usize),
}

/// The part of a format that reads what follows its marker.
pub(super) trait CallBlock: Send {
    fn step(&mut self, buf: &str, sink: &mut EventSink) -> BlockStep;
    /// True once the block emitted part of a call and can no longer become
    /// content.
    fn committed(&self) -> bool;
    /// Generation ended inside a committed block; `rest` is unread text.
    fn finish(&mut self, rest: &str, sink: &mut EventSink) {
        finish_rest(rest, "", sink);
    }
    /// Whether the text after the block is read like the start of a reply
    /// (Llama 3 chains calls with `;` and no further marker).
    fn reopens_reply(&self) -> bool {
        false
    }
}

/// After a block: `tag`, whitespace or a partial `tag` are dropped, anything
/// else is content.
pub(super) fn finish_rest(rest: &str, tag: &str, sink: &mut EventSink) {
    let trimmed = rest.trim();
    if !(trimmed.is_empty() || tag.starts_with(trimmed)) {
        sink.gap_text(rest);
    }
}

/// Skip whitespace and an optional closing `tag` after a call.
pub(super) fn expect_close(buf: &str, tag: &str) -> BlockStep {
    let blank = blank_prefix_len(buf);
    let rest = &buf[blank..];
    if rest.starts_with(tag) {
        BlockStep::Closed(blank + tag.len())
    } else if rest.is_empty() || tag.starts_with(rest) {
        if blank > 0 {
            BlockStep::Consumed(blank)
        } else {
            BlockStep::NeedMore
        }
    } else {
        BlockStep::Closed(blank)
    }
}
