//! Bodies and answers of `/v1/embeddings` (OpenAI's shape) and
//! `/v1/similarity`, for every door that speaks them. `input` is read by
//! hand so that every wrong shape gets a message naming the exact element
//! at fault.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use llmlab_core::embedding::{EmbedInput, EmbeddingRequest, EmbeddingResponse, SimilarityRequest, SimilarityResponse};
use llmlab_core::keep_alive::KeepAlive;
use llmlab_core::{Error, Result};

/// An embeddings request as OpenAI clients send it.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsBody {
    #[serde(default)]
    model: String,
    input: Option<Value>,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
    /// Extension: return vectors as the model pools them (default: unit length).
    normalize: Option<bool>,
    /// Extension: cut inputs longer than the model's window instead of
    /// embedding them in chunks.
    #[serde(default)]
    truncate: bool,
    keep_alive: Option<Value>,
}

/// A similarity request: one query ranked against documents.
#[derive(Debug, Deserialize)]
pub struct SimilarityBody {
    #[serde(default)]
    model: String,
    query: String,
    documents: Vec<String>,
    top_k: Option<usize>,
    keep_alive: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Encoding {
    Float,
    Base64,
}

fn encoding(format: Option<&str>) -> Result<Encoding> {
    match format {
        None | Some("float") => Ok(Encoding::Float),
        Some("base64") => Ok(Encoding::Base64),
        Some(other) => Err(Error::invalid_param(
            "encoding_format",
            format!("must be 'float' or 'base64', got '{}'", llmlab_core::text::echo(other)),
        )),
    }
}

/// A string, an array of strings, an array of token ids, or an array of
/// token-id arrays.
fn inputs(value: Option<Value>) -> Result<Vec<EmbedInput>> {
    let token = |v: &Value, at: String| -> Result<u32> {
        v.as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| Error::invalid_param(at, "must be a token id (a non-negative integer)"))
    };
    match value {
        None => Err(Error::invalid_param("input", "'input' is required")),
        Some(Value::String(text)) => Ok(vec![EmbedInput::Text(text)]),
        Some(Value::Array(items)) if items.first().is_some_and(Value::is_number) => Ok(vec![EmbedInput::Tokens(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| token(v, format!("input[{i}]")))
                .collect::<Result<_>>()?,
        )]),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(text) => Ok(EmbedInput::Text(text)),
                Value::Array(ids) => Ok(EmbedInput::Tokens(
                    ids.iter()
                        .enumerate()
                        .map(|(j, v)| token(v, format!("input[{i}][{j}]")))
                        .collect::<Result<_>>()?,
                )),
                _ => Err(Error::invalid_param(
                    format!("input[{i}]"),
                    "must be a string or an array of token ids",
                )),
            })
            .collect(),
        Some(_) => Err(Error::invalid_param(
            "input",
            "must be a string, an array of strings, or token ids",
        )),
    }
}

fn keep_alive(value: Option<&Value>) -> Result<Option<KeepAlive>> {
    value.map(KeepAlive::from_json).transpose()
}

/// OpenAI's base64 form: the little-endian f32 bytes of the vector.
fn base64_vector(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl EmbeddingsBody {
    /// The core request and the vector encoding the client asked for.
    pub fn into_request(self) -> Result<(EmbeddingRequest, Encoding)> {
        let encoding = encoding(self.encoding_format.as_deref())?;
        let request = EmbeddingRequest {
            model: self.model,
            inputs: inputs(self.input)?,
            dimensions: self.dimensions,
            normalize: self.normalize,
            truncate: self.truncate,
            keep_alive: keep_alive(self.keep_alive.as_ref())?,
        };
        Ok((request, encoding))
    }
}

/// OpenAI's embeddings answer.
pub fn embeddings_json(answer: &EmbeddingResponse, encoding: Encoding) -> Value {
    let data: Vec<Value> = answer
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = match encoding {
                Encoding::Float => json!(vector),
                Encoding::Base64 => json!(base64_vector(vector)),
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    list(data, &answer.model, answer.prompt_tokens)
}

impl SimilarityBody {
    pub fn into_request(self) -> Result<SimilarityRequest> {
        Ok(SimilarityRequest {
            model: self.model,
            query: self.query,
            documents: self.documents,
            top_k: self.top_k,
            keep_alive: keep_alive(self.keep_alive.as_ref())?,
        })
    }
}

/// The ranked documents, best first; `documents` are the request's.
pub fn similarity_json(answer: &SimilarityResponse, documents: &[String]) -> Value {
    let data: Vec<Value> = answer
        .results
        .iter()
        .map(|r| json!({ "index": r.index, "document": documents[r.index], "score": r.score }))
        .collect();
    list(data, &answer.model, answer.prompt_tokens)
}

/// OpenAI's list answer with token usage (embeddings read, never generate).
fn list(data: Vec<Value>, model: &str, prompt_tokens: u32) -> Value {
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens },
    })
}
