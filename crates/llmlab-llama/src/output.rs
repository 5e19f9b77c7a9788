//! Where a sequence's generated text goes: through the request's stream
//! processors (reasoning router, tool-call parser), when it has them, to the
//! client.

use llmlab_core::stream::{ProcessorChain, StreamProcessor};
use llmlab_core::text::TokenTextAssembler;
use llmlab_core::{ChatEvent, ChatEventSender, FinishReason};

pub(crate) struct Output {
    pub events: ChatEventSender,
    pub processor: Option<ProcessorChain>,
}

impl Output {
    /// Route a piece of text; false when the client is gone.
    pub fn text(&mut self, text: &str) -> bool {
        if text.is_empty() {
            return !self.events.is_closed();
        }
        match self.processor.as_mut() {
            None => self.event(ChatEvent::Content(text.to_owned())),
            Some(processor) => processor
                .push(text)
                .into_iter()
                .all(|event| self.events.send(event).is_ok()),
        }
    }

    pub fn event(&self, event: ChatEvent) -> bool {
        self.events.send(event).is_ok()
    }

    /// Generation ended for `reason`: release text held back by `text` (when
    /// it was not cut by a stop string), flush the processors, and report
    /// `tool_calls` when the reply was a call.
    pub fn finish(&mut self, text: Option<&mut TokenTextAssembler>, reason: FinishReason) -> FinishReason {
        if let Some(text) = text {
            let rest = text.finish();
            self.text(&rest);
        }
        let Some(processor) = self.processor.as_mut() else {
            return reason;
        };
        for event in processor.finish() {
            let _ = self.events.send(event);
        }
        if reason == FinishReason::Stop && processor.saw_tool_call() {
            FinishReason::ToolCalls
        } else {
            reason
        }
    }
}
