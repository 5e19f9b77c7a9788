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
pub fn status_from(error: &Error) -> Status {
    let mut status = Status::new(code_for(error.kind), error.message.clone());
    let metadata = status.metadata_mut();
    if let Some(param) = error.param.as_deref().and_then(|p| MetadataValue::try_from(p).ok()) {
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
}
