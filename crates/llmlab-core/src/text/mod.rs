//! Incremental text helpers used while detokenizing a stream of tokens.

mod stop_strings;
mod token_text;
mod utf8_stream;

pub use stop_strings::{StopMatcher, StopScan};
pub use token_text::TokenTextAssembler;
pub use utf8_stream::Utf8Stream;
