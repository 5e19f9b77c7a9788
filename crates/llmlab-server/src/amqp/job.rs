//! A job: what a queue message asks for, and running it on the core
//! service. The body is the body of the HTTP endpoint the job names, so
//! validation, limits and errors are those of every other door.
//!
//! A message body: `{"type": "chat.completions" | "completions" |
//! "embeddings" | "similarity" | "images.generations" | "images.edits",
//! "body": {…}}` (an edit's `image` and `mask` are base64 in the body).
//!
//! Replies, in order: for a streamed chat or completion (`"stream": true`
//! in the body) `{"type": "chunk", "data": <the SSE chunk>}` … then
//! `{"type": "done"}`; for images `{"type": "progress", "step", "steps"}`
//! after each step (and `{"type": "partial", "data"}` previews when the
//! body asks for `partial_images`); then one `{"type": "result", "data": <the HTTP
//! response body>}`. A failure is one `{"type": "error", "status", "error"}`.

use std::sync::Arc;

use axum::http::StatusCode;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use llmlab_core::service::Service;
use llmlab_core::{Error, ErrorKind, ImageEvent, Result};

use crate::openai::chunk_stream::{chunk_stream, StreamItem};
use crate::openai::embeddings::{embeddings_json, similarity_json, EmbeddingsBody, SimilarityBody};
use crate::openai::errors::{envelope, status_for};
use crate::openai::generation::Generation;
use crate::openai::images::{images_json, partial_event, unix_now, ImagesBody};
use crate::openai::responses::{full_response, ChunkBuilder, Endpoint};
use crate::openai::{parse_json, parse_value, OpenAiRequest, ResponseMeta};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Chat,
    Completion,
    Embeddings,
    Similarity,
    ImageGenerations,
    ImageEdits,
}

impl JobKind {
    /// The message's `type`, which is also the job's route label in the
    /// request metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat.completions",
            Self::Completion => "completions",
            Self::Embeddings => "embeddings",
            Self::Similarity => "similarity",
            Self::ImageGenerations => "images.generations",
            Self::ImageEdits => "images.edits",
        }
    }
}

#[derive(Debug)]
pub struct Job {
    pub kind: JobKind,
    pub body: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    body: Value,
}

impl Job {
    /// Read a message body; the error names the field at fault.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let envelope: Envelope = parse_json(bytes)?;
        let kind = match envelope.kind.as_str() {
            "chat.completions" => JobKind::Chat,
            "completions" => JobKind::Completion,
            "embeddings" => JobKind::Embeddings,
            "similarity" => JobKind::Similarity,
            "images.generations" => JobKind::ImageGenerations,
            "images.edits" => JobKind::ImageEdits,
            other => {
                return Err(Error::invalid_param(
                    "type",
                    format!(
                        "'type' must be chat.completions, completions, embeddings, similarity, \
                         images.generations or images.edits, got '{}'",
                        llmlab_core::text::echo(other)
                    ),
                ))
            }
        };
        if !envelope.body.is_object() {
            return Err(Error::invalid_param("body", "'body' must be a JSON object"));
        }
        Ok(Self {
            kind,
            body: envelope.body,
        })
    }
}

/// Why a job failed, as its requester will read it.
#[derive(Debug, Clone)]
pub struct JobError {
    pub kind: ErrorKind,
    pub status: u16,
    /// OpenAI's error envelope.
    pub envelope: Value,
}

impl JobError {
    pub fn from_core(error: &Error) -> Self {
        let status = status_for(error.kind);
        Self {
            kind: error.kind,
            status: status.as_u16(),
            envelope: envelope(status, error),
        }
    }

    /// A job body over the worker's limit: 413, as HTTP answers a body
    /// over `--max-body-bytes`, in the same envelope.
    pub fn too_large(limit: usize) -> Self {
        let error = Error::invalid(format!("job body is larger than {limit} bytes"));
        Self {
            kind: error.kind,
            status: StatusCode::PAYLOAD_TOO_LARGE.as_u16(),
            envelope: envelope(StatusCode::PAYLOAD_TOO_LARGE, &error),
        }
    }

