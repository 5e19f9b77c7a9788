//! Bodies and answers of `/api/embed` and the older `/api/embeddings`.

use serde::Deserialize;
use serde_json::{json, Value};

use llmlab_core::embedding::{EmbedInput, EmbeddingRequest, EmbeddingResponse};
use llmlab_core::keep_alive::KeepAlive;
use llmlab_core::{Error, Result};

/// `input`: one text or a list of texts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EmbedField {
    One(String),
    Many(Vec<String>),
}

/// The body of `/api/embed`. `options` are accepted and ignored: none of
/// Ollama's sampling options means anything to an embedding.
#[derive(Debug, Deserialize)]
pub struct EmbedBody {
    #[serde(default)]
    pub model: String,
    pub input: Option<EmbedField>,
    /// Ollama's default is to cut inputs longer than the model's window;
    /// `false` leaves them to core, which embeds them in chunks.
    pub truncate: Option<bool>,
    pub dimensions: Option<usize>,
    pub keep_alive: Option<Value>,
}

/// The body of `/api/embeddings` (Ollama's first embedding endpoint).
#[derive(Debug, Deserialize)]
pub struct EmbeddingsBody {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub prompt: String,
    pub keep_alive: Option<Value>,
}

fn keep_alive(value: Option<&Value>) -> Result<Option<KeepAlive>> {
    value.map(KeepAlive::from_json).transpose()
}

impl EmbedBody {
    pub fn into_request(self) -> Result<EmbeddingRequest> {
        let inputs = match self.input {
            None => return Err(Error::invalid_param("input", "'input' is required")),
            Some(EmbedField::One(text)) => vec![EmbedInput::Text(text)],
            Some(EmbedField::Many(texts)) => texts.into_iter().map(EmbedInput::Text).collect(),
        };
        Ok(EmbeddingRequest {
            model: self.model,
            inputs,
            dimensions: self.dimensions,
            // Ollama's /api/embed answers unit vectors, as core does by default.
            normalize: None,
            truncate: self.truncate.unwrap_or(true),
            keep_alive: keep_alive(self.keep_alive.as_ref())?,
        })
    }
}

impl EmbeddingsBody {
    pub fn into_request(self) -> Result<EmbeddingRequest> {
        Ok(EmbeddingRequest {
            model: self.model,
            inputs: vec![EmbedInput::Text(self.prompt)],
            dimensions: None,
            // The old endpoint answers the vector as the model pools it.
            normalize: Some(false),
            truncate: true,
            keep_alive: keep_alive(self.keep_alive.as_ref())?,
        })
    }
}

/// `/api/embed`'s answer; `model` is the name the client gave. There is
/// no `load_duration`: the service loads and embeds in one call, so the
/// load is not timed apart (the field is optional to Ollama's clients).
pub fn embed_json(model: &str, answer: &EmbeddingResponse, total_ns: u64) -> Value {
    json!({
        "model": model,
        "embeddings": answer.embeddings,
        "total_duration": total_ns,
        "prompt_eval_count": answer.prompt_tokens,
    })
}

/// `/api/embeddings`' answer: one vector.
pub fn embeddings_json(answer: &EmbeddingResponse) -> Value {
    json!({ "embedding": answer.embeddings.first().cloned().unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::parse_json;

    #[test]
    fn input_is_one_text_or_many_and_truncates_by_default() {
        let one = parse_json::<EmbedBody>(br#"{"model":"e","input":"hi"}"#)
            .unwrap()
            .into_request()
            .unwrap();
        assert_eq!(one.inputs, vec![EmbedInput::Text("hi".into())]);
        assert!(one.truncate);
        let many = parse_json::<EmbedBody>(br#"{"model":"e","input":["a","b"],"truncate":false,"keep_alive":0}"#)
            .unwrap()
            .into_request()
            .unwrap();
        assert_eq!(many.inputs.len(), 2);
        assert!(!many.truncate);
        assert!(many.keep_alive.is_some());
        let missing = parse_json::<EmbedBody>(br#"{"model":"e"}"#)
            .unwrap()
            .into_request()
            .unwrap_err();
        assert_eq!(missing.param.as_deref(), Some("input"));
        assert!(parse_json::<EmbedBody>(br#"{"model":"e","input":3}"#).is_err());
    }

    #[test]
    fn the_old_endpoint_takes_a_prompt_and_answers_one_vector() {
        let r = parse_json::<EmbeddingsBody>(br#"{"model":"e","prompt":"hi"}"#)
            .unwrap()
            .into_request()
            .unwrap();
        assert_eq!(r.normalize, Some(false));
        let answer = EmbeddingResponse {
            model: "e".into(),
            embeddings: vec![vec![0.5, -0.5]],
            prompt_tokens: 2,
        };
        assert_eq!(embeddings_json(&answer), json!({"embedding": [0.5, -0.5]}));
        let whole = embed_json("e:latest", &answer, 10);
        assert_eq!(whole["embeddings"], json!([[0.5, -0.5]]));
        assert_eq!(whole["prompt_eval_count"], 2);
    }
}
