//! WebSocket door, `GET /v1/ws`: JSON text frames, several requests at once
//! on one socket, each tagged with the id its client chose.
//!
//! Client frames:
//! - `{"type": "chat.completions" | "completions", "id": "c1", "body": {…}}`
//!   with the body of the HTTP endpoint of that name (always streamed);
//! - `{"type": "cancel", "id": "c1"}`.
//!
//! Server frames, per request: `{"id", "type": "chunk", "data": <the SSE
//! chunk>}` …, then `{"id", "type": "done"}`, or `{"id", "type": "error",
//! "status", "error": {…}}` (OpenAI's error object). A frame that cannot be
//! read gets an error frame (with its id when it had one); the socket stays
//! open.
//!
//! Outgoing frames pass through a bounded queue: a client that reads slowly
//! holds its requests' streams back instead of growing a buffer. The server
//! pings every [`PING_INTERVAL`]; a socket silent for three intervals is
//! closed. A closed socket cancels every request it started.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use llmlab_core::{Error, Result};

use crate::openai::chunk_stream::{chunk_stream, StreamItem};
use crate::openai::errors::{envelope, status_for};
use crate::openai::generation::Generation;
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

type Running = Arc<Mutex<HashMap<String, CancellationToken>>>;

pub async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve_socket(socket, state))
}

fn error_frame(id: Option<&str>, error: &Error) -> Message {
    let status = status_for(error.kind);
    let mut frame = envelope(status, error);
    frame["type"] = json!("error");
    frame["status"] = json!(status.as_u16());
    if let Some(id) = id {
        frame["id"] = json!(id);
    }
    Message::Text(frame.to_string().into())
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
                let Some(Ok(message)) = message else { break };
                last_heard = tokio::time::Instant::now();
                match message {
                    Message::Text(text) => {
                        handle_frame(text.as_bytes(), &state, &outbox, &running, &socket_gone).await;
                    }
                    Message::Binary(_) => {
                        let error = Error::invalid("frames must be JSON text, not binary");
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
            let _ = outbox.send(error_frame(None, &error)).await;
            return;
        }
    };
    let Some(id) = frame.id.filter(|id| !id.is_empty()) else {
        let error = Error::invalid_param("id", "every frame needs a non-empty 'id'");
        let _ = outbox.send(error_frame(None, &error)).await;
        return;
    };
    let endpoint = match frame.kind.as_str() {
        "cancel" => {
            let token = running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
            if let Some(token) = token {
                token.cancel();
            }
            return;
        }
        "chat.completions" => Endpoint::Chat,
        "completions" => Endpoint::Completion,
        other => {
            let error = Error::invalid_param(
                "type",
                format!("unknown frame type '{other}' (expected 'chat.completions', 'completions' or 'cancel')"),
            );
            let _ = outbox.send(error_frame(Some(&id), &error)).await;
            return;
        }
    };
    let cancel = socket_gone.child_token();
    if let Err(error) = register(running, &id, &cancel) {
        let _ = outbox.send(error_frame(Some(&id), &error)).await;
        return;
    }
    let (state, outbox, running) = (state.clone(), outbox.clone(), Arc::clone(running));
    tokio::spawn(async move {
        if let Err(error) = run_request(&id, endpoint, frame.body, &state, &outbox, cancel).await {
            let _ = outbox.send(error_frame(Some(&id), &error)).await;
        }
        running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    });
}

/// Record a new request of this socket, unless its id is taken or the
/// socket runs as many requests as it may.
fn register(running: &Running, id: &str, cancel: &CancellationToken) -> Result<()> {
    let mut running = running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if running.contains_key(id) {
        return Err(Error::invalid_param(
            "id",
            format!("request '{id}' is already running on this socket"),
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

/// Run one request and forward its chunks; errors before the stream starts
/// are returned, errors inside it are sent as the stream's last frame.
async fn run_request(
    id: &str,
    endpoint: Endpoint,
    body: Option<Value>,
    state: &AppState,
    outbox: &mpsc::Sender<Message>,
    cancel: CancellationToken,
) -> Result<()> {
    let body = body.ok_or_else(|| Error::invalid_param("body", "'body' is required"))?;
    let generation = Generation::new(parse_value::<OpenAiRequest>(body)?, endpoint, &state.service)?;
    let (model, include_usage) = (generation.model.clone(), generation.delivery.include_usage);
    let events = generation.start(&state.service, cancel).await?;
    let chunks = ChunkBuilder {
        endpoint,
        meta: ResponseMeta::new(endpoint.id_prefix(), &model),
        streamed_bytes: 0,
    };
    let include_usage = include_usage || state.config.always_include_usage;
    let mut stream = std::pin::pin!(chunk_stream(events, chunks, include_usage));
    while let Some(item) = stream.next().await {
        let frame = match item {
            StreamItem::Chunk(data) => json!({"id": id, "type": "chunk", "data": data}),
            StreamItem::Error {
                status, mut envelope, ..
            } => {
                envelope["id"] = json!(id);
                envelope["type"] = json!("error");
                envelope["status"] = json!(status);
                envelope
            }
        };
        // Waits while the client reads slowly: backpressure, not a buffer.
        if outbox.send(Message::Text(frame.to_string().into())).await.is_err() {
            return Ok(());
        }
    }
    let _ = outbox
        .send(Message::Text(json!({"id": id, "type": "done"}).to_string().into()))
        .await;
    Ok(())
}
