//! The API key check every door shares: `authorization: Bearer <key>`.

/// What a presented `authorization` value amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// No key is configured, or the right one was presented.
    Allowed,
    Missing,
    Invalid,
}

impl KeyCheck {
    /// The message a refused client gets.
    pub fn message(self) -> &'static str {
        match self {
            Self::Allowed => "",
            Self::Missing => "missing API key: send 'Authorization: Bearer <key>'",
            Self::Invalid => "invalid API key",
        }
    }
}

/// Check the `authorization` value against the configured key, comparing in
/// constant time so the key cannot be guessed from response times.
pub fn check(expected: Option<&str>, authorization: Option<&str>) -> KeyCheck {
    let Some(expected) = expected else {
        return KeyCheck::Allowed;
    };
    match authorization.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim) {
        Some(key) if constant_time_eq(key.as_bytes(), expected.as_bytes()) => KeyCheck::Allowed,
        Some(_) => KeyCheck::Invalid,
        None => KeyCheck::Missing,
    }
}

/// Compare without leaking the position of the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_required_only_when_set() {
        assert_eq!(check(None, None), KeyCheck::Allowed);
        assert_eq!(check(Some("k"), Some("Bearer k")), KeyCheck::Allowed);
        assert_eq!(check(Some("k"), None), KeyCheck::Missing);
        assert_eq!(check(Some("k"), Some("k")), KeyCheck::Missing);
        assert_eq!(check(Some("k"), Some("Bearer x")), KeyCheck::Invalid);
        assert_eq!(check(Some("k"), Some("Bearer kk")), KeyCheck::Invalid);
    }
}
