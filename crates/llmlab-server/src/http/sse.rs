//! Turns a core event stream into OpenAI server-sent events.
//!
//! Dropping the returned stream (the client went away) drops the core
//! stream, which tells the engine to stop within one decode step.

use std::convert::Infallible;

use axum::response::sse::Event;
use futures::Stream;

use llmlab_core::{ChatEvent, ChatStream, Error, ErrorKind, FinishReason};

use super::errors::{envelope, status_for};
use super::responses::ChunkBuilder;

fn data(value: &serde_json::Value) -> Result<Event, Infallible> {
    Ok(Event::default().data(value.to_string()))
}

fn error_event(error: &Error) -> Result<Event, Infallible> {
    data(&envelope(status_for(error.kind), error))
}

pub fn sse_events(
    mut events: ChatStream,
    mut chunks: ChunkBuilder,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        if let Some(role) = chunks.role() {
            yield data(&role);
        }
        let mut usage = None;
        let mut stopped_by = None;
        // Log-probabilities wait for the text of their tokens.
        let mut logprobs = Vec::new();
        while let Some(event) = events.next_event().await {
            match event {
                ChatEvent::Logprobs(items) => logprobs.extend(items),
                ChatEvent::Content(text) => {
                    let chunk = chunks.content(&text, &logprobs);
                    logprobs.clear();
                    yield data(&chunk);
                }
                ChatEvent::Reasoning(text) => {
                    if let Some(chunk) = chunks.reasoning(&text) {
                        yield data(&chunk);
                    }
                }
                ChatEvent::ToolCall(delta) => {
                    if let Some(chunk) = chunks.tool_call(&delta) {
                        yield data(&chunk);
                    }
                }
                ChatEvent::Usage { usage: u, .. } => usage = Some(u),
                ChatEvent::Stopped(trip) => stopped_by = Some(trip),
                ChatEvent::Done { finish_reason: FinishReason::Cancelled } => {
                    // The client is still here, so the server cancelled:
                    // shutdown ran out of grace time.
                    yield error_event(&Error::new(ErrorKind::Cancelled, "the request was cancelled: the server is shutting down"));
                    break;
                }
                ChatEvent::Done { finish_reason } => {
                    yield data(&chunks.finish(finish_reason, &logprobs, stopped_by.as_ref()));
                    if let (true, Some(u)) = (include_usage, usage.as_ref()) {
                        yield data(&chunks.usage(u));
                    }
                    break;
                }
                ChatEvent::Error(error) => {
                    tracing::warn!(error = %error, "generation failed after streaming began");
                    yield error_event(&error);
                    break;
                }
            }
        }
        yield Ok(Event::default().data("[DONE]"));
    }
}
