//! OpenAI's wire format, shared by every door that speaks it (HTTP, the
//! WebSocket, job-queue messages): request bodies into core requests, core
//! answers and events into response JSON and stream chunks, core errors into
//! statuses and the error envelope.

pub mod chunk_stream;
pub mod embeddings;
pub mod errors;
pub mod generation;
pub mod images;
pub mod request;
pub mod responses;

pub use request::{parse_json, parse_value, Delivery, OpenAiRequest, ResponseMeta};
