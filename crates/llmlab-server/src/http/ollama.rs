//! Ollama's API (`/api/*`) on the same port and core service as the
//! OpenAI routes. Thin: decode (crate::ollama), call the service, encode;
//! every error leaves through [`OllamaError`] in Ollama's shape.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete as delete_route, get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde_json::{json, Value};

use llmlab_core::keep_alive::KeepAlive;
use llmlab_core::service::ModelState;
use llmlab_core::{ChatEvent, ChatStream, Error};

use crate::ollama::embed::{embed_json, embeddings_json, EmbedBody, EmbeddingsBody};
use crate::ollama::errors::OllamaError;
use crate::ollama::models::{self, display_name, resolve_name};
use crate::ollama::request::{Ask, ChatBody, Delivery, GenerateBody, GenerateRequest, ModelBody};
use crate::ollama::responses::{ndjson_lines, Answer, Endpoint};
use crate::ollama::OLLAMA_API_VERSION;
use crate::openai::parse_json;

use super::errors::ApiError;
use super::model_label::ModelLabel;
use super::AppState;

type Reply = Result<Response, OllamaError>;
type RawBody = Result<Bytes, BytesRejection>;

/// Ollama's routes, merged into the door's router (and under its layers:
/// the API key, body limits, metrics).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/chat", post(chat))
        .route("/api/generate", post(generate))
        .route("/api/embed", post(embed))
        .route("/api/embeddings", post(embeddings))
        .route("/api/tags", get(tags))
        .route("/api/show", post(show))
        .route("/api/ps", get(ps))
        .route("/api/version", get(version))
        .route("/api/pull", post(pull))
        .route("/api/delete", delete_route(delete))
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after();
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(value) = retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// A body the door could not read (too large, broken): the shared rule's
/// status, in Ollama's shape.
fn read_body(state: &AppState, body: RawBody) -> Result<Bytes, OllamaError> {
    body.map_err(|rejection| {
        let e = ApiError::from_body_rejection(&rejection, state.config.max_body_bytes);
        OllamaError::with_status(e.status, e.error)
    })
}

/// Label the answer (or the error) with the model, for request metrics.
fn labelled(reply: Reply, label: &ModelLabel) -> Response {
    label.attach(reply.unwrap_or_else(IntoResponse::into_response))
}

