//! `pattern`: a valid regular expression that llama.cpp's own small regex
//! translator (`_pattern_to_rule` in common/json-schema-to-grammar.cpp) can
//! turn into grammar rules. Where that translator gives up it falls back to
//! "any string" with only a warning on stderr, so the client's constraint
//! would silently vanish; such patterns are refused here instead.

use super::{Check, MAX_PATTERN_BYTES, MAX_REPETITIONS};

/// What a supported pattern adds to the grammar.
pub(super) struct PatternCost {
    /// Sum of its `{m,n}` counts (each becomes copies of a rule).
    pub repetitions: u64,
    /// Rules the converter names after the pattern's rule (`name-1`…).
    pub sub_rules: usize,
}

/// The converter's `MAX_PATTERN_DEPTH`.
const MAX_GROUP_DEPTH: usize = 100;

pub(super) fn check_pattern(pattern: &str, at: &str) -> Check<PatternCost> {
    let shown = crate::text::echo(pattern);
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "'pattern' at {at} is {} bytes; at most {MAX_PATTERN_BYTES} are supported",
            pattern.len()
        ));
    }
    // The grammar is handed to llama.cpp as a C string.
    if pattern.contains('\0') {
        return Err(format!("'pattern' at {at} contains a NUL character"));
    }
    if let Err(e) = regex_syntax::ast::parse::Parser::new().parse(pattern) {
        return Err(format!(
            "'pattern' at {at} ('{shown}') is not a valid regular expression: {}",
            e.kind()
        ));
    }
    let unsupported = |what: String| {
        format!("'pattern' at {at} ('{shown}') uses {what}, which llama.cpp's grammar converter does not support")
    };
    let bytes = pattern.as_bytes();
    if bytes.len() < 2 || bytes[0] != b'^' || bytes[bytes.len() - 1] != b'$' {
        return Err(unsupported(
            "no '^…$' anchors (patterns must match the whole string: start with '^' and end with '$')".into(),
        ));
    }
    let body = &bytes[1..bytes.len() - 1];
    let mut cost = PatternCost {
        repetitions: 0,
        sub_rules: 0,
    };
    let mut depth = 0usize;
    // Whether the current group has an item for a quantifier to apply to.
    let mut has_item = vec![false];
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        match c {
            b'(' => {
                if body.get(i + 1) == Some(&b'?') {
                    if body.get(i + 2) != Some(&b':') {
                        return Err(unsupported("a special group '(?…)' (only '(?:…)' is)".into()));
                    }
                    i += 2;
                }
                depth += 1;
                if depth > MAX_GROUP_DEPTH {
                    return Err(unsupported(format!("groups nested deeper than {MAX_GROUP_DEPTH}")));
                }
                has_item.push(false);
                i += 1;
            }
            b')' => {
                has_item.pop();
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| unsupported("an unbalanced ')'".into()))?;
                set_item(&mut has_item);
                i += 1;
            }
            b'^' | b'$' => return Err(unsupported("an anchor inside the pattern".into())),
            b'[' => {
                i += 1;
                while i < body.len() && body[i] != b']' {
                    if body[i] == b'\\' {
                        let n = gbnf_escape_length(body, i);
                        if n == 0 {
                            return Err(unsupported(format!(
                                "the escape '{}' inside '[…]' (write the character itself, or a range such as 0-9)",
                                escape_text(body, i)
                            )));
                        }
                        i += n;
                    } else {
                        i += 1;
                    }
                }
                if i >= body.len() {
                    return Err(unsupported("an unterminated '['".into()));
                }
                set_item(&mut has_item);
                i += 1;
            }
            b'|' | b'.' => {
                set_item(&mut has_item);
                i += 1;
            }
            b'*' | b'+' | b'?' | b'{' => {
                if !has_item.last().copied().unwrap_or(false) {
                    return Err(unsupported("a quantifier with nothing before it".into()));
                }
                // The translator splits a literal before the quantifier byte
                // by byte: on a multi-byte character it would repeat only the
                // character's last byte and corrupt the grammar.
                if i > 0 && body[i - 1] >= 0x80 {
                    return Err(unsupported(
                        "a quantifier right after a non-ASCII character (put the character in a group, e.g. '(é)+')"
                            .into(),
                    ));
                }
                if c == b'{' {
                    let close = body[i..].iter().position(|b| *b == b'}').map(|p| i + p);
                    let close = close.ok_or_else(|| unsupported("an unterminated '{'".into()))?;
                    let (min, max) = counts(&body[i + 1..close]).ok_or_else(|| {
                        unsupported(format!(
                            "the repetition '{}'",
                            String::from_utf8_lossy(&body[i..=close])
                        ))
                    })?;
                    for n in [Some(min), max].into_iter().flatten() {
                        if n > MAX_REPETITIONS {
                            return Err(format!(
                                "'pattern' at {at} repeats {n} times; at most {MAX_REPETITIONS} repetitions are supported in grammar-constrained output"
                            ));
                        }
                    }
                    if max == Some(0) {
                        return Err(unsupported("a repetition of zero times".into()));
                    }
                    cost.repetitions += max.unwrap_or(min).max(1);
                    cost.sub_rules += 1;
                    i = close + 1;
                } else {
                    i += 1;
                }
            }
            b'\\' => {
                let next = *body.get(i + 1).ok_or_else(|| unsupported("a trailing '\\'".into()))?;
                let n = if b"^$.[]()|{}*+?".contains(&next) {
                    2
                } else {
                    gbnf_escape_length(body, i)
                };
                if n == 0 {
                    return Err(unsupported(format!(
                        "the escape '{}'{}",
                        escape_text(body, i),
                        escape_hint(next)
                    )));
                }
                set_item(&mut has_item);
                i += n;
            }
            b']' | b'}' => return Err(unsupported(format!("a stray '{}'", c as char))),
            _ => {
                set_item(&mut has_item);
                i += 1;
            }
        }
    }
    if depth != 0 {
        return Err(unsupported("an unclosed '('".into()));
    }
    if cost.repetitions > MAX_REPETITIONS {
        return Err(format!(
            "'pattern' at {at} repeats {} times in all; at most {MAX_REPETITIONS} are supported in one pattern",
            cost.repetitions
        ));
    }
    Ok(cost)
}

