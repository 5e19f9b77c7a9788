//! The `llmlab` binary's library: CLI, HTTP door, model fetching. Exposed as
//! a library so integration tests can drive the router in process.

pub mod amqp;
pub mod api_key;
pub mod bench;
pub mod cli;
pub mod factory;
pub mod grpc;
pub mod http;
pub mod image_fetch;
pub mod logging;
pub mod observe;
pub mod ollama;
pub mod openai;
pub mod pull;
pub mod signals;
