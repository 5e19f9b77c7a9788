//! WebSocket door, `GET /v1/ws`: JSON text frames, several requests at once
//! on one socket, each tagged with the id its client chose.
//!
//! Client frames:
//! - `{"type": "chat.completions" | "completions", "id": "c1", "body": {…}}`
//!   with the body of the HTTP endpoint of that name (always streamed);
//! - `{"type": "images.generations" | "images.edits", "id": "i1", "body":
//!   {…}}` with the JSON body of `/v1/images/generations` (an edit's
//!   `image` and `mask` as base64);
//! - `{"type": "cancel", "id": "c1"}`.
//!
//! Server frames, per request: `{"id", "type": "chunk", "data": <the SSE
//! chunk>}` … (images: `{"id", "type": "progress", "step", "steps"}` and
//! `{"id", "type": "partial", "data": <the SSE partial_image event>}` …
//! then `{"id", "type": "result", "data": <the HTTP answer>}`), then
//! exactly one terminal frame: `{"id", "type": "done"}`,
//! `{"id", "type": "error", "status", "error": {…}}` (OpenAI's error
//! object), or `{"id", "type": "cancelled"}` after the client's cancel. An
//! id names one running request; once its terminal frame is sent the id may
//! be used again. A frame that cannot be read gets an error frame (with its
//! id when it had one); the socket stays open.
//!
//! Outgoing frames pass through a bounded queue: a client that reads slowly
//! holds its requests' streams back instead of growing a buffer. The server
//! pings every [`PING_INTERVAL`]; a socket silent for three intervals is
//! closed. A closed socket cancels every request it started.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use llmlab_core::{Error, ImageEvent, Result};

use crate::observe::{self, Observed, Transport};
use crate::openai::chunk_stream::{chunk_stream, StreamItem};
use crate::openai::errors::{envelope, status_for};
use crate::openai::generation::Generation;
use crate::openai::images::{images_json, partial_event, unix_now, ImagesBody};
use crate::openai::responses::{ChunkBuilder, Endpoint};
use crate::openai::{parse_json, parse_value, OpenAiRequest, ResponseMeta};

use super::AppState;

/// How often the server pings; three silent intervals close the socket.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// Frames waiting to be written before request streams are held back.
const OUTBOX_FRAMES: usize = 32;
/// Requests one socket may run at once.
pub const MAX_REQUESTS_PER_SOCKET: usize = 64;

#[derive(Debug, Deserialize)]
struct ClientFrame {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    body: Option<Value>,
}

/// The requests a socket runs, by id. A cancel frame only cancels; the
/// request's own task removes its entry, just before its terminal frame, so
/// an id is taken until its request has really ended.
type Running = Arc<Mutex<HashMap<String, CancellationToken>>>;

/// How a request ended, as its one terminal frame says.
enum Ending {
    Done,
    /// The client cancelled it.
    Cancelled,
    Failed(Value),
}

pub async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    // A frame may be as large as an HTTP body; a larger one closes the
    // socket with 1009 (message too big).
    let limit = state.config.max_body_bytes;
    // The socket outlives the upgrade request; its requests' spans nest in
    // that request's span, so their logs name the socket's request id too.
    let upgrade_span = tracing::Span::current();
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| serve_socket(socket, state).instrument(upgrade_span))
}

/// What a request frame asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Text(Endpoint),
    Images { edit: bool },
}

/// The route label of a request on a socket (its frame type).
fn route(asked: Asked) -> &'static str {
    match asked {
        Asked::Text(Endpoint::Chat) => "chat.completions",
        Asked::Text(Endpoint::Completion) => "completions",
        Asked::Images { edit: false } => "images.generations",
        Asked::Images { edit: true } => "images.edits",
    }
}

/// Count a frame refused before any request started; frames that are not
/// requests at all (unreadable, unknown type) count under "unknown".
fn refused(route: &str, error: &Error) {
    observe::refused(Transport::WebSocket, route, status_for(error.kind).as_u16());
}

fn error_frame_json(id: Option<&str>, error: &Error) -> Value {
    let status = status_for(error.kind);
    let mut frame = envelope(status, error);
    frame["type"] = json!("error");
    frame["status"] = json!(status.as_u16());
    if let Some(id) = id {
        frame["id"] = json!(id);
    }
    frame
}

fn error_frame(id: Option<&str>, error: &Error) -> Message {
    Message::Text(error_frame_json(id, error).to_string().into())
}

