//! Client deadlines: gRPC sends them as a `grpc-timeout` header (an integer
//! of at most eight digits and a unit letter). tonic bounds only the handler
//! call, which for a streaming answer ends before the first token, so the
//! door reads the header itself and stops the generation when it passes.

use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use llmlab_core::{Error, Result};

/// The instant the client's deadline passes, if it set one.
pub fn deadline(metadata: &MetadataMap) -> Result<Option<Instant>> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Error::invalid("grpc-timeout is not ASCII"))?;
    Ok(Some(Instant::now() + parse_timeout(text)?))
}

/// Parse `grpc-timeout`: digits, then H, M, S, m (milli), u (micro) or n (nano).
pub fn parse_timeout(text: &str) -> Result<Duration> {
    let bad = || {
        Error::invalid(format!(
            "grpc-timeout '{text}' is not digits followed by H, M, S, m, u or n"
        ))
    };
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let amount: u64 = digits.parse().map_err(|_| bad())?;
    Ok(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return Err(bad()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_reads() {
        assert_eq!(parse_timeout("2H").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_timeout("3M").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_timeout("5S").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_timeout("250m").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_timeout("7u").unwrap(), Duration::from_micros(7));
        assert_eq!(parse_timeout("99999999n").unwrap(), Duration::from_nanos(99_999_999));
    }

    #[test]
    fn malformed_values_are_refused() {
        for text in ["", "S", "5", "5s", "123456789S", "-1S", "1.5S"] {
            assert!(parse_timeout(text).is_err(), "{text:?}");
        }
    }
}
