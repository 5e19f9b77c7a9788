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
    /// A `code` of the transport's own (a route, not a model, was not
    /// found); `None` lets [`crate::openai::errors`] pick it.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A transport-level error that has no core counterpart (401, 404 for a
    /// route, 413, 405).
    pub fn http(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = if status == StatusCode::NOT_FOUND {
            ErrorKind::NotFound
        } else if status.is_server_error() {
            ErrorKind::Internal
        } else {
            ErrorKind::InvalidRequest
        };
        Self {
            status,
            error: Error::new(kind, message),
            model: None,
            code: None,
        }
    }

    /// A transport-level error with its own machine-readable `code`.
    pub fn with_code(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code: Some(code),
            ..Self::http(status, message)
        }
    }

    /// The answer to a request for a route that does not exist. Its code is
    /// not `model_not_found`: clients act on that code (pull the model).
    pub fn route_not_found(message: impl Into<String>) -> Self {
        Self::with_code(StatusCode::NOT_FOUND, "route_not_found", message)
    }

    pub fn for_model(mut self, model: &super::model_label::ModelLabel) -> Self {
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
        let mut value = envelope(self.status, &self.error);
        if let Some(code) = self.code {
            value["error"]["code"] = code.into();
        }
        value
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self {
            status: status_for(error.kind),
            error,
            model: None,
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.envelope())).into_response();
        if let Some(model) = self.model {
            response.extensions_mut().insert(super::model_label::ModelLabel(model));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_not_models_and_4xx_are_the_clients() {
        let body = ApiError::route_not_found("unknown route: GET /x").envelope();
        assert_eq!(body["error"]["code"], "route_not_found");
        let body = ApiError::http(StatusCode::METHOD_NOT_ALLOWED, "no").envelope();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let long = ApiError::from(Error::not_found(format!(
            "model '{}' does not exist",
            "m".repeat(10_000)
        )));
        let body = long.envelope();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.chars().count() <= llmlab_core::MAX_MESSAGE_CHARS && message.ends_with('…'));
    }
}
