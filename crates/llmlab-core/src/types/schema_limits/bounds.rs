//! Numeric keywords: counts (`minLength`…) and bounds (`minimum`…) must
//! be well-formed and must leave some value, and integer bounds must suit
//! llama.cpp's digit rules.

use serde_json::{Map, Value};

use super::{Check, MAX_INTEGER_BOUND};

/// Counts must be non-negative integers and bounds numbers, and no pair may
/// contradict itself: llama.cpp expands `minLength` > `maxLength` into a
/// repetition `{5,3}` that its GBNF parser loops on, and an empty integer
/// range into a rule no text matches.
pub(super) fn check_counts_and_bounds(schema: &Map<String, Value>, at: &str) -> Check<()> {
    for (min, max) in [
        ("minLength", "maxLength"),
        ("minItems", "maxItems"),
        ("minProperties", "maxProperties"),
    ] {
        let mut counts = [None, None];
        for (slot, key) in counts.iter_mut().zip([min, max]) {
            if let Some(value) = schema.get(key) {
                *slot = Some(
                    value
                        .as_u64()
                        .ok_or_else(|| format!("'{key}' at {at} must be a non-negative integer, got {value}"))?,
                );
            }
        }
        if let [Some(low), Some(high)] = counts {
            if low > high {
                return Err(format!(
                    "'{min}' ({low}) is greater than '{max}' ({high}) at {at}: no value satisfies both"
                ));
            }
        }
    }
    let lower = bound(schema, "minimum", "exclusiveMinimum", at)?;
    let upper = bound(schema, "maximum", "exclusiveMaximum", at)?;
    if let (Some((low, low_strict)), Some((high, high_strict))) = (lower, upper) {
        if low > high || (low == high && (low_strict || high_strict)) {
            return Err(format!(
                "the lower bound {low} is not below the upper bound {high} at {at}: no number satisfies both"
            ));
        }
    }
    Ok(())
}

/// The tighter of an inclusive and an exclusive bound, and whether it is
/// exclusive. A boolean `exclusiveMinimum` (draft 4) makes `minimum` strict.
fn bound(schema: &Map<String, Value>, inclusive: &str, exclusive: &str, at: &str) -> Check<Option<(f64, bool)>> {
    let number = |key: &str| match schema.get(key) {
        None | Some(Value::Bool(_)) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("'{key}' at {at} must be a number, got {v}")),
    };
    let strict_flag = match schema.get(exclusive) {
        Some(Value::Bool(flag)) if schema.contains_key(inclusive) => *flag,
        Some(Value::Bool(_)) => {
            return Err(format!(
                "'{exclusive}' at {at} is a boolean without '{inclusive}'; give the bound as a number"
            ))
        }
        _ => false,
    };
    let lower = inclusive.starts_with("min");
    let tighter = |a: (f64, bool), b: (f64, bool)| {
        let a_wins = if lower { a.0 > b.0 } else { a.0 < b.0 };
        match () {
            _ if a.0 == b.0 => (a.0, a.1 || b.1),
            _ if a_wins => a,
            _ => b,
        }
    };
    Ok(match (number(inclusive)?, number(exclusive)?) {
        (Some(i), Some(e)) => Some(tighter((i, strict_flag), (e, true))),
        (Some(i), None) => Some((i, strict_flag)),
        (None, Some(e)) => Some((e, true)),
        (None, None) => None,
    })
}

/// An integer schema's bounds must be small enough for llama.cpp's digit
/// rules and leave at least one integer.
pub(super) fn check_integer_bounds(schema: &Map<String, Value>, at: &str) -> Check<()> {
    for key in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
        if let Some(n) = schema.get(key).and_then(Value::as_f64) {
            if n.abs() > MAX_INTEGER_BOUND as f64 {
                return Err(format!(
                    "'{key}' at {at} is {n}; integer bounds are limited to ±{MAX_INTEGER_BOUND} in grammar-constrained output"
                ));
            }
        }
    }
    let low = bound(schema, "minimum", "exclusiveMinimum", at)?
        .map(|(v, strict)| if strict { v.floor() + 1.0 } else { v.ceil() });
    let high = bound(schema, "maximum", "exclusiveMaximum", at)?
        .map(|(v, strict)| if strict { v.ceil() - 1.0 } else { v.floor() });
    if let (Some(low), Some(high)) = (low, high) {
        if low > high {
            return Err(format!("no integer lies within the bounds at {at}"));
        }
    }
    Ok(())
}

/// Whether `format` is one the converter writes a rule for (then it ignores
/// the lengths); a `format` that is not a string fails there.
pub(super) fn string_format(schema: &Map<String, Value>, at: &str) -> Check<bool> {
    match schema.get("format") {
        None => Ok(false),
        Some(Value::String(f)) => Ok(matches!(
            f.as_str(),
            "date" | "time" | "date-time" | "uuid" | "uuid1" | "uuid2" | "uuid3" | "uuid4" | "uuid5"
        )),
        Some(_) => Err(format!("'format' at {at} must be a string")),
    }
}
