//! Core errors as HTTP responses: the status and envelope come from
//! [`crate::openai::errors`]; this adds the headers HTTP clients expect.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use llmlab_core::{Error, ErrorKind};

use crate::openai::errors::{envelope, status_for};

/// An error on its way to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: Error,
    /// The model the failed request named, for request metrics.
    pub model: Option<String>,
}

impl ApiError {
    /// A transport-level error that has no core counterpart (401, 404 for a
    /// route, 413, 405).
    pub fn http(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = if status == StatusCode::NOT_FOUND {
            ErrorKind::NotFound
        } else {
            ErrorKind::InvalidRequest
        };
        Self {
            status,
            error: Error::new(kind, message),
            model: None,
        }
    }

    pub fn for_model(mut self, model: &super::handlers::ModelLabel) -> Self {
        self.model = Some(model.0.clone());
        self
    }

    /// A request body that could not be read: too large (413) or broken.
    pub fn from_body_rejection(rejection: &axum::extract::rejection::BytesRejection, limit: usize) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::http(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {limit} bytes"),
            )
        } else {
            Self::http(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {rejection}"),
            )
        }
    }

    /// The JSON envelope (also used inside SSE `data:` lines).
    pub fn envelope(&self) -> serde_json::Value {
        envelope(self.status, &self.error)
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self {
            status: status_for(error.kind),
            error,
            model: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.envelope())).into_response();
        if let Some(model) = self.model {
            response.extensions_mut().insert(super::handlers::ModelLabel(model));
        }
        let retry_after = self.error.retry_after_secs.or(match self.status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        });
        if let Some(secs) = retry_after {
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
