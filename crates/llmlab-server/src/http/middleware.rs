//! Request ids, tracing spans, API-key checks, request body limits, and
//! the JSON envelope on every error response.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::{FutureExt, Stream, StreamExt};
use tracing::Instrument;

use crate::api_key::{self, KeyCheck};
use crate::observe::{self, Observed, Transport, REQUEST_ID_HEADER};

use super::errors::ApiError;
use super::model_label::ModelLabel;
use llmlab_core::text::clip;

/// Accept the client's `x-request-id` (or make one), run the request inside
/// its span, return the id on the response, and count the request by
/// route, model and status when it ends (see `crate::observe`, shared by
/// every door).
pub async fn observe_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let offered = request.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok());
    let observed = Observed::start(Transport::Http, &route, offered);
    observed.record_http(request.method().as_str(), request.uri().path());
    let mut response = next.run(request).instrument(observed.span().clone()).await;
    if let Some(model) = response.extensions().get::<ModelLabel>() {
        observed.set_model(&model.0);
    }
    if let Ok(value) = HeaderValue::from_str(observed.id()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    observe::finish_http(observed, response)
}

/// Who must present the API key: everyone, on every path but the probes'
/// (`/health`, `/openapi.json`, and `/metrics` unless asked otherwise) and
/// the playground's static files (`/` and the exact paths of its assets).
/// Unknown routes and wrong methods are behind the key too: without it, a
/// client gets 401 and learns nothing about which routes exist.
#[derive(Clone)]
pub struct KeyGate {
    key: Option<Arc<str>>,
    metrics_require_key: bool,
}

impl KeyGate {
    pub fn new(key: Option<&str>, metrics_require_key: bool) -> Self {
        Self {
            key: key.map(Arc::from),
            metrics_require_key,
        }
    }

    fn is_open(&self, path: &str) -> bool {
        match path {
            "/health" | "/openapi.json" => true,
            "/metrics" => !self.metrics_require_key,
            _ => super::playground::is_public(path),
        }
    }
}

pub async fn require_api_key(State(gate): State<KeyGate>, request: Request, next: Next) -> Response {
    if gate.key.is_none() || gate.is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match api_key::check(gate.key.as_deref(), authorization) {
        KeyCheck::Allowed => next.run(request).await,
        refused => ApiError::http(StatusCode::UNAUTHORIZED, refused.message()).into_response(),
    }
}

/// Limits on request bodies that must hold before a handler reads one.
#[derive(Clone)]
pub struct BodyGuard {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// - A declared `Content-Length` over the limit is a 413 at once, before a
///   byte of the body is read.
/// - A body in a media type that is plainly not JSON is a 415. Requests
///   without a type, and the types `curl -d` and `fetch` send by default
///   (form-urlencoded, text/plain), still pass: many clients send JSON so.
/// - The whole body must arrive within the body timeout; a client that
///   declares a large body and sends little holds a connection and a task
///   otherwise. The answer is 408, and hyper closes the connection (the
///   rest of the body is never read).
pub async fn guard_body(State(guard): State<BodyGuard>, request: Request, next: Next) -> Response {
    if request.body().size_hint().exact() == Some(0) {
        return next.run(request).await;
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > guard.max_bytes as u64) {
        let message = format!("request body is larger than {} bytes", guard.max_bytes);
        return close_after(ApiError::http(StatusCode::PAYLOAD_TOO_LARGE, message).into_response());
    }
    // OpenAI's image edits are the one multipart route.
    let multipart_route = request.uri().path() == "/v1/images/edits";
    if request.method() == Method::POST && !multipart_route {
        if let Some(kind) = request.headers().get(header::CONTENT_TYPE) {
            if !json_compatible(kind) {
                let message = "request body must be JSON (Content-Type: application/json)";
                return ApiError::with_code(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message)
                    .into_response();
            }
        }
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let body = Body::from_stream(Deadline {
        inner: body.into_data_stream(),
        sleep: Box::pin(tokio::time::sleep(guard.timeout)),
        timed_out: Arc::clone(&timed_out),
    });
    let response = next.run(Request::from_parts(parts, body)).await;
    if timed_out.load(Ordering::Relaxed) {
        let message = format!("request body not received within {} s", guard.timeout.as_secs_f64());
        return close_after(
            ApiError::with_code(StatusCode::REQUEST_TIMEOUT, "request_timeout", message).into_response(),
        );
    }
    response
}

fn json_compatible(kind: &HeaderValue) -> bool {
    let Ok(kind) = kind.to_str() else { return false };
    let essence = kind.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "" | "application/json" | "text/json" | "text/plain" | "application/x-www-form-urlencoded"
    ) || essence.ends_with("+json")
}

fn close_after(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A body stream that fails once its deadline passes.
struct Deadline<S> {
    inner: S,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<AtomicBool>,
}

impl<S: Stream<Item = Result<Bytes, axum::Error>> + Unpin> Stream for Deadline<S> {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = self.inner.poll_next_unpin(cx) {
            return Poll::Ready(item);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.timed_out.store(true, Ordering::Relaxed);
            let error = std::io::Error::new(std::io::ErrorKind::TimedOut, "request body timed out");
            return Poll::Ready(Some(Err(axum::Error::new(error))));
        }
        Poll::Pending
    }
}

/// Longest plain-text error body that is carried over as the message.
const MAX_PLAIN_ERROR_BYTES: usize = 4096;

/// Every error response leaves in the JSON envelope. Our handlers build
/// it themselves; axum's extractor rejections (a path parameter that is not
/// UTF-8, a WebSocket request without upgrade headers, ...) answer plain
/// text, which is rewritten here with the same status. A panic in a handler
/// becomes a 500 in the envelope; its text stays in the log.
pub async fn envelope_errors(request: Request, next: Next) -> Response {
    let response = match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = llmlab_core::text::panic_text(panic.as_ref(), 1024);
            tracing::error!(panic = %what, "handler panicked");
            return ApiError::http(StatusCode::INTERNAL_SERVER_ERROR, "internal server error").into_response();
        }
    };
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_ERROR_BYTES)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    let message = clip(&text, 512);
    let error = match plain_error_code(status) {
        Some(code) => ApiError::with_code(status, code, message),
        None => ApiError::http(status, message),
    };
    let envelope = error.envelope().to_string();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(envelope))
}

/// Codes for the statuses axum and hyper answer by themselves, where the
/// core's kinds have no fitting name (a 404 here is a route, not a model).
fn plain_error_code(status: StatusCode) -> Option<&'static str> {
    Some(match status {
        StatusCode::NOT_FOUND => "route_not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "request_header_fields_too_large",
        StatusCode::UPGRADE_REQUIRED => "upgrade_required",
        _ => return None,
    })
}
