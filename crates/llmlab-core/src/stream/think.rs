//! `<think>…</think>` reasoning blocks.
//!
//! Text is kept exactly as generated except for the tags themselves. A block
//! that is still open when generation ends stays reasoning: the model simply
//! ran out of tokens while thinking.

use super::markers::safe_len;
use super::sink::EventSink;
use super::StreamProcessor;
use crate::ChatEvent;

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Debug)]
pub(super) struct ThinkTagRouter {
    in_reasoning: bool,
    /// Unrouted text: at most a partial tag between pushes.
    buf: String,
    sink: EventSink,
}

impl ThinkTagRouter {
    /// `starts_in_reasoning`: the prompt already opened the block, so the
    /// stream begins inside it without an opening tag.
    pub fn new(starts_in_reasoning: bool) -> Self {
        Self {
            in_reasoning: starts_in_reasoning,
            buf: String::new(),
            sink: EventSink::default(),
        }
    }

    /// Route the first `len` bytes of the buffer to the current channel.
    fn emit(&mut self, len: usize) {
        let text = &self.buf[..len];
        if self.in_reasoning {
            self.sink.reasoning(text);
        } else {
            self.sink.content(text);
        }
        self.buf.drain(..len);
    }
}

impl StreamProcessor for ThinkTagRouter {
    fn push(&mut self, text: &str) -> Vec<ChatEvent> {
        self.buf.push_str(text);
        loop {
            let tag = if self.in_reasoning { CLOSE } else { OPEN };
            match self.buf.find(tag) {
                Some(at) => {
                    self.emit(at);
                    self.buf.drain(..tag.len());
                    self.in_reasoning = !self.in_reasoning;
                }
                None => {
                    self.emit(safe_len(&self.buf, &[tag]));
                    return self.sink.take();
                }
            }
        }
    }

    fn finish(&mut self) -> Vec<ChatEvent> {
        self.emit(self.buf.len());
        self.sink.take()
    }
}

#[cfg(test)]
mod tests {
    use crate::stream::test_support::{check, content, reasoning};
    use crate::stream::{ProcessorChain, ReasoningFormat, ToolCallFormat};

    fn think(starts_in_reasoning: bool) -> impl Fn() -> ProcessorChain {
        move || {
            ProcessorChain::new(
                ReasoningFormat::ThinkTags,
                ToolCallFormat::None,
                &[],
                starts_in_reasoning,
            )
        }
    }

    #[test]
    fn one_block_then_the_answer() {
        check(
            think(false),
            "<think>\nThe user wants 2+2.\n</think>\n\nIt is 4.",
            &[reasoning("\nThe user wants 2+2.\n"), content("\n\nIt is 4.")],
        );
    }

    #[test]
    fn several_blocks_with_text_between() {
        check(
            think(false),
            "Intro <think>first</think> middle <think>second</think> end",
            &[
                content("Intro "),
                reasoning("first"),
                content(" middle "),
                reasoning("second"),
                content(" end"),
            ],
        );
    }

    #[test]
    fn starts_inside_reasoning_when_the_prompt_opened_the_block() {
        check(
            think(true),
            "Let me think…</think>\n\nAnswer: ü",
            &[reasoning("Let me think…"), content("\n\nAnswer: ü")],
        );
    }

    #[test]
    fn an_unclosed_block_stays_reasoning() {
        check(
            think(false),
            "<think>still thinking when tokens ran out </thi",
            &[reasoning("still thinking when tokens ran out </thi")],
        );
    }

    #[test]
    fn look_alike_tags_stay_content() {
        check(
            think(false),
            "a <thin b < think> <thinking> c <",
            &[content("a <thin b < think> <thinking> c <")],
        );
    }

    #[test]
    fn without_a_reasoning_format_tags_are_content() {
        let plain = || ProcessorChain::new(ReasoningFormat::None, ToolCallFormat::None, &[], false);
        check(plain, "<think>x</think>y", &[content("<think>x</think>y")]);
    }
}
