//! Embedding and similarity requests: lease the model, run the backend on a
//! blocking thread, then normalise, shorten (Matryoshka) and rank here, the
//! same way for every backend and door.

use super::{Purpose, Service};
use crate::embedding::{
    l2_normalize, rank_by_similarity, truncate_dimensions, EmbedInput, EmbeddingRequest, EmbeddingResponse,
    SimilarityRequest, SimilarityResponse,
};
use crate::pipeline::LoadedPipeline;
use crate::{Error, Result};

impl Service {
    pub async fn embed(&self, mut request: EmbeddingRequest) -> Result<EmbeddingResponse> {
        request.validate()?;
        let spec = self.spec_for(&request.model, Purpose::Embedding)?;
        request.model.clone_from(&spec.id);
        let (pipeline, _lease, watch) = self
            .leased_pipeline(spec, request.keep_alive.unwrap_or(spec.keep_alive))
            .await?;
        let LoadedPipeline::Embedding(pipeline) = pipeline else {
            return Err(Error::internal(format!(
                "model '{}' did not load as an embedding model",
                request.model
            )));
        };
        if let Some(dimensions) = request.dimensions {
            if !spec.embedding.matryoshka {
                return Err(Error::invalid_param(
                    "dimensions",
                    format!(
                        "model '{}' is not configured as a Matryoshka model (registry `matryoshka: true`), so its vectors cannot be shortened",
                        spec.id
                    ),
                ));
            }
            if dimensions > pipeline.dimensions() {
                return Err(Error::invalid_param(
                    "dimensions",
                    format!("must be at most {}, the model's width", pipeline.dimensions()),
                ));
            }
        }
        let inputs = std::mem::take(&mut request.inputs);
        let expected = inputs.len();
        let truncate = request.truncate;
        let started = std::time::Instant::now();
        let outcome = tokio::task::spawn_blocking(move || pipeline.embed(&inputs, truncate))
            .await
            .map_err(|e| Error::internal(format!("the embedding task failed: {e}")))
            .and_then(|result| result);
        watch.settle(&outcome);
        let raw = outcome?;
        if raw.len() != expected {
            return Err(Error::internal(format!(
                "model '{}' answered {} vectors for {expected} inputs",
                request.model,
                raw.len()
            )));
        }
        let prompt_tokens = raw.iter().map(|r| r.tokens).sum::<usize>();
        tracing::debug!(model = %request.model, inputs = raw.len(), prompt_tokens, ms = started.elapsed().as_millis() as u64, "embedded");
        let normalize = request.normalize.unwrap_or(true);
        let embeddings = raw
            .into_iter()
            .map(|r| {
                let mut vector = r.vector;
                match request.dimensions {
                    Some(dimensions) => truncate_dimensions(&mut vector, dimensions),
                    None if normalize => l2_normalize(&mut vector),
                    None => {}
                }
                vector
            })
            .collect();
        Ok(EmbeddingResponse {
            model: request.model,
            embeddings,
            prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
        })
    }

    /// Rank documents by cosine similarity to a query.
    pub async fn similarity(&self, request: SimilarityRequest) -> Result<SimilarityResponse> {
        request.validate()?;
        let inputs = std::iter::once(&request.query)
            .chain(&request.documents)
            .map(|text| EmbedInput::Text(text.clone()))
            .collect();
        let embedded = self
            .embed(EmbeddingRequest {
                model: request.model,
                inputs,
                keep_alive: request.keep_alive,
                ..Default::default()
            })
            .await?;
        let (query, documents) = embedded
            .embeddings
            .split_first()
            .ok_or_else(|| Error::internal("the model answered no vectors"))?;
        Ok(SimilarityResponse {
            results: rank_by_similarity(query, documents, request.top_k),
            model: embedded.model,
            prompt_tokens: embedded.prompt_tokens,
        })
    }
}
