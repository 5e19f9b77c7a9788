//! The model a response was for, carried from the handlers to the metrics
//! middleware in the response's extensions. Its own file: handlers, errors,
//! embeddings and the middleware all use it.

use axum::response::Response;

use super::AppState;

/// Only registry ids become labels: a client inventing model names must
/// not create unbounded metric series.
#[derive(Debug, Clone)]
pub struct ModelLabel(pub String);

impl ModelLabel {
    pub(super) fn for_request(state: &AppState, model: &str) -> Self {
        Self(crate::observe::model_label(&state.service, model))
    }

    pub(super) fn attach(&self, mut response: Response) -> Response {
        response.extensions_mut().insert(self.clone());
        response
    }
}
