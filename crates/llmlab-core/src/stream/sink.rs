//! The event buffer every processor writes into.
//!
//! It merges neighbouring pieces of the same kind (fewer, larger events per
//! push), numbers tool calls and gives each its id, and implements the rule
//! that whitespace-only text between structures is not worth an event.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{ChatEvent, ToolCallDelta};

#[derive(Debug, Default)]
pub(super) struct EventSink {
    events: Vec<ChatEvent>,
    /// Calls begun so far; the current call's index is `calls - 1`.
    calls: u32,
    /// Whitespace of the current gap, held until we know the gap has text.
    gap_blank: String,
    /// The current gap already had text, so everything in it is content.
    gap_open: bool,
}

impl EventSink {
    /// Content kept exactly as given (empty text produces nothing).
    pub fn content(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        match self.events.last_mut() {
            Some(ChatEvent::Content(last)) => last.push_str(text),
            _ => self.events.push(ChatEvent::Content(text.to_owned())),
        }
    }

    pub fn reasoning(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        match self.events.last_mut() {
            Some(ChatEvent::Reasoning(last)) => last.push_str(text),
            _ => self.events.push(ChatEvent::Reasoning(text.to_owned())),
        }
    }

    /// Content found between structures (tool calls, Harmony messages). A gap
    /// that is only whitespace is dropped when it closes; as soon as it holds
    /// anything else it is streamed, including the whitespace before.
    pub fn gap_text(&mut self, text: &str) {
        if self.gap_open {
            self.content(text);
        } else if text.chars().all(char::is_whitespace) {
            self.gap_blank.push_str(text);
        } else {
            self.gap_open = true;
            let blank = std::mem::take(&mut self.gap_blank);
            self.content(&blank);
            self.content(text);
        }
    }

    /// A structure starts (or the stream ends): the gap is over.
    pub fn close_gap(&mut self) {
        self.gap_blank.clear();
        self.gap_open = false;
    }

    /// Start a new tool call; its first delta carries the id and the name.
    pub fn begin_call(&mut self, name: String) {
        self.events.push(ChatEvent::ToolCall(ToolCallDelta {
            index: self.calls,
            id: Some(new_call_id()),
            name: Some(name),
            arguments: String::new(),
        }));
        self.calls += 1;
    }

    /// A piece of the current call's arguments.
    pub fn call_args(&mut self, text: &str) {
        debug_assert!(self.calls > 0, "arguments before any call began");
        if text.is_empty() {
            return;
        }
        let index = self.calls.saturating_sub(1);
        match self.events.last_mut() {
            Some(ChatEvent::ToolCall(delta)) if delta.index == index => delta.arguments.push_str(text),
            _ => self.events.push(ChatEvent::ToolCall(ToolCallDelta {
                index,
                id: None,
                name: None,
                arguments: text.to_owned(),
            })),
        }
    }

    /// The events produced since the last call.
    pub fn take(&mut self) -> Vec<ChatEvent> {
        std::mem::take(&mut self.events)
    }
}

/// `call_` and 24 letters or digits. Ids must be distinct, not secret: std's
/// randomly keyed hasher over a process-wide counter is enough and needs no
/// extra dependency.
pub(super) fn new_call_id() -> String {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const LEN: usize = "call_".len() + 24;
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let serial = COUNTER.fetch_add(1, Ordering::Relaxed);
    let keys = RandomState::new();
    let mut id = String::with_capacity(LEN);
    id.push_str("call_");
    // 62^10 < 2^64, so each hash yields ten symbols.
    let mut round = 0u64;
    while id.len() < LEN {
        let mut bits = keys.hash_one((serial, round));
        for _ in 0..10.min(LEN - id.len()) {
            id.push(char::from(ALPHABET[(bits % 62) as usize]));
            bits /= 62;
        }
        round += 1;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_have_the_openai_shape_and_differ() {
        let ids: Vec<String> = (0..100).map(|_| new_call_id()).collect();
        for id in &ids {
            let tail = id.strip_prefix("call_").expect("prefix");
            assert_eq!(tail.len(), 24, "{id}");
            assert!(tail.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn whitespace_only_gaps_are_dropped() {
        let mut sink = EventSink::default();
        sink.gap_text("\n ");
        sink.close_gap();
        sink.gap_text(" ");
        sink.gap_text("hi");
        sink.gap_text(" ");
        sink.close_gap();
        assert_eq!(sink.take(), vec![ChatEvent::Content(" hi ".into())]);
    }

    #[test]
    fn argument_pieces_merge_into_the_open_delta() {
        let mut sink = EventSink::default();
        sink.begin_call("f".into());
        sink.call_args("{\"a\":");
        sink.call_args("1}");
        let events = sink.take();
        assert_eq!(events.len(), 1);
        let ChatEvent::ToolCall(delta) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (delta.index, delta.name.as_deref(), delta.arguments.as_str()),
            (0, Some("f"), "{\"a\":1}")
        );
        sink.call_args("x");
        assert_eq!(
            sink.take(),
            vec![ChatEvent::ToolCall(ToolCallDelta {
                index: 0,
                id: None,
                name: None,
                arguments: "x".into()
            })]
        );
    }
}
