//! Incremental text helpers used while detokenizing a stream of tokens,
//! and the cut applied to client text quoted in errors.

mod excerpt;
mod stop_strings;
mod token_text;
mod utf8_stream;

pub use excerpt::{clip, echo, panic_text, ECHO_MAX_CHARS};
pub use stop_strings::{StopMatcher, StopScan};
pub use token_text::TokenTextAssembler;
pub use utf8_stream::Utf8Stream;
