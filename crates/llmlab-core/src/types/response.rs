//! The aggregated (non-streaming) response, built from the event stream so
//! that streaming and non-streaming answers can never disagree.

use serde::{Deserialize, Serialize};

use super::{ChatEvent, FinishReason, FunctionCall, Timings, TokenLogprob, ToolCall, Usage};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
    /// Present when the request asked for log-probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// The guard that stopped the generation, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<crate::guards::GuardTrip>,
}

/// Folds events into a [`ChatResponse`].
#[derive(Debug, Default)]
pub struct ChatResponseBuilder {
    content: String,
    reasoning: String,
    tool_calls: Vec<ToolCall>,
    logprobs: Option<Vec<TokenLogprob>>,
    usage: Usage,
    timings: Timings,
    finish_reason: Option<FinishReason>,
    stopped_by: Option<crate::guards::GuardTrip>,
    error: Option<Error>,
}

impl ChatResponseBuilder {
    pub fn push(&mut self, event: ChatEvent) {
        match event {
            ChatEvent::Content(text) => self.content.push_str(&text),
            ChatEvent::Reasoning(text) => self.reasoning.push_str(&text),
            ChatEvent::ToolCall(delta) => {
                let index = delta.index as usize;
                while self.tool_calls.len() <= index {
                    self.tool_calls.push(ToolCall {
                        id: String::new(),
                        kind: "function".to_owned(),
                        function: FunctionCall {
                            name: String::new(),
                            arguments: String::new(),
                        },
                    });
                }
                let call = &mut self.tool_calls[index];
                if let Some(id) = delta.id {
                    call.id = id;
                }
                if let Some(name) = delta.name {
                    call.function.name = name;
                }
                call.function.arguments.push_str(&delta.arguments);
            }
            ChatEvent::Logprobs(items) => self.logprobs.get_or_insert_with(Vec::new).extend(items),
            ChatEvent::Usage { usage, timings } => {
                self.usage = usage;
                self.timings = timings;
            }
            ChatEvent::Stopped(trip) => self.stopped_by = Some(trip),
            ChatEvent::Started => {}
            ChatEvent::Done { finish_reason } => self.finish_reason = Some(finish_reason),
            ChatEvent::Error(error) => self.error = Some(error),
        }
    }

    pub fn finish(self) -> Result<ChatResponse> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let finish_reason = self
            .finish_reason
            .ok_or_else(|| Error::internal("generation stream ended without a finish reason"))?;
        if finish_reason == FinishReason::Cancelled {
            return Err(Error::cancelled());
        }
        Ok(ChatResponse {
            content: self.content,
            reasoning: (!self.reasoning.is_empty()).then_some(self.reasoning),
            tool_calls: self.tool_calls,
            finish_reason,
            usage: self.usage,
            timings: self.timings,
            logprobs: self.logprobs,
            stopped_by: self.stopped_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolCallDelta;

    #[test]
    fn folds_deltas_in_order() {
        let mut b = ChatResponseBuilder::default();
        b.push(ChatEvent::Reasoning("hmm".into()));
        b.push(ChatEvent::Content("Hel".into()));
        b.push(ChatEvent::Content("lo".into()));
        b.push(ChatEvent::ToolCall(ToolCallDelta {
            index: 0,
            id: Some("c1".into()),
            name: Some("f".into()),
            arguments: "{\"a\":".into(),
        }));
        b.push(ChatEvent::ToolCall(ToolCallDelta {
            index: 0,
            id: None,
            name: None,
            arguments: "1}".into(),
        }));
        b.push(ChatEvent::Usage {
            usage: Usage::new(3, 2),
            timings: Timings::default(),
        });
        b.push(ChatEvent::Done {
            finish_reason: FinishReason::ToolCalls,
        });
        let r = b.finish().unwrap();
        assert_eq!(r.content, "Hello");
        assert_eq!(r.reasoning.as_deref(), Some("hmm"));
        assert_eq!(r.tool_calls[0].function.arguments, "{\"a\":1}");
        assert_eq!(r.usage.total_tokens, 5);
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    }

    #[test]
    fn error_event_wins_and_missing_finish_is_an_error() {
        let mut b = ChatResponseBuilder::default();
        b.push(ChatEvent::Content("x".into()));
        b.push(ChatEvent::Error(Error::unavailable("gone")));
        assert_eq!(b.finish().unwrap_err().message, "gone");
        assert!(ChatResponseBuilder::default().finish().is_err());
    }
}
