//! The one place where core error kinds become statuses and OpenAI's error
//! envelope, `{"error":{"message","type","param","code"}}`. HTTP answers
//! with the status; the WebSocket and job-queue doors carry it in their
//! error frames and replies.

use axum::http::StatusCode;
use serde_json::json;

use llmlab_core::{Error, ErrorKind};

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
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        503 => "service_unavailable_error",
        504 => "timeout_error",
        // Every other 4xx (400, 404, 405, 408, 413, 415, 431, ...) is the
        // request's fault.
        400..=499 => "invalid_request_error",
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

/// The error in OpenAI's envelope.
pub fn envelope(status: StatusCode, error: &Error) -> serde_json::Value {
    json!({
        "error": {
            "message": error.message_for_client(),
            "type": error_type(status),
            "param": error.param_for_client(),
            "code": error_code(status, error.kind),
        }
    })
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
