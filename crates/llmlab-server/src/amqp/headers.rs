//! Reading and writing the counters llmlab keeps in message headers.
//!
//! Headers arrive from anyone who may publish to a job queue, so a counter
//! is untrusted input: any integer type AMQP allows, any value. A value too
//! large for a `u32` saturates (it can only mean "tried very often"); a
//! negative number or a value that is not an integer at all is refused,
//! with the header named, rather than silently read as some number. Every
//! sum on a counter saturates, so no header can make the worker overflow.

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use super::topology::{ATTEMPTS_HEADER, REDELIVERIES_HEADER};

/// The counters of one message, as the worker reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Tries that ended in a failure another try may cure.
    pub attempts: u32,
    /// Times the broker handed the job back after its worker went away.
    pub redeliveries: u32,
}

/// A counter header whose value cannot be a count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCount {
    pub header: &'static str,
    pub message: String,
}

impl Counts {
    pub fn read(properties: &BasicProperties) -> Result<Self, BadCount> {
        let headers = properties.headers().as_ref();
        Ok(Self {
            attempts: read_count(headers, ATTEMPTS_HEADER)?,
            redeliveries: read_count(headers, REDELIVERIES_HEADER)?,
        })
    }

    /// The counters for dead-lettering a message whose headers may be
    /// unreadable (bad values count as 0): never fails, never panics.
    pub fn read_lenient(properties: &BasicProperties) -> Self {
        let headers = properties.headers().as_ref();
        Self {
            attempts: read_count(headers, ATTEMPTS_HEADER).unwrap_or(0),
            redeliveries: read_count(headers, REDELIVERIES_HEADER).unwrap_or(0),
        }
    }
}

/// A counter header: 0 when absent, saturated at `u32::MAX` when larger,
/// an error naming the header when negative or not an integer.
pub fn read_count(headers: Option<&FieldTable>, header: &'static str) -> Result<u32, BadCount> {
    let Some(value) = headers.and_then(|h| h.inner().get(header)) else {
        return Ok(0);
    };
    count_of(value).ok_or_else(|| BadCount {
        header,
        message: format!(
            "header {header} must be a non-negative integer, got {}",
            describe(value)
        ),
    })
}

/// The count an integer header holds; `None` for a negative number or a
/// value of another type.
fn count_of(value: &AMQPValue) -> Option<u32> {
    // i128 holds every AMQP integer type, signed or not.
    let wide: i128 = match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        _ => return None,
    };
    if wide < 0 {
        return None;
    }
    Some(u32::try_from(wide).unwrap_or(u32::MAX))
}

/// A header value for an error message, cut short: it is the sender's text.
fn describe(value: &AMQPValue) -> String {
    let text = match value {
        AMQPValue::LongString(s) => format!("the string {:?}", String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => format!("the string {:?}", s.as_str()),
        other => format!("{other:?}"),
    };
    llmlab_core::text::echo(&text).into_owned()
}

/// A counter as the worker writes it: a signed 32-bit integer, the type
/// most clients read without surprise; a 64-bit one past `i32::MAX`, so
/// that what is written reads back as the same count (a counter stuck
/// below a huge limit would never reach it).
pub fn count_value(count: u32) -> AMQPValue {
    match i32::try_from(count) {
        Ok(small) => AMQPValue::LongInt(small),
        Err(_) => AMQPValue::LongLongInt(count.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: AMQPValue) -> FieldTable {
        let mut table = FieldTable::default();
        table.insert(ATTEMPTS_HEADER.into(), value);
        table
    }

    fn read(value: AMQPValue) -> Result<u32, BadCount> {
        read_count(Some(&headers(value)), ATTEMPTS_HEADER)
    }

    #[test]
    fn an_absent_header_counts_zero() {
        assert_eq!(read_count(None, ATTEMPTS_HEADER), Ok(0));
        assert_eq!(read_count(Some(&FieldTable::default()), ATTEMPTS_HEADER), Ok(0));
        assert_eq!(Counts::read(&BasicProperties::default()), Ok(Counts::default()));
    }

    #[test]
    fn every_integer_type_is_read() {
        assert_eq!(read(AMQPValue::ShortShortInt(3)), Ok(3));
        assert_eq!(read(AMQPValue::ShortShortUInt(3)), Ok(3));
        assert_eq!(read(AMQPValue::ShortInt(3)), Ok(3));
        assert_eq!(read(AMQPValue::ShortUInt(3)), Ok(3));
        assert_eq!(read(AMQPValue::LongInt(3)), Ok(3));
        assert_eq!(read(AMQPValue::LongUInt(3)), Ok(3));
        assert_eq!(read(AMQPValue::LongLongInt(3)), Ok(3));
    }

    #[test]
    fn huge_values_saturate_and_sums_on_them_do_not_overflow() {
        assert_eq!(read(AMQPValue::LongUInt(u32::MAX)), Ok(u32::MAX));
        assert_eq!(read(AMQPValue::LongLongInt(4_294_967_295)), Ok(u32::MAX));
        assert_eq!(read(AMQPValue::LongLongInt(i64::MAX)), Ok(u32::MAX));
        let counted = read(AMQPValue::LongLongInt(i64::MAX)).unwrap();
        assert_eq!(counted.saturating_add(1), u32::MAX);
        assert_eq!(count_value(7), AMQPValue::LongInt(7));
        for count in [0, 7, i32::MAX as u32, i32::MAX as u32 + 1, u32::MAX] {
            assert_eq!(read(count_value(count)), Ok(count), "{count} reads back");
        }
    }

    #[test]
    fn negative_and_non_integer_values_are_refused_naming_the_header() {
        for value in [
            AMQPValue::LongInt(-1),
            AMQPValue::LongLongInt(i64::MIN),
            AMQPValue::ShortShortInt(-128),
            AMQPValue::LongString("3".into()),
            AMQPValue::Double(1.5),
            AMQPValue::Float(2.0),
            AMQPValue::Boolean(true),
            AMQPValue::Void,
        ] {
            let error = read(value.clone()).unwrap_err();
            assert_eq!(error.header, ATTEMPTS_HEADER, "{value:?}");
            assert!(error.message.contains("non-negative integer"), "{}", error.message);
        }
        let error = read(AMQPValue::LongString("x".repeat(1000).into())).unwrap_err();
        assert!(error.message.len() < 200, "{}", error.message);
    }

    #[test]
    fn lenient_reading_never_fails() {
        let mut table = headers(AMQPValue::LongString("many".into()));
        table.insert(REDELIVERIES_HEADER.into(), AMQPValue::LongLongInt(1 << 40));
        let properties = BasicProperties::default().with_headers(table);
        assert_eq!(Counts::read(&properties).unwrap_err().header, ATTEMPTS_HEADER);
        let counts = Counts::read_lenient(&properties);
        assert_eq!(
            counts,
            Counts {
                attempts: 0,
                redeliveries: u32::MAX
            }
        );
    }
}