async fn serve_socket(socket: WebSocket, state: AppState) {
    let (mut sink, mut incoming) = socket.split();
    let (outbox, mut outgoing) = mpsc::channel::<Message>(OUTBOX_FRAMES);
    let socket_gone = state.shutdown.child_token();
    let running: Running = Arc::default();

    // The one writer: frames from every request, in the order queued.
    let writer = tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if sink.send(frame).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = socket_gone.cancelled() => break,
            _ = ping.tick() => {
                if last_heard.elapsed() > PING_INTERVAL * 3 {
                    tracing::info!("websocket silent for three ping intervals; closing it");
                    break;
                }
                if outbox.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
            message = incoming.next() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        // tungstenite refuses an oversized frame with this
                        // error; the client learns why before the close.
                        if error.to_string().starts_with("Space limit exceeded") {
                            let close = CloseFrame { code: close_code::SIZE, reason: "message too large".into() };
                            let _ = outbox.send(Message::Close(Some(close))).await;
                        }
                        break;
                    }
                    None => break,
                };
                last_heard = tokio::time::Instant::now();
                match message {
                    Message::Text(text) => {
                        handle_frame(text.as_bytes(), &state, &outbox, &running, &socket_gone).await;
                    }
                    Message::Binary(_) => {
                        let error = Error::invalid("frames must be JSON text, not binary");
                        refused("unknown", &error);
                        if outbox.send(error_frame(None, &error)).await.is_err() {
                            break;
                        }
                    }
                    Message::Close(_) => break,
                    // axum answers pings itself; a pong only proves life.
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
        }
    }
    // Closed (or shutting down): stop every request this socket started.
    socket_gone.cancel();
    drop(outbox);
    let _ = writer.await;
}

async fn handle_frame(
    text: &[u8],
    state: &AppState,
    outbox: &mpsc::Sender<Message>,
    running: &Running,
    socket_gone: &CancellationToken,
) {
    let frame: ClientFrame = match parse_json(text) {
        Ok(frame) => frame,
        Err(error) => {
            refused("unknown", &error);
            let _ = outbox.send(error_frame(None, &error)).await;
            return;
        }
    };
    let Some(id) = frame.id.filter(|id| !id.is_empty()) else {
        let error = Error::invalid_param("id", "every frame needs a non-empty 'id'");
        refused("unknown", &error);
        let _ = outbox.send(error_frame(None, &error)).await;
        return;
    };
    let asked = match frame.kind.as_str() {
        "cancel" => {
            let running = running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(token) = running.get(&id) {
                token.cancel();
            }
            return;
        }
        "chat.completions" => Asked::Text(Endpoint::Chat),
        "completions" => Asked::Text(Endpoint::Completion),
        "images.generations" => Asked::Images { edit: false },
        "images.edits" => Asked::Images { edit: true },
        other => {
            let error = Error::invalid_param(
                "type",
                format!(
                    "unknown frame type '{}' (expected 'chat.completions', 'completions', \
                     'images.generations', 'images.edits' or 'cancel')",
                    llmlab_core::text::echo(other)
                ),
            );
            refused("unknown", &error);
            let _ = outbox.send(error_frame(Some(&id), &error)).await;
            return;
        }
    };
    let cancel = socket_gone.child_token();
    if let Err(error) = register(running, &id, &cancel) {
        refused(route(asked), &error);
        let _ = outbox.send(error_frame(Some(&id), &error)).await;
        return;
    }
    let (state, outbox, running) = (state.clone(), outbox.clone(), Arc::clone(running));
    let socket_gone = socket_gone.clone();
    // Each request on the socket has its own id, span and count; the
    // client's frame id (its own name, unique only on this socket) is
    // logged, cut, for matching.
    let observed = Observed::start(Transport::WebSocket, route(asked), None);
    let span = observed.span().clone();
    span.in_scope(|| tracing::debug!(frame_id = %llmlab_core::text::echo(&id), "websocket request"));
    let task = async move {
        // The service gets a child token: a deadline cancels that one, so
        // `cancel` itself is cancelled only by the client (or the socket).
        let started = match asked {
            Asked::Text(endpoint) => {
                run_request(
                    &id,
                    endpoint,
                    frame.body,
                    &state,
                    &outbox,
                    cancel.child_token(),
                    &observed,
                )
                .await
            }
            Asked::Images { edit } => {
                run_images(&id, edit, frame.body, &state, &outbox, cancel.child_token(), &observed).await
            }
        };
        let ending = match started {
            Ok(Ending::Done) => Ending::Done,
            // Cut short while the socket lives: the client cancelled it.
            _ if cancel.is_cancelled() && !socket_gone.is_cancelled() => Ending::Cancelled,
            Ok(ending) => ending,
            Err(error) => Ending::Failed(error_frame_json(Some(&id), &error)),
        };
        running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        let (frame, status) = match ending {
            Ending::Done => (json!({"id": id, "type": "done"}), 200),
            Ending::Cancelled => (
                json!({"id": id, "type": "cancelled"}),
                llmlab_core::metrics::CLIENT_CLOSED,
            ),
            Ending::Failed(frame) => {
                let status = frame["status"].as_u64().and_then(|s| u16::try_from(s).ok());
                (frame, status.unwrap_or(500))
            }
        };
        // Counted before the terminal frame leaves, so a client that has
        // read it finds the request in /metrics.
        observed.finish(status);
        let _ = outbox.send(Message::Text(frame.to_string().into())).await;
    };
    tokio::spawn(task.instrument(span));
}

