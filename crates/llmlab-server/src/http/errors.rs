//! The one place where core errors become HTTP responses, in OpenAI's error
//! envelope: `{"error":{"message","type","param","code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use llmlab_core::{Error, ErrorKind};

/// An error on its way to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: Error,
    /// The model the failed request named, for request metrics.
    pub model: Option<String>,
}

/// Status for each core error kind. Every HTTP response for a core error
/// goes through here.
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        // A client that cancelled is gone; one that still reads was cancelled
        // by the server (shutdown ran out of grace time).
        ErrorKind::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// OpenAI's `type` field for each status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        503 => "service_unavailable_error",
        504 => "timeout_error",
        _ => "server_error",
    }
}

/// OpenAI's `code` field: a short machine-readable reason.
fn error_code(status: StatusCode, kind: ErrorKind) -> &'static str {
    match status.as_u16() {
        401 => "invalid_api_key",
        404 if kind == ErrorKind::NotFound => "model_not_found",
        413 => "request_too_large",
        _ => kind.as_str(),
    }
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

pub fn envelope(status: StatusCode, error: &Error) -> serde_json::Value {
    json!({
        "error": {
            "message": error.message,
            "type": error_type(status),
            "param": error.param,
            "code": error_code(status, error.kind),
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_status() {
        let cases = [
            (ErrorKind::InvalidRequest, 400),
            (ErrorKind::NotFound, 404),
            (ErrorKind::Overloaded, 429),
            (ErrorKind::Unavailable, 503),
            (ErrorKind::Timeout, 504),
            (ErrorKind::Internal, 500),
            (ErrorKind::Cancelled, 503),
        ];
        for (kind, status) in cases {
            assert_eq!(status_for(kind).as_u16(), status, "{kind:?}");
        }
    }
}
