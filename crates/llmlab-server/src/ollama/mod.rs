//! Ollama's wire format (`/api/*`), served by the HTTP door beside
//! OpenAI's on the same port and the same core service: request bodies
//! into core requests, core answers and events into Ollama's JSON and
//! NDJSON lines, core errors into Ollama's statuses and `{"error": ...}`.

pub mod embed;
pub mod errors;
pub mod models;
pub mod pull;
pub mod request;
pub mod responses;

/// The version `/api/version` reports. Ollama's clients compare it to
/// decide which API features exist; llmlab speaks the API of this Ollama
/// release (thinking, tool calls, JSON-schema `format`).
pub const OLLAMA_API_VERSION: &str = "0.12.0";
