//! The OpenAI-compatible HTTP door (axum). Thin: every request is decoded,
//! handed to the core service, and encoded; errors go through
//! [`errors::ApiError`] only.

mod embeddings;
pub mod errors;
mod handlers;
mod middleware;
pub mod prometheus;
mod sse;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

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

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub config: Arc<HttpConfig>,
    /// Cancelled when shutdown's grace period runs out; every request's
    /// cancellation token is a child of it.
    pub shutdown: CancellationToken,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/similarity", post(embeddings::similarity))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/models/{id}", get(handlers::get_model))
        .route("/v1/models/{id}/load", post(handlers::load_model))
        .route("/v1/models/{id}/unload", post(handlers::unload_model))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_api_key,
        ));
    Router::new()
        .merge(api)
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI_JSON) }),
        )
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn(middleware::observe_request))
        .with_state(state)
}

/// Serve until `stopping` is cancelled (ctrl-c / SIGTERM), then stop
/// accepting, give in-flight requests `grace` to finish, and cancel
/// whatever is left.
pub async fn serve(
    addr: SocketAddr,
    state: AppState,
    grace: Duration,
    stopping: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "listening");
    let shutdown = state.shutdown.clone();
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stopping.cancelled().await;
            tracing::info!(
                grace_secs = grace.as_secs(),
                "shutting down: no new connections; finishing in-flight requests"
            );
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                tracing::warn!("grace period over; cancelling remaining requests");
                shutdown.cancel();
            });
        })
        .await?;
    Ok(())
}
