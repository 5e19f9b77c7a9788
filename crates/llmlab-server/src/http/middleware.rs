//! Request ids, tracing spans and API-key checks.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::api_key::{self, KeyCheck};

use super::errors::ApiError;
use super::handlers::ModelLabel;
use super::AppState;

const REQUEST_ID: &str = "x-request-id";

/// Accept the client's `x-request-id` (or make one), run the request inside
/// a span carrying it, return it on the response, and count the request by
/// route, model and status.
pub async fn observe_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let span =
        tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let started = std::time::Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "request done"
        )
    });
    let model = response.extensions().get::<ModelLabel>().map_or("", |m| m.0.as_str());
    llmlab_core::metrics::request_finished(&route, model, response.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// With an API key configured, `/v1/*` requires `Authorization: Bearer <key>`.
pub async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match api_key::check(state.config.api_key.as_deref(), authorization) {
        KeyCheck::Allowed => next.run(request).await,
        refused => ApiError::http(StatusCode::UNAUTHORIZED, refused.message()).into_response(),
    }
}
