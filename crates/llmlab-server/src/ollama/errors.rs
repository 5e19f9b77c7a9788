//! The one place where core errors become Ollama's statuses and its error
//! body, `{"error": "..."}` (a bare string, not OpenAI's envelope). Ollama's
//! clients read that string from error responses and from NDJSON lines
//! alike, so both go through here.

use axum::http::StatusCode;
use serde_json::{json, Value};

use llmlab_core::{Error, ErrorKind};

/// Status for each core error kind, as Ollama answers: 400 for the
/// request's faults, 404 for a model it does not have, and 500 or 503 for
/// the server's. Ollama answers a full queue with 503 ("server busy"),
/// not 429, and has no status of its own for a deadline.
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Overloaded | ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        // The client still reading was cancelled by the server (shutdown).
        ErrorKind::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error on its way to an Ollama client.
#[derive(Debug, Clone)]
pub struct OllamaError {
    pub status: StatusCode,
    pub error: Error,
}

impl OllamaError {
    /// A refusal that has no core kind of its own (deleting models when the
    /// server does not allow it): the status is the door's.
    pub fn with_status(status: StatusCode, error: Error) -> Self {
        Self { status, error }
    }

    /// Ollama's body: the message alone, cut to the length every door keeps.
    pub fn body(&self) -> Value {
        body(&self.error)
    }

    /// Seconds after which a retry may succeed, for `Retry-After`.
    pub fn retry_after(&self) -> Option<u64> {
        self.error
            .retry_after_secs
            .or((self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(1))
    }
}

impl From<Error> for OllamaError {
    fn from(error: Error) -> Self {
        Self {
            status: status_for(error.kind),
            error,
        }
    }
}

/// `{"error": "..."}`: also the line that ends a stream that failed.
pub fn body(error: &Error) -> Value {
    json!({ "error": error.message_for_client() })
}

/// The model a request named was not found: Ollama's words, which clients
/// recognise ("try pulling it first"), with the name as the client sent it.
pub fn model_not_found(name: &str) -> Error {
    Error::not_found(format!(
        "model \"{}\" not found, try pulling it first",
        llmlab_core::text::echo(name)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_ollama_statuses() {
        let cases = [
            (ErrorKind::InvalidRequest, 400),
            (ErrorKind::NotFound, 404),
            (ErrorKind::Overloaded, 503),
            (ErrorKind::Unavailable, 503),
            (ErrorKind::Timeout, 500),
            (ErrorKind::Internal, 500),
            (ErrorKind::Cancelled, 503),
        ];
        for (kind, status) in cases {
            assert_eq!(status_for(kind).as_u16(), status, "{kind:?}");
        }
    }

    #[test]
    fn the_body_is_a_bare_string_and_bounded() {
        let e = OllamaError::from(model_not_found("nope"));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(
            e.body(),
            json!({"error": "model \"nope\" not found, try pulling it first"})
        );
        let long = OllamaError::from(Error::invalid("x".repeat(10_000)));
        let message = long.body()["error"].as_str().unwrap().to_owned();
        assert!(message.chars().count() <= llmlab_core::MAX_MESSAGE_CHARS);
        assert_eq!(long.retry_after(), None);
        let busy = OllamaError::from(Error::new(ErrorKind::Overloaded, "busy"));
        assert_eq!((busy.status.as_u16(), busy.retry_after()), (503, Some(1)));
    }
}
