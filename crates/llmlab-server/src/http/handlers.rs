//! Endpoint handlers: decode, call the core service, encode. Nothing here
//! validates generation settings or maps errors by itself (see errors.rs).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use llmlab_core::{ChatEvent, ChatStream, Timings};

use crate::openai::generation::Generation;
use crate::openai::responses::{full_response, ChunkBuilder, Endpoint};
use crate::openai::{parse_json, Delivery, OpenAiRequest, ResponseMeta};

use super::errors::ApiError;
use super::model_label::ModelLabel;
use super::sse::sse_events;
use super::AppState;

type ApiResult = Result<Response, ApiError>;

pub(super) fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| ApiError::from_body_rejection(&rejection, limit))
}

pub async fn chat_completions(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    start(&state, Endpoint::Chat, body).await
}

pub async fn completions(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    start(&state, Endpoint::Completion, body).await
}

async fn start(state: &AppState, endpoint: Endpoint, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let body = body_bytes(body, state.config.max_body_bytes)?;
    let generation = Generation::new(parse_json::<OpenAiRequest>(&body)?, endpoint)?;
    let (requested, delivery) = (generation.requested_model.clone(), generation.delivery);
    let events = generation.start(&state.service, state.shutdown.child_token());
    generate(state, endpoint, &requested, events, delivery).await
}

/// Await the core service's stream and answer it, labelling the response
/// (or error) with the model for the request metrics: the model the stream
/// runs on, or for a request that never started, the one it named.
async fn generate(
    state: &AppState,
    endpoint: Endpoint,
    requested: &str,
    events: impl std::future::Future<Output = llmlab_core::Result<ChatStream>>,
    delivery: Delivery,
) -> ApiResult {
    match events.await {
        Ok(events) => {
            let label = ModelLabel::for_request(state, events.model());
            let meta = ResponseMeta::new(endpoint.id_prefix(), events.model());
            let outcome = answer(state, endpoint, meta, events, delivery).await;
            outcome.map(|r| label.attach(r)).map_err(|e| e.for_model(&label))
        }
        Err(e) => Err(ApiError::from(e).for_model(&ModelLabel::for_request(state, requested))),
    }
}

async fn answer(
    state: &AppState,
    endpoint: Endpoint,
    meta: ResponseMeta,
    mut events: ChatStream,
    delivery: Delivery,
) -> ApiResult {
    if delivery.stream {
        // Errors found before the first token (prompt longer than the
        // context, a schema that is not a grammar) arrive at once when the
        // engine is free: answer those with a status, not a 200 stream.
        if let Some(ChatEvent::Error(error)) = events.peek_within(state.config.sse_keep_alive).await {
            return Err(error.clone().into());
        }
        let include_usage = delivery.include_usage || state.config.always_include_usage;
        let stream = sse_events(
            events,
            ChunkBuilder {
                endpoint,
                meta,
                streamed_bytes: 0,
            },
            include_usage,
        );
        // Comment lines keep proxies and clients from timing out while a
        // long prompt is processed.
        let keep_alive = KeepAlive::new().interval(state.config.sse_keep_alive);
        return Ok(Sse::new(stream).keep_alive(keep_alive).into_response());
    }
    let response = events.collect_response().await?;
    let mut http = Json(full_response(endpoint, &meta, &response)).into_response();
    add_timing_headers(http.headers_mut(), &response.timings);
    Ok(http)
}

/// `x-llmlab-*-ms` headers and a standard `Server-Timing` header.
fn add_timing_headers(headers: &mut HeaderMap, t: &Timings) {
    let pairs = [
        ("x-llmlab-queue-ms", t.queue_ms),
        ("x-llmlab-prompt-ms", t.prompt_ms),
        ("x-llmlab-generation-ms", t.generation_ms),
        ("x-llmlab-total-ms", t.total_ms()),
    ];
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(&format!("{value:.1}")) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    let server_timing = format!(
        "queue;dur={:.1}, prompt;dur={:.1}, generation;dur={:.1}",
        t.queue_ms, t.prompt_ms, t.generation_ms
    );
    if let Ok(v) = HeaderValue::from_str(&server_timing) {
        headers.insert(HeaderName::from_static("server-timing"), v);
    }
}

fn model_json(status: &llmlab_core::service::ModelStatus) -> serde_json::Value {
    let mut model = json!({
        "id": status.id,
        "object": "model",
        "created": 0,
        "owned_by": "llmlab",
        "kind": status.kind.as_str(),
        "input_modalities": status.input_modalities,
        "state": status.state,
        "active_requests": status.active_requests,
        "pinned": status.pinned,
        "memory_bytes": status.memory_bytes,
        "expires_in_secs": status.expires_in_secs,
        "circuit": status.circuit,
        "consecutive_failures": status.consecutive_failures,
    });
    if let Some(error) = &status.error {
        model["error"] = json!(error);
    }
    if let Some(degraded) = &status.degraded {
        model["degraded"] = json!(degraded);
    }
    if let Some(bytes) = status.gpu_memory_bytes {
        model["gpu_memory_bytes"] = json!(bytes);
    }
    model
}

fn model_status(state: &AppState, id: &str) -> Response {
    let status = state.service.models().into_iter().find(|m| m.id == id);
    Json(status.as_ref().map(model_json)).into_response()
}

/// `POST /v1/models/{id}/load`: load now (waits for the load).
pub async fn load_model(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    state.service.load(&id, None).await?;
    Ok(model_status(&state, &id))
}

/// `POST /v1/models/{id}/unload`: free the model's memory now.
pub async fn unload_model(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    state.service.unload(&id).await?;
    Ok(model_status(&state, &id))
}

pub async fn list_models(State(state): State<AppState>) -> Json<serde_json::Value> {
    let data: Vec<_> = state.service.models().iter().map(model_json).collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn get_model(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    state.service.registry().require(&id)?;
    Ok(model_status(&state, &id))
}

/// 200 when the server is ready (its start-up preloads are over), 503 with
/// `Retry-After` while they run; the body lists models loading, loaded and
/// failed either way.
pub async fn health(State(state): State<AppState>) -> Response {
    let health = state.service.health();
    if health.ready {
        return (StatusCode::OK, Json(health)).into_response();
    }
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(health)).into_response();
    response
        .headers_mut()
        .insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Prometheus text exposition of every llmlab metric.
pub async fn metrics() -> Response {
    let body = super::prometheus::recorder().render();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

pub async fn not_found(uri: axum::http::Uri, method: axum::http::Method) -> ApiError {
    ApiError::route_not_found(format!("unknown route: {method} {}", uri.path()))
}

pub async fn method_not_allowed(uri: axum::http::Uri, method: axum::http::Method) -> ApiError {
    ApiError::with_code(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("method {method} is not allowed on {}", uri.path()),
    )
}