fn set_item(has_item: &mut [bool]) {
    if let Some(last) = has_item.last_mut() {
        *last = true;
    }
}

/// `{n}`, `{m,}`, `{m,n}` as the translator reads them (strictly: it would
/// take `{3x}` as 3, which the regex parser already refused).
fn counts(inner: &[u8]) -> Option<(u64, Option<u64>)> {
    let text = std::str::from_utf8(inner).ok()?;
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 9 {
            return None;
        }
        s.parse().ok()
    };
    match text.split_once(',') {
        None => number(text).map(|n| (n, Some(n))),
        Some((_, rest)) if rest.contains(',') => None,
        Some((low, high)) => {
            let min = if low.is_empty() { 0 } else { number(low)? };
            let max = if high.is_empty() { None } else { Some(number(high)?) };
            Some((min, max))
        }
    }
}

/// Length of an escape the GBNF parser accepts at `body[i]` ('\\'), or 0;
/// the same list as `gbnf_escape_length` in the converter.
fn gbnf_escape_length(body: &[u8], i: usize) -> usize {
    let hex = match body.get(i + 1) {
        Some(b't' | b'r' | b'n' | b'\\' | b'"' | b'[' | b']' | b'-') => return 2,
        Some(b'x') => 2,
        Some(b'u') => 4,
        Some(b'U') => 8,
        _ => return 0,
    };
    match body.get(i + 2..i + 2 + hex) {
        Some(digits) if digits.iter().all(u8::is_ascii_hexdigit) => 2 + hex,
        _ => 0,
    }
}

fn escape_text(body: &[u8], i: usize) -> String {
    let end = (i + 2..=body.len().min(i + 5))
        .find(|e| std::str::from_utf8(&body[i..*e]).is_ok())
        .unwrap_or(body.len().min(i + 2));
    String::from_utf8_lossy(&body[i..end]).into_owned()
}

fn escape_hint(next: u8) -> &'static str {
    match next {
        b'd' => " (write [0-9])",
        b'w' => " (write [a-zA-Z0-9_])",
        b's' => " (write [ \\t\\n\\r])",
        _ => "",
    }
}
