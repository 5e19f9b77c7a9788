//! Ranking documents by cosine similarity to a query.

use serde::Serialize;

use super::cosine_similarity;

#[derive(Debug, Clone, Default)]
pub struct SimilarityRequest {
    pub model: String,
    pub query: String,
    pub documents: Vec<String>,
    /// How many of the best documents to answer (default: all).
    pub top_k: Option<usize>,
    pub keep_alive: Option<crate::keep_alive::KeepAlive>,
}

impl SimilarityRequest {
    pub fn validate(&self) -> crate::Result<()> {
        if self.query.is_empty() {
            return Err(crate::Error::invalid_param("query", "must not be empty"));
        }
        if self.documents.is_empty() {
            return Err(crate::Error::invalid_param(
                "documents",
                "must hold at least one document",
            ));
        }
        if self.documents.len() >= super::MAX_INPUTS {
            return Err(crate::Error::invalid_param(
                "documents",
                format!(
                    "holds {} documents; at most {} are allowed",
                    self.documents.len(),
                    super::MAX_INPUTS - 1
                ),
            ));
        }
        if let Some(i) = self.documents.iter().position(String::is_empty) {
            return Err(crate::Error::invalid_param(
                format!("documents[{i}]"),
                "must not be empty",
            ));
        }
        if self.top_k == Some(0) {
            return Err(crate::Error::invalid_param("top_k", "must be at least 1"));
        }
        Ok(())
    }
}

/// One document of the answer, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    /// Position of the document in the request.
    pub index: usize,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimilarityResponse {
    pub model: String,
    pub results: Vec<Ranked>,
    pub prompt_tokens: u32,
}

/// Documents ranked by cosine similarity to the query, best first; ties keep
/// the request's order. At most `top_k` of them.
pub fn rank_by_similarity(query: &[f32], documents: &[Vec<f32>], top_k: Option<usize>) -> Vec<Ranked> {
    let mut ranked: Vec<Ranked> = documents
        .iter()
        .enumerate()
        .map(|(index, doc)| Ranked {
            index,
            score: cosine_similarity(query, doc),
        })
        .collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    ranked.truncate(top_k.unwrap_or(usize::MAX));
    ranked
}