    /// Failures another try may cure (the core's policy); anything else is
    /// the request's fault.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    pub fn message(&self) -> &str {
        self.envelope["error"]["message"].as_str().unwrap_or("unknown error")
    }

    /// The reply that tells the requester.
    pub fn reply(&self) -> Value {
        json!({"type": "error", "status": self.status, "error": self.envelope["error"]})
    }
}

/// One step of a running job.
#[derive(Debug)]
pub enum Step {
    /// The model the job runs on, once known (for the metrics; nothing is
    /// published).
    Model(String),
    /// A reply to publish.
    Reply(Value),
    /// The job failed; nothing follows.
    Failed(JobError),
}

fn failed(error: &Error) -> Step {
    Step::Failed(JobError::from_core(error))
}

/// Run a job: its replies as they are ready, or its failure.
pub fn run(job: Job, service: Arc<Service>, cancel: CancellationToken) -> impl Stream<Item = Step> + Send {
    async_stream::stream! {
        match job.kind {
            JobKind::Chat | JobKind::Completion => {
                let endpoint = if job.kind == JobKind::Chat { Endpoint::Chat } else { Endpoint::Completion };
                let mut steps = Box::pin(generate(endpoint, job.body, service, cancel));
                while let Some(step) = steps.next().await {
                    yield step;
                }
            }
            JobKind::ImageGenerations | JobKind::ImageEdits => {
                let mut steps = Box::pin(images(job.kind, job.body, service, cancel));
                while let Some(step) = steps.next().await {
                    yield step;
                }
            }
            JobKind::Embeddings | JobKind::Similarity => {
                let mut model = String::new();
                let answer = if job.kind == JobKind::Embeddings {
                    embed(job.body, &service, &mut model).await
                } else {
                    similarity(job.body, &service, &mut model).await
                };
                if !model.is_empty() {
                    yield Step::Model(model);
                }
                yield match answer {
                    Ok(data) => Step::Reply(json!({"type": "result", "data": data})),
                    Err(e) => failed(&e),
                };
            }
        }
    }
}

fn generate(
    endpoint: Endpoint,
    body: Value,
    service: Arc<Service>,
    cancel: CancellationToken,
) -> impl Stream<Item = Step> + Send {
    async_stream::stream! {
        let generation = match parse_value::<OpenAiRequest>(body).and_then(|b| Generation::new(b, endpoint)) {
            Ok(generation) => generation,
            Err(e) => {
                yield failed(&e);
                return;
            }
        };
        let delivery = generation.delivery;
        yield Step::Model(generation.requested_model.clone());
        let events = match generation.start(&service, cancel).await {
            Ok(events) => events,
            Err(e) => {
                yield failed(&e);
                return;
            }
        };
        // The model that runs it (the default model's when the body named none).
        yield Step::Model(events.model().to_owned());
        let meta = ResponseMeta::new(endpoint.id_prefix(), events.model());
        if !delivery.stream {
            yield match events.collect_response().await {
                Ok(response) => Step::Reply(json!({"type": "result", "data": full_response(endpoint, &meta, &response)})),
                Err(e) => failed(&e),
            };
            return;
        }
        let chunks = ChunkBuilder { endpoint, meta, streamed_bytes: 0 };
        let mut items = Box::pin(chunk_stream(events, chunks, delivery.include_usage));
        while let Some(item) = items.next().await {
            match item {
                StreamItem::Chunk(data) => yield Step::Reply(json!({"type": "chunk", "data": data})),
                StreamItem::Error { kind, status, envelope } => {
                    yield Step::Failed(JobError { kind, status, envelope });
                    return;
                }
            }
        }
        yield Step::Reply(json!({"type": "done"}));
    }
}

