//! How long an idle model stays loaded, with Ollama's meaning: a duration
//! (`"5m"`, `"30s"`, `"1h30m"`, or a number of seconds); `0` unloads the
//! model as soon as its last request ends; a negative value keeps it loaded
//! for good.

use std::time::Duration;

use serde::Serialize;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepAlive {
    /// Unload after this long without requests (zero: right away).
    For(Duration),
    /// Never unload for idleness.
    Forever,
}

impl KeepAlive {
    /// Parse `"5m"`, `"90s"`, `"1h30m"`, `"0"`, `"-1"`, `"300"` (seconds).
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let bad = || {
            Error::invalid_param(
                "keep_alive",
                format!(
                    "invalid keep_alive '{}': use e.g. \"5m\", \"30s\", \"0\" or \"-1\"",
                    crate::text::echo(text)
                ),
            )
        };
        if let Some(magnitude) = text.strip_prefix('-') {
            return magnitude
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .parse::<f64>()
                .map(|_| Self::Forever)
                .map_err(|_| bad());
        }
        if let Ok(secs) = text.parse::<f64>() {
            return Duration::try_from_secs_f64(secs).map(Self::For).map_err(|_| bad());
        }
        let mut total = 0.0;
        let mut number = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            let unit = match c {
                'h' => 3600.0,
                'm' => 60.0,
                's' => 1.0,
                _ => return Err(bad()),
            };
            total += number.parse::<f64>().map_err(|_| bad())? * unit;
            number.clear();
        }
        if !number.is_empty() || text.is_empty() {
            return Err(bad());
        }
        Duration::try_from_secs_f64(total).map(Self::For).map_err(|_| bad())
    }

    /// Parse a JSON value: a string as above, or a number of seconds.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        match value {
            serde_json::Value::String(s) => Self::parse(s),
            serde_json::Value::Number(n) => Self::parse(&n.to_string()),
            _ => Err(Error::invalid_param(
                "keep_alive",
                "'keep_alive' must be a duration string or a number of seconds",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ollama_durations() {
        assert_eq!(
            KeepAlive::parse("5m").unwrap(),
            KeepAlive::For(Duration::from_secs(300))
        );
        assert_eq!(
            KeepAlive::parse("1h30m").unwrap(),
            KeepAlive::For(Duration::from_secs(5400))
        );
        assert_eq!(KeepAlive::parse("90").unwrap(), KeepAlive::For(Duration::from_secs(90)));
        assert_eq!(KeepAlive::parse("0").unwrap(), KeepAlive::For(Duration::ZERO));
        assert_eq!(KeepAlive::parse("-1").unwrap(), KeepAlive::Forever);
        assert_eq!(KeepAlive::parse("-5m").unwrap(), KeepAlive::Forever);
        for bad in ["", "soon", "5x", "m", "5m3"] {
            assert!(KeepAlive::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            KeepAlive::from_json(&serde_json::json!(30)).unwrap(),
            KeepAlive::For(Duration::from_secs(30))
        );
    }
}
