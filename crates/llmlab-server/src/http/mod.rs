//! The OpenAI-compatible HTTP door (axum). Thin: every request is decoded,
//! handed to the core service, and encoded; errors go through
//! [`errors::ApiError`] only.

mod conn;
mod embeddings;
pub mod errors;
mod handlers;
mod images;
/// `GET /metrics`, also served alone by `llmlab worker --metrics-port`.
pub use handlers::metrics;
mod middleware;
mod model_label;
mod ollama;
mod playground;
pub mod prometheus;
mod server;
mod sse;
mod ws;

pub use conn::GuardedStream;
pub use server::serve_listener;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use llmlab_core::config;
use llmlab_core::service::Service;

/// The OpenAPI description served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Settings of the HTTP door.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub sse_keep_alive: Duration,
    pub always_include_usage: bool,
}

/// How the door treats connections and who may read `/metrics`. Kept apart
/// from [`HttpConfig`] so that code building an `HttpConfig` literally
/// (tests, the bench tool) keeps compiling; [`router`] uses the defaults.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Time to send a request's line and headers, and the longest an idle
    /// keep-alive connection stays open.
    pub header_timeout: Duration,
    /// Time to send a whole request body once the headers are in.
    pub body_timeout: Duration,
    /// Connections (WebSockets included) served at once.
    pub max_connections: usize,
    /// Largest request head; beyond it, 431.
    pub max_header_bytes: usize,
    /// With an API key configured, `/metrics` requires it too.
    pub metrics_require_key: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(config::DEFAULT_HEADER_TIMEOUT_SECS),
            body_timeout: Duration::from_secs(config::DEFAULT_BODY_TIMEOUT_SECS),
            max_connections: config::DEFAULT_MAX_CONNECTIONS,
            max_header_bytes: config::DEFAULT_MAX_HEADER_BYTES,
            metrics_require_key: false,
        }
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub config: Arc<HttpConfig>,
    /// Cancelled when shutdown's grace period runs out; every request's
    /// cancellation token is a child of it.
    pub shutdown: CancellationToken,
}

/// The door's routes with [`ServerOptions::default`].
pub fn router(state: AppState) -> Router {
    router_with(state, &ServerOptions::default())
}

/// The door's routes. Layers, outermost first: request ids and metrics;
/// every error response in the JSON envelope (and panics as 500s); the API
/// key, before routing decides 404 or 405, so that a client without the key
/// learns nothing about the routes; body limits and the body timeout.
pub fn router_with(state: AppState, options: &ServerOptions) -> Router {
    let gate = middleware::KeyGate::new(state.config.api_key.as_deref(), options.metrics_require_key);
    let body = middleware::BodyGuard {
        max_bytes: state.config.max_body_bytes,
        timeout: options.body_timeout,
    };
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/similarity", post(embeddings::similarity))
        .route("/v1/images/generations", post(images::generations))
        .route("/v1/images/edits", post(images::edits))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/models/{id}", get(handlers::get_model))
        .route("/v1/models/{id}/load", post(handlers::load_model))
        .route("/v1/models/{id}/unload", post(handlers::unload_model))
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI_JSON) }),
        )
        // The web playground: `/` and its files, open without the key.
        .merge(playground::routes())
        .merge(ollama::routes())
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(body, middleware::guard_body))
        .layer(axum::middleware::from_fn_with_state(gate, middleware::require_api_key))
        .layer(axum::middleware::from_fn(middleware::envelope_errors))
        .layer(axum::middleware::from_fn(ollama::ollama_error_shape))
        .layer(axum::middleware::from_fn(middleware::observe_request))
        .with_state(state)
}

/// Bind `addr` and serve the door there (see [`serve_listener`]).
pub async fn serve(
    addr: SocketAddr,
    state: AppState,
    options: ServerOptions,
    grace: Duration,
    stopping: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "listening");
    serve_listener(listener, state, options, grace, stopping).await
}
