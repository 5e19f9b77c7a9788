//! llmlab-core: the backend- and transport-agnostic heart of llmlab.
//!
//! Transports call pipelines through the types defined here; backends
//! implement the pipeline traits. This crate stays free of heavy
//! dependencies so that it compiles in seconds.

pub mod config;
pub mod embedding;
mod error;
pub mod guards;
pub mod keep_alive;
pub mod media;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod service;
pub mod stream;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod text;
mod types;

pub use error::{Error, ErrorKind, Result, MAX_MESSAGE_CHARS, MAX_PARAM_CHARS};
pub use types::*;
