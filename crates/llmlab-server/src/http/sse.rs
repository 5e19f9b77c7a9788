//! Server-sent events: the shared chunk stream framed as `data:` lines,
//! ended by `data: [DONE]` as OpenAI does.

use std::convert::Infallible;

use axum::response::sse::Event;
use futures::{Stream, StreamExt};

use llmlab_core::ChatStream;

use crate::openai::chunk_stream::{chunk_stream, StreamItem};
use crate::openai::responses::ChunkBuilder;

pub fn sse_events(
    events: ChatStream,
    chunks: ChunkBuilder,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    chunk_stream(events, chunks, include_usage)
        .map(|item| match item {
            StreamItem::Chunk(value) | StreamItem::Error { envelope: value, .. } => value.to_string(),
        })
        .chain(futures::stream::once(async { "[DONE]".to_owned() }))
        .map(|data| Ok(Event::default().data(data)))
}
