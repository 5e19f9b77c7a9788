//! Embeddings: the request and response types every door shares, the
//! vector arithmetic (normalising, Matryoshka truncation, cosine, combining
//! the chunks of a long input) and similarity ranking. Backends produce raw
//! pooled vectors; everything after pooling happens here, once.

mod chunks;
mod similarity;
mod vectors;

use serde::{Deserialize, Serialize};

pub use chunks::{combine_chunks, split_into_windows};
pub use similarity::{rank_by_similarity, Ranked, SimilarityRequest, SimilarityResponse};
pub use vectors::{cosine_similarity, l2_normalize, truncate_dimensions};

/// Most inputs one request may embed (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// How a model turns its per-token states into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The mean over every token.
    Mean,
    /// The first token's state (BERT's [CLS]).
    Cls,
    /// The last token's state (decoder models).
    Last,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Cls => "cls",
            Self::Last => "last",
        }
    }
}

/// One input: text, or token ids of the model's vocabulary (without the
/// special tokens the model's tokenizer adds around a text).
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, Default)]
pub struct EmbeddingRequest {
    pub model: String,
    pub inputs: Vec<EmbedInput>,
    /// Keep only the first `dimensions` components (Matryoshka models).
    pub dimensions: Option<usize>,
    /// Scale each vector to unit length (default on).
    pub normalize: Option<bool>,
    /// Cut inputs longer than the model's window instead of chunking them.
    pub truncate: bool,
    pub keep_alive: Option<crate::keep_alive::KeepAlive>,
}

impl EmbeddingRequest {
    pub fn validate(&self) -> crate::Result<()> {
        if self.inputs.is_empty() {
            return Err(crate::Error::invalid_param("input", "must hold at least one input"));
        }
        if self.inputs.len() > MAX_INPUTS {
            return Err(crate::Error::invalid_param(
                "input",
                format!("holds {} inputs; at most {MAX_INPUTS} are allowed", self.inputs.len()),
            ));
        }
        for (i, input) in self.inputs.iter().enumerate() {
            let empty = match input {
                EmbedInput::Text(text) => text.is_empty(),
                EmbedInput::Tokens(tokens) => tokens.is_empty(),
            };
            if empty {
                return Err(crate::Error::invalid_param(format!("input[{i}]"), "must not be empty"));
            }
        }
        if self.dimensions == Some(0) {
            return Err(crate::Error::invalid_param("dimensions", "must be at least 1"));
        }
        Ok(())
    }
}

/// A backend's answer for one input: the pooled vector before any
/// normalising, and the tokens the model read for it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEmbedding {
    pub vector: Vec<f32>,
    pub tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingResponse {
    pub model: String,
    /// One vector per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
    pub prompt_tokens: u32,
}

#[cfg(test)]
mod tests;
