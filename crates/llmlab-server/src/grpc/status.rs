//! The one place where core errors become gRPC statuses.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use llmlab_core::{Error, ErrorKind};

/// The gRPC code for each core error kind.
pub fn code_for(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidRequest => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Overloaded => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::Internal => Code::Internal,
    }
}

/// A core error as a status. The field at fault travels in the
/// `llmlab-param` metadata entry, a retry hint in `retry-after` (seconds).
/// Both message and field are cut to a bounded length: they can quote the
/// client's input (a 10,000-character model id), and on gRPC they travel
/// in headers.
pub fn status_from(error: &Error) -> Status {
    let message = error.message_for_client().into_owned();
    let mut status = Status::new(code_for(error.kind), message);
    let metadata = status.metadata_mut();
    // Metadata values are ASCII: the cut is marked with "..." here.
    let param = error.param_for_client().map(|p| p.replace('…', "..."));
    if let Some(param) = param.and_then(|p| MetadataValue::try_from(p.as_str()).ok()) {
        metadata.insert("llmlab-param", param);
    }
    if let Some(secs) = error.retry_after_secs {
        metadata.insert("retry-after", MetadataValue::from(secs));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_code() {
        let cases = [
            (ErrorKind::InvalidRequest, Code::InvalidArgument),
            (ErrorKind::NotFound, Code::NotFound),
            (ErrorKind::Overloaded, Code::ResourceExhausted),
            (ErrorKind::Unavailable, Code::Unavailable),
            (ErrorKind::Timeout, Code::DeadlineExceeded),
            (ErrorKind::Cancelled, Code::Cancelled),
            (ErrorKind::Internal, Code::Internal),
        ];
        for (kind, code) in cases {
            assert_eq!(code_for(kind), code, "{kind:?}");
        }
    }

    #[test]
    fn the_field_at_fault_travels_in_metadata() {
        let status = status_from(&Error::invalid_param("messages[0].role", "unknown role 'robot'"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "unknown role 'robot'");
        assert_eq!(status.metadata().get("llmlab-param").unwrap(), "messages[0].role");
    }

    #[test]
    fn echoed_input_is_cut() {
        let id = "m".repeat(10_000);
        let mut error = Error::not_found(format!("model '{id}' does not exist"));
        error.param = Some(id);
        let status = status_from(&error);
        assert!(status.message().chars().count() <= llmlab_core::MAX_MESSAGE_CHARS);
        let param = status.metadata().get("llmlab-param").unwrap().to_str().unwrap();
        assert!(param.len() <= llmlab_core::MAX_PARAM_CHARS + 2 && param.ends_with("..."));
    }
}
