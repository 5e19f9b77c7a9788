//! A core event stream as the OpenAI streaming chunks every streaming door
//! sends (SSE frames them as `data:` lines, the WebSocket as frames, the job
//! queue as reply messages).
//!
//! Dropping the returned stream (the client went away) drops the core
//! stream, which tells the engine to stop within one decode step.

use futures::Stream;
use serde_json::Value;

use llmlab_core::{ChatEvent, ChatStream, Error, ErrorKind, FinishReason};

use super::errors::{envelope, status_for};
use super::responses::ChunkBuilder;

/// One item of a streamed answer.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// An OpenAI chunk (`chat.completion.chunk` or `text_completion`).
    Chunk(Value),
    /// The error that ended the stream, in OpenAI's envelope, and its status.
    Error {
        kind: ErrorKind,
        status: u16,
        envelope: Value,
    },
}

fn error_item(error: &Error) -> StreamItem {
    let status = status_for(error.kind);
    StreamItem::Error {
        kind: error.kind,
        status: status.as_u16(),
        envelope: envelope(status, error),
    }
}

pub fn chunk_stream(
    mut events: ChatStream,
    mut chunks: ChunkBuilder,
    include_usage: bool,
) -> impl Stream<Item = StreamItem> {
    async_stream::stream! {
        // The role chunk opens the answer, so it waits for the first event
        // that belongs to one: a request that fails before it starts gets
        // its error alone.
        let mut role = chunks.role();
        let mut usage = None;
        let mut stopped_by = None;
        // Log-probabilities wait for the text of their tokens.
        let mut logprobs = Vec::new();
        while let Some(event) = events.next_event().await {
            let opens_answer = !matches!(
                event,
                ChatEvent::Started | ChatEvent::Error(_) | ChatEvent::Done { finish_reason: FinishReason::Cancelled }
            );
            if opens_answer {
                if let Some(role) = role.take() {
                    yield StreamItem::Chunk(role);
                }
            }
            match event {
                ChatEvent::Started => {}
                ChatEvent::Logprobs(items) => logprobs.extend(items),
                ChatEvent::Content(text) => {
                    let chunk = chunks.content(&text, &logprobs);
                    logprobs.clear();
                    yield StreamItem::Chunk(chunk);
                }
                ChatEvent::Reasoning(text) => {
                    if let Some(chunk) = chunks.reasoning(&text) {
                        yield StreamItem::Chunk(chunk);
                    }
                }
                ChatEvent::ToolCall(delta) => {
                    if let Some(chunk) = chunks.tool_call(&delta) {
                        yield StreamItem::Chunk(chunk);
                    }
                }
                ChatEvent::Usage { usage: u, .. } => usage = Some(u),
                ChatEvent::Stopped(trip) => stopped_by = Some(trip),
                ChatEvent::Done { finish_reason: FinishReason::Cancelled } => {
                    // The client is still here, so the server cancelled:
                    // shutdown ran out of grace time.
                    yield error_item(&Error::new(ErrorKind::Cancelled, "the request was cancelled: the server is shutting down"));
                    break;
                }
                ChatEvent::Done { finish_reason } => {
                    yield StreamItem::Chunk(chunks.finish(finish_reason, &logprobs, stopped_by.as_ref()));
                    if let (true, Some(u)) = (include_usage, usage.as_ref()) {
                        yield StreamItem::Chunk(chunks.usage(u));
                    }
                    break;
                }
                ChatEvent::Error(error) => {
                    tracing::warn!(error = %error, "generation failed after streaming began");
                    yield error_item(&error);
                    break;
                }
            }
        }
    }
}
