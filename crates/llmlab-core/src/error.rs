//! The one error type of llmlab. Every layer returns it; every transport maps
//! its [`ErrorKind`] to its own status codes in exactly one function.

use serde::Serialize;

/// What went wrong, from the caller's point of view. Transports map this, and
/// only this, to HTTP statuses, gRPC codes or AMQP acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or asks for something the model cannot do.
    InvalidRequest,
    /// The named model (or route, or resource) does not exist.
    NotFound,
    /// Too much work queued; the caller should retry later.
    Overloaded,
    /// The model cannot serve right now (loading failed, no memory, breaker open).
    Unavailable,
    /// A deadline ran out.
    Timeout,
    /// The caller (or shutdown) cancelled the request.
    Cancelled,
    /// A bug or an unexpected backend failure.
    Internal,
}

impl ErrorKind {
    /// Stable snake_case name, used in logs, metrics and error envelopes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::NotFound => "not_found",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Internal => "internal",
        }
    }

    /// Whether the same request may succeed if tried again later: the
    /// failure was the server's (busy, a model that could not serve, a
    /// deadline, a backend fault), not the request's or the caller's.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Overloaded | Self::Unavailable | Self::Timeout | Self::Internal
        )
    }
}

/// An error with a kind, a human-readable message and, for invalid requests,
/// the request field at fault (OpenAI's `param`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<String>,
    /// Seconds after which a retry may succeed (overloaded / unavailable).
    pub retry_after_secs: Option<u64>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            retry_after_secs: None,
        }
    }

    /// An invalid request naming the field at fault.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::new(ErrorKind::InvalidRequest, message)
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "request was cancelled")
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The message as every door sends it, cut to [`MAX_MESSAGE_CHARS`].
    pub fn message_for_client(&self) -> std::borrow::Cow<'_, str> {
        crate::text::clip(&self.message, MAX_MESSAGE_CHARS)
    }

    /// The field at fault as every door sends it, cut to [`MAX_PARAM_CHARS`].
    pub fn param_for_client(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.param.as_deref().map(|p| crate::text::clip(p, MAX_PARAM_CHARS))
    }
}

/// Longest error message a client gets, in characters. Messages can quote
/// the client's own input (a model id, a JSON value); a client must not be
/// able to make the server repeat megabytes back, or, on gRPC, into a header.
pub const MAX_MESSAGE_CHARS: usize = 1024;
/// Longest `param` (a field path) a client gets, in characters.
pub const MAX_PARAM_CHARS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_failures_are_worth_another_try() {
        let retryable = [
            ErrorKind::Overloaded,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::Internal,
        ];
        let final_ = [ErrorKind::InvalidRequest, ErrorKind::NotFound, ErrorKind::Cancelled];
        assert!(retryable.iter().all(|k| k.is_retryable()));
        assert!(final_.iter().all(|k| !k.is_retryable()));
    }
}