/// NDJSON: one JSON object per line, as Ollama streams.
fn ndjson(lines: impl Stream<Item = Value> + Send + 'static) -> Response {
    let body = Body::from_stream(lines.map(|line| Ok::<_, Infallible>(format!("{line}\n"))));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// The name an answer echoes: the client's, or the default model's.
fn echoed(name: &str, model: &str) -> String {
    if name.is_empty() {
        display_name(model)
    } else {
        name.to_owned()
    }
}

/// Answer a running generation: NDJSON lines, or (`stream: false`) one
/// object once it is over.
async fn answer(state: &AppState, mut events: ChatStream, answer: Answer) -> Reply {
    if answer.delivery.stream {
        // Errors found before the first token (a prompt longer than the
        // context, a schema that is not a grammar) arrive at once: answer
        // those with a status, not a 200 stream.
        if let Some(ChatEvent::Error(error)) = events.peek_within(state.config.sse_keep_alive).await {
            return Err(error.clone().into());
        }
        return Ok(ndjson(ndjson_lines(events, answer)));
    }
    let response = events.collect_response().await?;
    Ok(Json(answer.whole(&response)).into_response())
}

/// A body with nothing to generate from: load the model (Ollama's way to
/// preload), or with `keep_alive` 0 unload it.
async fn lifecycle(
    state: &AppState,
    endpoint: Endpoint,
    name: &str,
    keep_alive: Option<KeepAlive>,
    delivery: Delivery,
) -> Reply {
    let started = Instant::now();
    let id = resolve_name(state.service.registry(), name)?;
    let id = state.service.model_id(&id).to_owned();
    let reason = if keep_alive == Some(KeepAlive::For(Duration::ZERO)) {
        let busy = state
            .service
            .models()
            .iter()
            .any(|m| m.id == id && m.active_requests > 0);
        if busy {
            // Unloading now would fail the requests queued on the model:
            // its keep-alive becomes 0 instead, so it goes once they end.
            state.service.load(&id, keep_alive).await?;
        } else {
            state.service.unload(&id).await?;
        }
        "unload"
    } else {
        state.service.load(&id, keep_alive).await?;
        "load"
    };
    let answer = Answer {
        endpoint,
        model: echoed(name, &id),
        delivery,
        started,
        load: started.elapsed(),
    };
    let line = answer.lifecycle(reason);
    Ok(if delivery.stream {
        ndjson(futures::stream::once(async { line }))
    } else {
        Json(line).into_response()
    })
}

pub async fn chat(State(state): State<AppState>, body: RawBody) -> Response {
    let started = Instant::now();
    let mut label = ModelLabel("unknown".to_owned());
    let reply = async {
        let body = read_body(&state, body)?;
        let (ask, delivery) = parse_json::<ChatBody>(&body)?.into_request()?;
        let mut request = match ask {
            Ask::Load { model, keep_alive } => {
                return lifecycle(&state, Endpoint::Chat, &model, keep_alive, delivery).await
            }
            Ask::Generate(request) => request,
        };
        let name;
        (name, label) = rename_to_registry_id(&state, &mut request.model)?;
        let events = state.service.chat(request, state.shutdown.child_token()).await?;
        let answer_to = Answer {
            endpoint: Endpoint::Chat,
            model: echoed(&name, events.model()),
            delivery,
            started,
            load: started.elapsed(),
        };
        answer(&state, events, answer_to).await
    }
    .await;
    labelled(reply, &label)
}

/// Swap the model name a client sent (`qwen:latest`) for the registry id
/// the service knows; returns the name as sent, to echo back, and the
/// metrics label of the model.
fn rename_to_registry_id(state: &AppState, model: &mut String) -> Result<(String, ModelLabel), OllamaError> {
    let sent = std::mem::take(model);
    *model = resolve_name(state.service.registry(), &sent)?;
    Ok((sent, ModelLabel::for_request(state, model)))
}

pub async fn generate(State(state): State<AppState>, body: RawBody) -> Response {
    let started = Instant::now();
    let mut label = ModelLabel("unknown".to_owned());
    let reply = async {
        let body = read_body(&state, body)?;
        let (ask, delivery) = parse_json::<GenerateBody>(&body)?.into_request()?;
        let request = match ask {
            Ask::Load { model, keep_alive } => {
                return lifecycle(&state, Endpoint::Generate, &model, keep_alive, delivery).await
            }
            Ask::Generate(request) => request,
        };
        let cancel = state.shutdown.child_token();
        let (name, events) = match request {
            GenerateRequest::Templated(mut r) => {
                let name;
                (name, label) = rename_to_registry_id(&state, &mut r.model)?;
                (name, state.service.chat(r, cancel).await?)
            }
            GenerateRequest::Raw(mut r) => {
                let name;
                (name, label) = rename_to_registry_id(&state, &mut r.model)?;
                (name, state.service.complete(r, cancel).await?)
            }
        };
        let answer_to = Answer {
            endpoint: Endpoint::Generate,
            model: echoed(&name, events.model()),
            delivery,
            started,
            load: started.elapsed(),
        };
        answer(&state, events, answer_to).await
    }
    .await;
    labelled(reply, &label)
}

pub async fn embed(State(state): State<AppState>, body: RawBody) -> Response {
    let started = Instant::now();
    let mut label = ModelLabel("unknown".to_owned());
    let reply = async {
        let body = read_body(&state, body)?;
        let mut request = parse_json::<EmbedBody>(&body)?.into_request()?;
        let name;
        (name, label) = rename_to_registry_id(&state, &mut request.model)?;
        let answer = state.service.embed(request).await?;
        let total = started.elapsed().as_nanos() as u64;
        Ok(Json(embed_json(&echoed(&name, &answer.model), &answer, total)).into_response())
    }
    .await;
    labelled(reply, &label)
}

pub async fn embeddings(State(state): State<AppState>, body: RawBody) -> Response {
    let mut label = ModelLabel("unknown".to_owned());
    let reply = async {
        let body = read_body(&state, body)?;
        let mut request = parse_json::<EmbeddingsBody>(&body)?.into_request()?;
        request.model = resolve_name(state.service.registry(), &request.model)?;
        label = ModelLabel::for_request(&state, &request.model);
        let answer = state.service.embed(request).await?;
        Ok(Json(embeddings_json(&answer)).into_response())
    }
    .await;
    labelled(reply, &label)
}

/// What the files of `ids` say of themselves (each read opens a model
/// file's metadata, on a blocking thread); unreadable ones are left out.
async fn facts_of(state: &AppState, ids: Vec<String>) -> models::Facts {
    let mut facts = models::Facts::new();
    for id in ids {
        if let Ok(found) = state.service.describe(&id).await {
            facts.insert(id, found);
        }
    }
    facts
}

pub async fn tags(State(state): State<AppState>) -> Response {
    let registry = state.service.registry();
    let present = registry.models.iter().filter(|m| m.path.exists()).map(|m| m.id.clone());
    let facts = facts_of(&state, present.collect()).await;
    Json(models::tags(registry, &facts)).into_response()
}

pub async fn ps(State(state): State<AppState>) -> Response {
    let statuses = state.service.models();
    let loaded = statuses
        .iter()
        .filter(|s| s.state == ModelState::Loaded)
        .map(|s| s.id.clone());
    let facts = facts_of(&state, loaded.collect()).await;
    Json(models::ps(state.service.registry(), &statuses, &facts)).into_response()
}

pub async fn version() -> Response {
    Json(json!({ "version": OLLAMA_API_VERSION })).into_response()
}

/// The registry entry a model body names (404 in Ollama's words if none).
fn named_model(state: &AppState, body: &ModelBody) -> Result<llmlab_core::registry::ModelSpec, OllamaError> {
    let registry = state.service.registry();
    let id = resolve_name(registry, body.model()?)?;
    Ok(registry.require(&id)?.clone())
}

pub async fn show(State(state): State<AppState>, body: RawBody) -> Reply {
    let body = parse_json::<ModelBody>(&read_body(&state, body)?)?;
    let spec = named_model(&state, &body)?;
    let facts = state.service.describe(&spec.id).await?;
    Ok(Json(models::show(&spec, &facts)).into_response())
}

/// `/api/pull`: fetch the model from its registry sources; status lines
/// (Ollama's default), or the last status alone.
pub async fn pull(State(state): State<AppState>, body: RawBody) -> Reply {
    let body = parse_json::<ModelBody>(&read_body(&state, body)?)?;
    let lines = crate::ollama::pull::pull_lines(named_model(&state, &body)?)?;
    if body.stream.unwrap_or(true) {
        let lines = lines.map(|line| line.unwrap_or_else(|e| crate::ollama::errors::body(&e)));
        return Ok(ndjson(lines));
    }
    let mut lines = std::pin::pin!(lines);
    let mut last = json!({});
    while let Some(line) = lines.next().await {
        last = line?;
    }
    Ok(Json(last).into_response())
}

/// `/api/delete` is refused: deleting a model's files from an HTTP request
/// is an operator's decision this server does not offer (remove them from
/// the models folder instead). Unknown models still get Ollama's 404.
pub async fn delete(State(state): State<AppState>, body: RawBody) -> Reply {
    let body = parse_json::<ModelBody>(&read_body(&state, body)?)?;
    let spec = named_model(&state, &body)?;
    Err(OllamaError::with_status(
        StatusCode::FORBIDDEN,
        Error::invalid(format!(
            "deleting models is disabled on this server; to remove '{}', delete its files from the models folder",
            spec.id
        )),
    ))
}

/// Longest error body the shape layer reads.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Errors that the shared layers answer for every route (a missing API
/// key, a body too large or not JSON, an unknown route, a panic) are in
/// OpenAI's envelope, `{"error": {"message": ...}}`. Ollama's clients read
/// `error` as a string, so on `/api/*` the message is lifted out; errors
/// already in Ollama's shape pass untouched.
pub async fn ollama_error_shape(request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/api/") {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    if !(response.status().is_client_error() || response.status().is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        let fallback = json!({"error": parts.status.canonical_reason().unwrap_or("error")});
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::from(fallback.to_string()));
    };
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned));
    match message {
        Some(message) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(json!({ "error": message }).to_string()))
        }
        None => Response::from_parts(parts, Body::from(bytes)),
    }
}