/// Record a new request of this socket, unless its id is taken or the
/// socket runs as many requests as it may.
fn register(running: &Running, id: &str, cancel: &CancellationToken) -> Result<()> {
    let mut running = running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if running.contains_key(id) {
        return Err(Error::invalid_param(
            "id",
            format!(
                "request '{}' is already running on this socket",
                llmlab_core::text::echo(id)
            ),
        ));
    }
    if running.len() >= MAX_REQUESTS_PER_SOCKET {
        return Err(Error::new(
            llmlab_core::ErrorKind::Overloaded,
            format!("this socket already runs {MAX_REQUESTS_PER_SOCKET} requests"),
        ));
    }
    running.insert(id.to_owned(), cancel.clone());
    Ok(())
}

/// Run one image request: progress frames, then the result frame; the
/// caller sends the terminal frame.
async fn run_images(
    id: &str,
    edit: bool,
    body: Option<Value>,
    state: &AppState,
    outbox: &mpsc::Sender<Message>,
    cancel: CancellationToken,
    observed: &Observed,
) -> Result<Ending> {
    let body = body.ok_or_else(|| Error::invalid_param("body", "'body' is required"))?;
    let body = parse_value::<ImagesBody>(body)?;
    let (request, _) = if edit {
        body.into_edit_request()?
    } else {
        body.into_request()?
    };
    observed.set_model(&observe::model_label(&state.service, &request.model));
    let mut events = state.service.generate_image(request, cancel).await?;
    while let Some(event) = events.next().await {
        let frame = match event {
            ImageEvent::Progress { step, steps } => json!({"id": id, "type": "progress", "step": step, "steps": steps}),
            ImageEvent::Partial {
                index,
                partial_index,
                image,
            } => {
                json!({"id": id, "type": "partial", "data": partial_event(index, partial_index, &image, unix_now())})
            }
            ImageEvent::Done(result) => {
                observed.set_model(&observe::model_label(&state.service, &result.model));
                json!({"id": id, "type": "result", "data": images_json(&result, unix_now())})
            }
            ImageEvent::Error(error) => return Err(error),
        };
        let last = frame["type"] == "result";
        if outbox.send(Message::Text(frame.to_string().into())).await.is_err() {
            break;
        }
        if last {
            return Ok(Ending::Done);
        }
    }
    Ok(Ending::Done)
}

/// Run one request and forward its chunks; the caller sends the terminal
/// frame (errors before the stream starts come back as `Err`).
async fn run_request(
    id: &str,
    endpoint: Endpoint,
    body: Option<Value>,
    state: &AppState,
    outbox: &mpsc::Sender<Message>,
    cancel: CancellationToken,
    observed: &Observed,
) -> Result<Ending> {
    let body = body.ok_or_else(|| Error::invalid_param("body", "'body' is required"))?;
    let generation = Generation::new(parse_value::<OpenAiRequest>(body)?, endpoint)?;
    let include_usage = generation.delivery.include_usage;
    observed.set_model(&observe::model_label(&state.service, &generation.requested_model));
    let events = generation.start(&state.service, cancel).await?;
    observed.set_model(&observe::model_label(&state.service, events.model()));
    let chunks = ChunkBuilder {
        endpoint,
        meta: ResponseMeta::new(endpoint.id_prefix(), events.model()),
        streamed_bytes: 0,
    };
    let include_usage = include_usage || state.config.always_include_usage;
    let mut stream = std::pin::pin!(chunk_stream(events, chunks, include_usage));
    while let Some(item) = stream.next().await {
        let frame = match item {
            StreamItem::Chunk(data) => json!({"id": id, "type": "chunk", "data": data}),
            // An error ends the stream: it is the terminal frame.
            StreamItem::Error {
                status, mut envelope, ..
            } => {
                envelope["id"] = json!(id);
                envelope["type"] = json!("error");
                envelope["status"] = json!(status);
                return Ok(Ending::Failed(envelope));
            }
        };
        // Waits while the client reads slowly: backpressure, not a buffer.
        if outbox.send(Message::Text(frame.to_string().into())).await.is_err() {
            break;
        }
    }
    Ok(Ending::Done)
}
