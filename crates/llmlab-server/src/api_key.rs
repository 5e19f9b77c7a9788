//! The API key check every door shares: `authorization: Bearer <key>`.

use sha2::{Digest, Sha256};

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

/// Check the `authorization` value against the configured key. The scheme
/// name is case-insensitive (RFC 9110 §11.1), so `bearer` works as well as
/// `Bearer`.
pub fn check(expected: Option<&str>, authorization: Option<&str>) -> KeyCheck {
    let Some(expected) = expected else {
        return KeyCheck::Allowed;
    };
    match bearer_token(authorization) {
        Some(key) if same_key(key, expected) => KeyCheck::Allowed,
        Some(_) => KeyCheck::Invalid,
        None => KeyCheck::Missing,
    }
}

/// The token of a `Bearer` credential, whatever the case of the scheme.
fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compare the SHA-256 digests of both keys, byte by byte without an early
/// exit: the time taken depends neither on where the keys first differ nor
/// on their lengths (a plain comparison returns at once on a length
/// mismatch, which tells an attacker the key's length).
fn same_key(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    let diff = a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
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
        assert_eq!(check(Some("k"), Some("Bearer ")), KeyCheck::Missing);
        assert_eq!(check(Some("k"), Some("Basic k")), KeyCheck::Missing);
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        for value in ["bearer k", "BEARER k", "BeArEr k", "  Bearer   k  ", "bearer\tk"] {
            assert_eq!(check(Some("k"), Some(value)), KeyCheck::Allowed, "{value:?}");
        }
        assert_eq!(check(Some("k"), Some("bearerk")), KeyCheck::Missing);
    }

    #[test]
    fn keys_of_any_length_compare() {
        let long = "x".repeat(10_000);
        assert_eq!(check(Some(&long), Some(&format!("Bearer {long}"))), KeyCheck::Allowed);
        assert_eq!(check(Some(&long), Some("Bearer x")), KeyCheck::Invalid);
        assert_eq!(check(Some("x"), Some(&format!("Bearer {long}"))), KeyCheck::Invalid);
    }
}
