//! `/v1/embeddings` and `/v1/similarity`: decode, call the core service,
//! encode (the shapes live in [`crate::openai::embeddings`]).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::openai::embeddings::{embeddings_json, similarity_json, EmbeddingsBody, SimilarityBody};
use crate::openai::parse_json;

use super::errors::ApiError;
use super::handlers::body_bytes;
use super::model_label::ModelLabel;
use super::AppState;

pub async fn embeddings(State(state): State<AppState>, body: std::result::Result<Bytes, BytesRejection>) -> Response {
    let mut label = ModelLabel("unknown".to_owned());
    let outcome = async {
        let body = body_bytes(body, state.config.max_body_bytes)?;
        let (request, encoding) = parse_json::<EmbeddingsBody>(&body)?.into_request()?;
        label = ModelLabel::for_request(&state, &request.model);
        let answer = state.service.embed(request).await?;
        label = ModelLabel::for_request(&state, &answer.model);
        Ok::<_, ApiError>(Json(embeddings_json(&answer, encoding)))
    }
    .await;
    respond(outcome, &label)
}

pub async fn similarity(State(state): State<AppState>, body: std::result::Result<Bytes, BytesRejection>) -> Response {
    let mut label = ModelLabel("unknown".to_owned());
    let outcome = async {
        let body = body_bytes(body, state.config.max_body_bytes)?;
        let request = parse_json::<SimilarityBody>(&body)?.into_request()?;
        label = ModelLabel::for_request(&state, &request.model);
        let documents = request.documents.clone();
        let answer = state.service.similarity(request).await?;
        label = ModelLabel::for_request(&state, &answer.model);
        Ok::<_, ApiError>(Json(similarity_json(&answer, &documents)))
    }
    .await;
    respond(outcome, &label)
}

fn respond(outcome: std::result::Result<Json<Value>, ApiError>, label: &ModelLabel) -> Response {
    match outcome {
        Ok(json) => label.attach(json.into_response()),
        Err(e) => e.for_model(label).into_response(),
    }
}