/// An image job: progress replies after each step, then the result.
fn images(
    kind: JobKind,
    body: Value,
    service: Arc<Service>,
    cancel: CancellationToken,
) -> impl Stream<Item = Step> + Send {
    async_stream::stream! {
        let decoded = parse_value::<ImagesBody>(body).and_then(|body| {
            if kind == JobKind::ImageEdits { body.into_edit_request() } else { body.into_request() }
        });
        let request = match decoded {
            Ok((request, _)) => request,
            Err(e) => {
                yield failed(&e);
                return;
            }
        };
        yield Step::Model(request.model.clone());
        let mut events = match service.generate_image(request, cancel).await {
            Ok(events) => events,
            Err(e) => {
                yield failed(&e);
                return;
            }
        };
        while let Some(event) = events.next().await {
            match event {
                ImageEvent::Progress { step, steps } => {
                    yield Step::Reply(json!({"type": "progress", "step": step, "steps": steps}));
                }
                ImageEvent::Partial { index, partial_index, image } => {
                    yield Step::Reply(json!({"type": "partial", "data": partial_event(index, partial_index, &image, unix_now())}));
                }
                ImageEvent::Done(result) => {
                    yield Step::Model(result.model.clone());
                    yield Step::Reply(json!({"type": "result", "data": images_json(&result, unix_now())}));
                    return;
                }
                ImageEvent::Error(e) => {
                    yield failed(&e);
                    return;
                }
            }
        }
        yield failed(&Error::internal("the generation ended without an answer"));
    }
}

/// `model` is set to the model named, then to the one that answered (the
/// default embedding model when none was named).
async fn embed(body: Value, service: &Service, model: &mut String) -> Result<Value> {
    let (request, encoding) = parse_value::<EmbeddingsBody>(body)?.into_request()?;
    model.clone_from(&request.model);
    let answer = service.embed(request).await?;
    model.clone_from(&answer.model);
    Ok(embeddings_json(&answer, encoding))
}

async fn similarity(body: Value, service: &Service, model: &mut String) -> Result<Value> {
    let request = parse_value::<SimilarityBody>(body)?.into_request()?;
    model.clone_from(&request.model);
    let documents = request.documents.clone();
    let answer = service.similarity(request).await?;
    model.clone_from(&answer.model);
    Ok(similarity_json(&answer, &documents))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_or_refused_naming_the_field() {
        let job = Job::parse(br#"{"type": "embeddings", "body": {"input": "x"}}"#).unwrap();
        assert_eq!(job.kind, JobKind::Embeddings);
        // A kind's name (its route label) is the type that reads as it.
        for kind in [
            JobKind::Chat,
            JobKind::Completion,
            JobKind::Embeddings,
            JobKind::Similarity,
        ] {
            let message = format!(r#"{{"type": "{}", "body": {{}}}}"#, kind.as_str());
            assert_eq!(Job::parse(message.as_bytes()).unwrap().kind, kind);
        }
        let param = |bytes: &[u8]| Job::parse(bytes).unwrap_err().param;
        assert_eq!(param(br#"{"type": "dance", "body": {}}"#).as_deref(), Some("type"));
        assert_eq!(param(br#"{"type": "completions", "body": 3}"#).as_deref(), Some("body"));
        assert!(Job::parse(b"not json").is_err());
        assert!(Job::parse(br#"{"type": "completions"}"#)
            .unwrap_err()
            .message
            .contains("body"));
    }

    #[test]
    fn an_oversized_job_is_a_413_in_the_openai_envelope_and_never_retried() {
        let error = JobError::too_large(1000);
        assert_eq!(error.status, 413);
        assert!(!error.is_retryable());
        let reply = error.reply();
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["status"], 413);
        assert_eq!(reply["error"]["type"], "invalid_request_error");
        assert_eq!(reply["error"]["code"], "request_too_large");
        assert!(error.message().contains("1000 bytes"));
    }

    #[test]
    fn only_server_side_failures_are_retried() {
        let retryable = |e: Error| JobError::from_core(&e).is_retryable();
        assert!(retryable(Error::unavailable("loading failed")));
        assert!(retryable(Error::internal("decode failed")));
        assert!(!retryable(Error::invalid_param("messages", "empty")));
        assert!(!retryable(Error::new(
            llmlab_core::ErrorKind::NotFound,
            "no such model"
        )));
    }
}
