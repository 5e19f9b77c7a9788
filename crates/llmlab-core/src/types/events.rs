//! The stream of events a chat or completion produces, and the stream type
//! that carries them from a pipeline to a transport.

use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::Error;

/// Why generation ended. Serialises to OpenAI's values, plus `cancelled`,
/// which transports turn into an error (the client left, or the server is
/// shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
    /// The reply is one or more tool calls.
    ToolCalls,
    /// The caller cancelled or went away.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Token counts, OpenAI shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    /// Prompt tokens whose KV cache was reused instead of processed again.
    #[serde(default)]
    pub cached_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            cached_tokens: 0,
        }
    }

    pub fn with_cached(mut self, cached_tokens: u32) -> Self {
        self.cached_tokens = cached_tokens;
        self
    }
}

/// Where the time of one request went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Waiting for the engine.
    pub queue_ms: f64,
    /// Processing the prompt, up to and including the first sampled token.
    pub prompt_ms: f64,
    /// Generating the remaining tokens.
    pub generation_ms: f64,
    pub prompt_tokens_per_second: f64,
    /// Tokens decoded after the first one, per second of `generation_ms`.
    pub generation_tokens_per_second: f64,
}

impl Timings {
    pub fn total_ms(&self) -> f64 {
        self.queue_ms + self.prompt_ms + self.generation_ms
    }
}

/// A fragment of a tool call; `id` and `name` come with the first fragment of
/// each call, `arguments` arrive as pieces of a JSON text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: String,
}

/// Log-probability of one generated token and, when asked, of the most
/// likely alternatives at that position (from the model's raw distribution).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// The token's bytes: a token may hold part of a UTF-8 character.
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// One event of a generation stream, in order: `Started`, deltas, then
/// `Usage`, then exactly one `Done` or `Error` as the last event.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// The engine took the request: its wait in the queue is over and its
    /// prompt is being processed. Sent once, before any output; a request
    /// refused before it starts (a prompt too long) gets only its error.
    Started,
    Content(String),
    Reasoning(String),
    ToolCall(ToolCallDelta),
    /// Sent (only when requested) just before the text of the token(s) it
    /// describes; text held back by stop-string matching comes later.
    Logprobs(Vec<TokenLogprob>),
    /// A guard stopped the generation (sent before `Usage` and `Done`, whose
    /// finish reason is then `stop`).
    Stopped(crate::guards::GuardTrip),
    Usage {
        usage: Usage,
        timings: Timings,
    },
    Done {
        finish_reason: FinishReason,
    },
    Error(Error),
}

impl ChatEvent {
    /// True for the event that ends a stream.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Done { .. } | Self::Error(_))
    }
}

/// Sees every event of a stream as its consumer receives it (metrics).
pub trait StreamObserver: Send {
    fn observe(&mut self, event: &ChatEvent);
}

/// Receiving end of a generation. Dropping it tells the producer that nobody
/// listens any more, which cancels the generation.
pub struct ChatStream {
    rx: mpsc::UnboundedReceiver<ChatEvent>,
    observers: Vec<Box<dyn StreamObserver>>,
    /// An event already received (and observed) by `peek_within`.
    front: Option<ChatEvent>,
    /// Kept alive as long as the stream (the model lease).
    _guard: Option<Box<dyn std::any::Any + Send>>,
    /// The registry id of the model generating (set by the service), so
    /// that doors answer with it without looking it up.
    model: String,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatStream")
            .field("observers", &self.observers.len())
            .finish_non_exhaustive()
    }
}

/// Sending end used by pipelines. Unbounded on purpose: the engine thread
/// must never block on one slow consumer while it decodes for everyone else;
/// generation length bounds the buffer.
pub type ChatEventSender = mpsc::UnboundedSender<ChatEvent>;

impl ChatStream {
    pub fn channel() -> (ChatEventSender, ChatStream) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            tx,
            ChatStream {
                rx,
                observers: Vec::new(),
                front: None,
                _guard: None,
                model: String::new(),
            },
        )
    }

    /// A stream that yields the given events (used by tests and fakes).
    pub fn from_events(events: impl IntoIterator<Item = ChatEvent>) -> Self {
        let (tx, stream) = Self::channel();
        for event in events {
            let _ = tx.send(event);
        }
        stream
    }

    /// Keep `guard` alive until the stream is dropped (a model lease: the
    /// model cannot be unloaded for idleness while someone reads from it).
    pub fn holding(mut self, guard: impl std::any::Any + Send) -> Self {
        self._guard = Some(Box::new(guard));
        self
    }

    /// Name the model that generates the stream (the service does).
    pub fn for_model(mut self, id: &str) -> Self {
        id.clone_into(&mut self.model);
        self
    }

    /// The registry id of the model generating the stream (empty for a
    /// stream that did not come from the service).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Attach an observer that sees each event as it is received.
    pub fn observed(mut self, observer: impl StreamObserver + 'static) -> Self {
        self.observers.push(Box::new(observer));
        self
    }

    fn seen(&mut self, event: Option<ChatEvent>) -> Option<ChatEvent> {
        if let Some(event) = event.as_ref() {
            for observer in &mut self.observers {
                observer.observe(event);
            }
        }
        event
    }

    pub async fn next_event(&mut self) -> Option<ChatEvent> {
        if let Some(event) = self.front.take() {
            return Some(event);
        }
        let event = self.rx.recv().await;
        self.seen(event)
    }

    /// Blocking receive for synchronous callers (CLI, tests outside a runtime).
    pub fn blocking_next(&mut self) -> Option<ChatEvent> {
        if let Some(event) = self.front.take() {
            return Some(event);
        }
        let event = self.rx.blocking_recv();
        self.seen(event)
    }

    /// The first event, if it arrives within `wait`; it stays in the stream.
    /// Transports use it to answer errors found before generation (a prompt
    /// too long for the context) with a proper status instead of a stream.
    pub async fn peek_within(&mut self, wait: std::time::Duration) -> Option<&ChatEvent> {
        if self.front.is_none() {
            if let Ok(event) = tokio::time::timeout(wait, self.rx.recv()).await {
                self.front = self.seen(event);
            }
        }
        self.front.as_ref()
    }

    /// Drain the stream into one response, blocking the current thread
    /// (never call this inside an async runtime).
    pub fn collect_blocking(mut self) -> crate::Result<super::ChatResponse> {
        let mut builder = super::ChatResponseBuilder::default();
        while let Some(event) = self.blocking_next() {
            builder.push(event);
        }
        builder.finish()
    }

    /// Drain the stream into one response.
    pub async fn collect_response(mut self) -> crate::Result<super::ChatResponse> {
        let mut builder = super::ChatResponseBuilder::default();
        while let Some(event) = self.next_event().await {
            builder.push(event);
        }
        builder.finish()
    }
}

impl futures_core::Stream for ChatStream {
    type Item = ChatEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChatEvent>> {
        if let Some(event) = self.front.take() {
            return Poll::Ready(Some(event));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(event) => Poll::Ready(self.seen(event)),
            Poll::Pending => Poll::Pending,
        }
    }
}
